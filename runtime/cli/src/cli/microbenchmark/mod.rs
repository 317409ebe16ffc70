//! `rayish microbenchmark`: Ray's `ray microbenchmark` (python/ray/_private/ray_perf.py)
//! against rayish, with Ray's benchmark names, the same work per operation and the
//! same timing, printed in Ray's format.
//!
//! The remote functions and actors live in this binary: a driver's workers run its
//! own binary, so `rayish` itself serves them (see `main`).

mod actors;
mod objects;
mod tasks;
mod timeit;

use anyhow::{Context, Result};
use clap::Args;
use timeit::{Filter, Phases, Timer};

/// Arguments of `rayish microbenchmark`.
#[derive(Args, Debug)]
pub struct MicrobenchmarkArgs {
    /// Print the results as one JSON document on stdout; the usual lines go to stderr.
    #[arg(long)]
    json: bool,
    /// A smoke run: no settling pause, 0.2 s warm-up, 4 trials of 0.5 s. Not a
    /// measurement.
    #[arg(long)]
    quick: bool,
    /// Seconds to pause before each benchmark (Ray's `warmup_time_sec`: 10).
    #[arg(long, value_name = "SECONDS")]
    settle: Option<f64>,
    /// The head to run against, HOST:PORT or `auto` (default: RAYISH_ADDRESS, else a
    /// local cluster inside this process, as `ray.init()` starts one).
    #[arg(long)]
    address: Option<String>,
}

/// Benchmarks of `ray microbenchmark` that rayish leaves out, and why.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "1:1 actor calls concurrent",
        "needs threaded actors (max_concurrency): a rayish actor runs one call at a time",
    ),
    (
        "async-actor calls",
        "needs async actors (asyncio methods), which rayish does not have",
    ),
    (
        "placement group create/removal",
        "rayish has no placement groups",
    ),
    (
        "client:",
        "rayish has no Ray Client (drivers connect directly)",
    ),
];

/// Runs `rayish microbenchmark`.
pub fn run(args: MicrobenchmarkArgs) -> Result<()> {
    let mut phases = if args.quick {
        Phases::quick()
    } else {
        Phases::ray()
    };
    if let Some(s) = args.settle {
        phases.settle = std::time::Duration::try_from_secs_f64(s)
            .context("--settle must be a number of seconds ≥ 0")?;
    }
    eprintln!("Tip: set TESTS_TO_RUN='pattern' to run a subset of benchmarks");
    for (name, why) in NOT_RUN {
        eprintln!("not run: {name}: {why}");
    }
    rayish::init(rayish::Config::new().address(args.address))
        .context("cannot start or join a cluster")?;
    let mut t = Timer::new(Filter::from_env(), phases, args.json);
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let n_cpu = (cpus / 2).max(1);
    objects::run(&mut t)?;
    tasks::run(&mut t)?;
    actors::run(&mut t, n_cpu)?;
    if args.json {
        let doc = serde_json::json!({
            "rayish": env!("CARGO_PKG_VERSION"),
            "cpus": cpus,
            "results": t.results(),
        });
        println!("{doc:#}");
    }
    rayish::shutdown();
    Ok(())
}
