//! Ray's `timeit` (ray/_private/ray_microbenchmark_helpers.py): which benchmarks run,
//! and how one is timed.

use serde::Serialize;
use std::time::{Duration, Instant};

/// Which benchmark names run: Ray's `TESTS_TO_RUN` (a name must contain it) and
/// `TESTS_TO_SKIP` (a name must not), both plain substrings as in Ray.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    run: Option<String>,
    skip: Option<String>,
}

impl Filter {
    /// The filter Ray reads: `TESTS_TO_RUN` and `TESTS_TO_SKIP`, empty meaning unset.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|s: &String| !s.is_empty());
        Filter {
            run: var("TESTS_TO_RUN"),
            skip: var("TESTS_TO_SKIP"),
        }
    }

    /// Whether the benchmark `name` runs.
    pub fn wants(&self, name: &str) -> bool {
        self.run.as_deref().is_none_or(|p| name.contains(p))
            && !self.skip.as_deref().is_some_and(|p| name.contains(p))
    }
}

/// How long each phase of one benchmark takes.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// Idle time before the warm-up (Ray's `warmup_time_sec`, 10 s), so the previous
    /// benchmark's background work (workers exiting, memory returned) has settled.
    pub settle: Duration,
    /// Calls before the trials, also sizing the step between clock reads (1 s).
    pub warmup: Duration,
    /// Length of each of the 4 trials (2 s).
    pub trial: Duration,
}

impl Phases {
    /// Ray's: 10 s settle, 1 s warm-up, 4 trials of 2 s.
    pub fn ray() -> Self {
        Phases {
            settle: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            trial: Duration::from_secs(2),
        }
    }

    /// A smoke run: no settle, 0.2 s warm-up, 0.5 s trials. Not a measurement.
    pub fn quick() -> Self {
        Phases {
            settle: Duration::ZERO,
            warmup: Duration::from_millis(200),
            trial: Duration::from_millis(500),
        }
    }
}

/// One benchmark's result: operations per second over the 4 trials.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Ray's name of the benchmark.
    pub name: String,
    /// Mean rate of the trials.
    pub per_second: f64,
    /// Population standard deviation of the trials' rates (numpy's `std`).
    pub sd: f64,
}

impl Measurement {
    /// Mean and population standard deviation of `rates`.
    pub fn of(name: &str, rates: &[f64]) -> Self {
        let n = rates.len().max(1) as f64;
        let mean = rates.iter().sum::<f64>() / n;
        let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
        Measurement {
            name: name.to_string(),
            per_second: mean,
            sd: var.sqrt(),
        }
    }

    /// Ray's output line: `<name> per second <mean> +- <sd>`.
    pub fn line(&self) -> String {
        format!(
            "{} per second {:.2} +- {:.2}",
            self.name, self.per_second, self.sd
        )
    }
}

/// Times benchmarks as Ray's `timeit` does and keeps their results.
pub struct Timer {
    filter: Filter,
    phases: Phases,
    /// Print result lines on stderr (stdout then carries only JSON).
    lines_to_stderr: bool,
    results: Vec<Measurement>,
}

/// Number of timed trials, as Ray.
const TRIALS: usize = 4;

impl Timer {
    /// A timer running the benchmarks `filter` selects.
    pub fn new(filter: Filter, phases: Phases, lines_to_stderr: bool) -> Self {
        Timer {
            filter,
            phases,
            lines_to_stderr,
            results: Vec::new(),
        }
    }

    /// Whether `name` runs; a benchmark checks before preparing what it needs.
    pub fn wants(&self, name: &str) -> bool {
        self.filter.wants(name)
    }

    /// Times `f`, one call of which is `multiplier` operations: settle, warm up for
    /// `warmup` counting calls, then 4 trials each running calls in steps of a tenth
    /// of the warm-up's count until `trial` has passed. Skipped unless wanted.
    pub fn time<E>(
        &mut self,
        name: &str,
        multiplier: f64,
        mut f: impl FnMut() -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.wants(name) {
            return Ok(());
        }
        std::thread::sleep(self.phases.settle);
        let start = Instant::now();
        let mut count = 0u64;
        while start.elapsed() < self.phases.warmup {
            f()?;
            count += 1;
        }
        let step = count / 10 + 1;
        let mut rates = Vec::with_capacity(TRIALS);
        for _ in 0..TRIALS {
            let start = Instant::now();
            let mut count = 0u64;
            while start.elapsed() < self.phases.trial {
                for _ in 0..step {
                    f()?;
                }
                count += step;
            }
            rates.push(multiplier * count as f64 / start.elapsed().as_secs_f64());
        }
        let m = Measurement::of(name, &rates);
        if self.lines_to_stderr {
            eprintln!("{}", m.line());
        } else {
            println!("{}", m.line());
        }
        self.results.push(m);
        Ok(())
    }

    /// The results so far, in the order run.
    pub fn results(&self) -> &[Measurement] {
        &self.results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(run: Option<&str>, skip: Option<&str>) -> Filter {
        Filter {
            run: run.map(String::from),
            skip: skip.map(String::from),
        }
    }

    #[test]
    fn filters_by_substring_as_ray() {
        let all = filter(None, None);
        assert!(all.wants("1:1 actor calls sync"));
        let actors = filter(Some("actor"), None);
        assert!(actors.wants("n:n actor calls async"));
        assert!(!actors.wants("single client tasks sync"));
        let no_sync = filter(Some("actor"), Some("sync"));
        assert!(!no_sync.wants("1:1 actor calls sync"));
        assert!(
            !no_sync.wants("1:1 actor calls async"),
            "'async' contains 'sync'"
        );
        assert!(no_sync.wants("1:1 actor calls concurrent"));
    }

    #[test]
    fn mean_and_population_sd_as_numpy() {
        let m = Measurement::of("x", &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m.per_second, 2.5);
        assert!((m.sd - 1.118_033_988_749_895).abs() < 1e-12);
        assert_eq!(m.line(), "x per second 2.50 +- 1.12");
    }

    #[test]
    fn counts_operations_times_multiplier_and_skips_unwanted() {
        let phases = Phases {
            settle: Duration::ZERO,
            warmup: Duration::from_millis(20),
            trial: Duration::from_millis(20),
        };
        let mut t = Timer::new(filter(Some("timed"), None), phases, true);
        let mut calls = 0u64;
        t.time("skipped", 1.0, || -> Result<(), ()> {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 0);
        t.time("timed", 1000.0, || -> Result<(), ()> {
            std::thread::sleep(Duration::from_millis(1));
            Ok(())
        })
        .unwrap();
        let m = &t.results()[0];
        // One call sleeps ≥ 1 ms, so at most 1000 calls/s, i.e. 1e6 operations/s.
        assert!(m.per_second > 0.0 && m.per_second <= 1e6, "{m:?}");
        assert_eq!(t.time("timed", 1.0, || Err("boom")), Err("boom"));
    }
}
