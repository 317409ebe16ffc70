//! Worker output: what a node's workers print goes to their log files and, line by
//! line, to the head for the drivers of their jobs (Ray's log monitor and
//! `log_to_driver`).
//!
//! Invariant: a worker never waits for its node to pass its output on: its pipes are
//! drained as fast as it writes (into its log files first, whole), and lines the
//! link to the head cannot take are dropped and counted in the node's log, never
//! queued without bound.

use super::worker_pool::Worker;
use crate::protocol::{ToHead, WorkerOutput};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Longer lines are cut here when passed on (the log file keeps them whole).
pub(super) const MAX_LINE: usize = 16 * 1024;
/// Lines waiting to be sent to the head at most; more are dropped.
const MAX_PENDING: usize = 10_000;
/// Lines sent in one message at most (1,000 × 16 KiB stays far below a frame's limit).
const MAX_BATCH: usize = 1_000;
/// How long the first line of a batch waits for others.
const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// One line a worker printed.
struct Line {
    worker: Arc<Worker>,
    label: Arc<str>,
    stderr: bool,
    text: String,
}

/// Where a node's workers' lines go: a bounded queue to the task that sends them to
/// the head in batches.
#[derive(Clone)]
pub(super) struct OutputSink {
    tx: mpsc::Sender<Line>,
    dropped: Arc<AtomicU64>,
}

impl OutputSink {
    /// Starts the task that sends lines to the head through `head`.
    pub(super) fn start(head: Arc<super::head_link::HeadLink>) -> Self {
        let (tx, rx) = mpsc::channel(MAX_PENDING);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(send_batches(rx, head, dropped.clone()));
        OutputSink { tx, dropped }
    }

    fn offer(&self, line: Line) {
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn send_batches(
    mut rx: mpsc::Receiver<Line>,
    head: Arc<super::head_link::HeadLink>,
    dropped: Arc<AtomicU64>,
) {
    let mut reported = 0;
    while let Some(first) = rx.recv().await {
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        let mut lines = vec![first];
        while lines.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) => lines.push(line),
                _ => break,
            }
        }
        // Held while the head is away (see `HeadLink`), so a restart loses none.
        head.send(ToHead::WorkerOutput(group(lines)));
        let now = dropped.load(Ordering::Relaxed);
        if now > reported {
            tracing::warn!(
                "{} lines of worker output were not passed to drivers (the link to the \
                 head was behind); the workers' log files have them",
                now - reported
            );
            reported = now;
        }
    }
}

/// Runs of lines from one worker, stream and label, in order.
fn group(lines: Vec<Line>) -> Vec<WorkerOutput> {
    let mut out: Vec<WorkerOutput> = Vec::new();
    for line in lines {
        let pid = line.worker.pid();
        match out.last_mut() {
            Some(last)
                if last.pid == pid && last.stderr == line.stderr && *last.label == *line.label =>
            {
                last.lines.push(line.text);
            }
            _ => out.push(WorkerOutput {
                job: line.worker.job(),
                pid,
                ip: None,
                label: line.label.to_string(),
                stderr: line.stderr,
                lines: vec![line.text],
            }),
        }
    }
    out
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes (longer ones are
/// cut and marked), without their line ends.
#[derive(Default)]
struct LineSplitter {
    line: Vec<u8>,
    cut: bool,
}

impl LineSplitter {
    /// Feeds `bytes`; `emit` gets each line they complete.
    fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(String)) {
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            let room = MAX_LINE.saturating_sub(self.line.len());
            self.line.extend_from_slice(&body[..body.len().min(room)]);
            self.cut |= body.len() > room;
            if ends {
                emit(self.take());
            }
        }
    }

    /// The unfinished last line, if any.
    fn finish(&mut self) -> Option<String> {
        (!self.line.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let mut text = String::from_utf8_lossy(&self.line).into_owned();
        if self.cut {
            text.push_str(" [line cut]");
        }
        self.line.clear();
        self.cut = false;
        text
    }
}

/// Drains one of `worker`'s output pipes until it closes: every byte into `file`,
/// every line to `sink`, labelled with what the worker runs when it is read.
pub(super) async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    mut file: std::fs::File,
    stderr: bool,
    worker: Arc<Worker>,
    sink: OutputSink,
) {
    let mut buf = vec![0u8; 8192];
    let mut lines = LineSplitter::default();
    let send = |text: String| {
        sink.offer(Line {
            worker: worker.clone(),
            label: worker.label(),
            stderr,
            text,
        })
    };
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // A full disk loses the file's copy, never the worker's progress.
        let _ = file.write_all(&buf[..n]);
        lines.push(&buf[..n], &send);
    }
    if let Some(last) = lines.finish() {
        send(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, |l| out.push(l));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn lines_are_split_across_reads_and_long_ones_cut() {
        assert_eq!(
            split(&[b"a\nb", b"c\r\n", b"\nlast"]),
            ["a", "bc", "", "last"]
        );
        let long = vec![b'x'; MAX_LINE + 10];
        let got = split(&[&long, b"\nnext\n"]);
        assert_eq!(got.len(), 2);
        assert!(got[0].ends_with(" [line cut]") && got[0].len() == MAX_LINE + 11);
        assert_eq!(got[1], "next");
        assert!(MAX_LINE * MAX_BATCH < crate::protocol::MAX_FRAME_LEN as usize);
    }
}
