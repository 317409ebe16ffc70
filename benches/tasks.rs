//! No-op task throughput: tasks submitted async from one driver, then gathered — the
//! definition of Ray's "single client tasks async" (ray_perf.py: submit 1000 no-op
//! tasks, then get them all; one operation = one task).
//!
//!     cargo bench --bench tasks
//!
//! Runs in local mode and on a 2-node cluster of separate `rayish` processes, each in
//! a child process of its own (a process joins one cluster), 5 rounds of 10,000 tasks.

use std::process::Command;
use std::time::Instant;

#[rayish::remote]
fn noop() {}

const ROUNDS: usize = 5;
const TASKS: usize = 10_000;

fn child() -> anyhow::Result<()> {
    rayish::init(rayish::Config::default())?;
    // Warm-up: start workers on every node.
    rayish::get_all(&(0..2_000).map(|_| noop::remote()).collect::<Vec<_>>())?;
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let refs: Vec<_> = (0..TASKS).map(|_| noop::remote()).collect();
        rayish::get_all(&refs)?;
        rates.push(TASKS as f64 / start.elapsed().as_secs_f64());
    }
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let sd = (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64).sqrt();
    println!("RATE {mean:.0} {sd:.0}");
    Ok(())
}

fn run(label: &str, mut cmd: Command) -> anyhow::Result<()> {
    let out = cmd.env("RAYISH_BENCH_CHILD", "1").output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RATE ")) else {
        anyhow::bail!(
            "{label}: no result\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut parts = line.split_whitespace();
    let (mean, sd) = (parts.next().unwrap_or("?"), parts.next().unwrap_or("?"));
    println!("single client tasks async ({label}) per second {mean} +- {sd}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os("RAYISH_BENCH_CHILD").is_some() {
        return child();
    }
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    run(&format!("local mode, {cpus} CPUs"), Command::new(&exe))?;
    let cluster = rayish_suite::TestCluster::start(1, (cpus / 2).max(1) as u32, 5000);
    let mut cmd = Command::new(&exe);
    cmd.env("RAYISH_ADDRESS", &cluster.address)
        .env("RAYISH_TOKEN", &cluster.token);
    run(
        &format!("2-node cluster of {} CPUs each", (cpus / 2).max(1)),
        cmd,
    )?;
    Ok(())
}
