//! Worker output in the driver's terminal (Ray's `log_to_driver`): each line its
//! job's workers print, prefixed `(label pid=N, ip=IP)`, with Ray's deduplication:
//! a line that processes repeat within the aggregation window (`RAY_DEDUP_LOGS_AGG_WINDOW_S`,
//! 5 s) is printed once, then once more at the window's end as
//! `line [repeated Nx across cluster]`. Lines compare with their words containing
//! digits left out, as Ray compares them. `RAY_DEDUP_LOGS=0` turns deduplication off.
//!
//! Invariant: every line received is printed or counted into a repeat that is
//! printed by [`OutputPrinter::flush`] at the latest.

use crate::protocol::WorkerOutput;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines kept for deduplication at most; past this the oldest are let go.
const MAX_TRACKED: usize = 10_000;

/// Where a line came from: what it prints before it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Source {
    label: String,
    pid: u32,
    ip: Option<IpAddr>,
    stderr: bool,
}

impl Source {
    fn prefix(&self) -> String {
        let label = if self.label.is_empty() {
            String::new()
        } else {
            format!("{} ", self.label)
        };
        match self.ip {
            Some(ip) => format!("({label}pid={}, ip={ip})", self.pid),
            None => format!("({label}pid={})", self.pid),
        }
    }
}

/// A line's deduplication state (Ray's `DedupState`).
struct Seen {
    /// When it was first seen (or last summarised).
    since: Instant,
    /// Repeats from other processes not printed yet.
    count: u64,
    /// Its latest instance and where that came from.
    line: String,
    source: Source,
    /// (ip, pid) of every process that printed it.
    sources: HashSet<(Option<IpAddr>, u32)>,
}

/// What to print: a source's prefix and the line.
type Printed = (Source, String);

/// Ray's `LogDeduplicator`, on a clock the caller passes in.
struct Dedup {
    window: Duration,
    enabled: bool,
    recent: HashMap<String, Seen>,
}

/// A line with its words that contain digits left out (Ray's `_canonicalise_log_line`).
fn canonical(line: &str) -> String {
    line.split_whitespace()
        .filter(|w| !w.bytes().any(|b| b.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Dedup {
    fn new(window: Duration, enabled: bool) -> Self {
        Dedup {
            window,
            enabled,
            recent: HashMap::new(),
        }
    }

    /// The lines of `run` to print now, then repeats whose window ended.
    fn take(&mut self, run: WorkerOutput, now: Instant) -> Vec<Printed> {
        let source = Source {
            label: run.label,
            pid: run.pid,
            ip: run.ip,
            stderr: run.stderr,
        };
        let mut out = Vec::new();
        for line in run.lines {
            let key = canonical(&line);
            if !self.enabled || key.is_empty() {
                out.push((source.clone(), line));
                continue;
            }
            let from = (source.ip, source.pid);
            match self.recent.get_mut(&key) {
                Some(seen) => {
                    seen.sources.insert(from);
                    if seen.sources.len() > 1 {
                        seen.count += 1;
                        seen.line = line;
                        seen.source = source.clone();
                    } else {
                        // The same process repeating itself: printed as it is.
                        out.push((source.clone(), line));
                    }
                }
                None => {
                    if self.recent.len() >= MAX_TRACKED {
                        out.extend(self.flush());
                    }
                    self.recent.insert(
                        key,
                        Seen {
                            since: now,
                            count: 0,
                            line: line.clone(),
                            source: source.clone(),
                            sources: HashSet::from([from]),
                        },
                    );
                    out.push((source.clone(), line));
                }
            }
        }
        out.extend(self.expire(now));
        out
    }

    /// Repeats whose window ended by `now`: summarised, and watched for another window.
    fn expire(&mut self, now: Instant) -> Vec<Printed> {
        let mut out = Vec::new();
        let window = self.window;
        self.recent.retain(|_, seen| {
            if now.duration_since(seen.since) < window {
                return true;
            }
            match seen.count {
                0 => false,
                1 => {
                    out.push((seen.source.clone(), seen.line.clone()));
                    false
                }
                n => {
                    out.push((
                        seen.source.clone(),
                        format!("{} [repeated {n}x across cluster]", seen.line),
                    ));
                    seen.since = now;
                    seen.count = 0;
                    true
                }
            }
        });
        out
    }

    /// Every repeat not printed yet; forgets everything.
    fn flush(&mut self) -> Vec<Printed> {
        let mut out = Vec::new();
        for (_, seen) in self.recent.drain() {
            match seen.count {
                0 => {}
                1 => out.push((seen.source, seen.line)),
                n => out.push((
                    seen.source,
                    format!("{} [repeated {n}x across cluster]", seen.line),
                )),
            }
        }
        out
    }
}

/// Prints the driver's workers' output to its stdout and stderr.
pub(crate) struct OutputPrinter {
    dedup: Mutex<Dedup>,
    last_line: Mutex<Option<Instant>>,
}

impl OutputPrinter {
    /// A printer with Ray's settings from the environment.
    pub(crate) fn new() -> Self {
        let enabled = std::env::var("RAY_DEDUP_LOGS").map_or(true, |v| v != "0");
        let window = std::env::var("RAY_DEDUP_LOGS_AGG_WINDOW_S")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(Duration::from_secs(5), Duration::from_secs_f64);
        OutputPrinter {
            dedup: Mutex::new(Dedup::new(window, enabled)),
            last_line: Mutex::new(None),
        }
    }

    /// Prints what `runs` bring now.
    pub(crate) fn print(&self, runs: Vec<WorkerOutput>) {
        let now = Instant::now();
        *self.last_line.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        let mut dedup = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
        let mut lines = Vec::new();
        for run in runs {
            lines.extend(dedup.take(run, now));
        }
        drop(dedup);
        emit(lines);
    }

    /// Prints the repeats whose window ended (called every second).
    pub(crate) fn tick(&self) {
        let lines = self
            .dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expire(Instant::now());
        emit(lines);
    }

    /// Waits (up to `limit`) until no line has come for `quiet`, so that lines
    /// printed just before the driver's results came are not lost as it exits; then
    /// prints every repeat held back.
    pub(crate) fn finish(&self, quiet: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let last = *self.last_line.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            match last {
                Some(t) if now.duration_since(t) < quiet && now < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => break,
            }
        }
        let lines = self.dedup.lock().unwrap_or_else(|p| p.into_inner()).flush();
        emit(lines);
    }
}

fn emit(lines: Vec<Printed>) {
    if lines.is_empty() {
        return;
    }
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    for (source, line) in lines {
        let prefix = source.prefix();
        // A closed terminal must not take the driver down with it.
        let _ = if source.stderr {
            writeln!(err, "{prefix} {line}")
        } else {
            writeln!(out, "{prefix} {line}")
        };
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pid: u32, lines: &[&str]) -> WorkerOutput {
        WorkerOutput {
            job: crate::ids::JobId(1),
            pid,
            ip: Some([10, 0, 0, 1].into()),
            label: "f".into(),
            stderr: false,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        }
    }

    fn texts(p: Vec<Printed>) -> Vec<String> {
        p.into_iter()
            .map(|(s, l)| format!("{} {l}", s.prefix()))
            .collect()
    }

    #[test]
    fn repeats_across_processes_fold_into_one_line_per_window() {
        let mut d = Dedup::new(Duration::from_secs(5), true);
        let t0 = Instant::now();
        assert_eq!(
            texts(d.take(run(1, &["loading model 1"]), t0)),
            ["(f pid=1, ip=10.0.0.1) loading model 1"]
        );
        // A process repeating itself, alone, is printed as it is.
        assert_eq!(texts(d.take(run(1, &["loading model 9"]), t0)).len(), 1);
        // The same line (but for its numbers) from six other processes: held back.
        for pid in 2..8 {
            assert!(d.take(run(pid, &["loading model 2"]), t0).is_empty());
        }
        assert!(d.expire(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(
            texts(d.expire(t0 + Duration::from_secs(5))),
            ["(f pid=7, ip=10.0.0.1) loading model 2 [repeated 6x across cluster]"]
        );
        // Lines with nothing but numbers are never held.
        assert_eq!(d.take(run(3, &["42", "42"]), t0).len(), 2);
    }

    #[test]
    fn flush_prints_what_was_held_and_off_means_off() {
        let mut d = Dedup::new(Duration::from_secs(5), true);
        let t0 = Instant::now();
        d.take(run(1, &["same"]), t0);
        d.take(run(2, &["same"]), t0);
        assert_eq!(texts(d.flush()), ["(f pid=2, ip=10.0.0.1) same"]);
        let mut off = Dedup::new(Duration::from_secs(5), false);
        assert_eq!(off.take(run(1, &["same"]), t0).len(), 1);
        assert_eq!(off.take(run(2, &["same"]), t0).len(), 1);
    }
}
