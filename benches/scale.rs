//! Scale: 1,000,000 no-op tasks queued by one driver on one node, then gathered, as
//! Ray's single-node release test "tasks queued on a single node" does (one blocking
//! task per CPU holds the node while every task is submitted; then they are let go
//! and each result is read). Prints the time and the peak memory of the driver, of
//! the node process (head and node in one, `rayish start --head`) and of its workers.
//!
//!     cargo bench --bench scale                     # 1,000,000 tasks
//!     cargo bench --bench scale -- --tasks 100000
//!
//! Needs the `rayish` binary built (`cargo build --release`).

use anyhow::{bail, Context};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// CPUs of the one node, and so the number of blocking tasks.
const NODE_CPUS: u32 = 2;

#[rayish::remote]
fn noop() {}

/// Ray's `Semaphore` in the release test: holds the blocking tasks until opened.
#[derive(Default)]
pub struct Gate {
    open: bool,
}

#[rayish::actor]
impl Gate {
    pub fn new() -> Self {
        Gate { open: false }
    }

    pub fn open(&mut self) {
        self.open = true;
    }

    pub fn is_open(&self) -> bool {
        self.open
    }
}

/// Holds one CPU until the gate opens. Sleeps between looks (not `get`), so the
/// CPU stays taken: a task blocked in `get` lends its CPU to queued tasks.
#[rayish::remote]
fn block(gate: GateHandle) -> rayish::Result<()> {
    while !rayish::get(&gate.is_open())? {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM:")
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Children of `pid` (the node's worker processes), from each process's `stat`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            // Field 4, after the parenthesised command name, is the parent's pid.
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s[s.rfind(')')? + 1..]
                        .split_whitespace()
                        .nth(1)?
                        .parse()
                        .ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The driver: submits, gathers, prints one `RESULT` line.
fn driver(tasks: usize) -> anyhow::Result<()> {
    rayish::init(rayish::Config::default())?;
    let gate = Gate::remote();
    let blockers: Vec<_> = (0..NODE_CPUS)
        .map(|_| block::remote(gate.clone()))
        .collect();
    let start = Instant::now();
    let refs: Vec<_> = (0..tasks).map(|_| noop::remote()).collect();
    let submitted = start.elapsed().as_secs_f64();
    rayish::get(&gate.open())?;
    rayish::get_all(&blockers)?;
    // The gate opens once the head has taken every submission (one ordered stream).
    let opened = start.elapsed().as_secs_f64();
    // Gathered with one `get_all`. (Ray's test reads each result with its own
    // `ray.get`; here that costs a subscription and a wake-up per task.)
    rayish::get_all(&refs)?;
    let total = start.elapsed().as_secs_f64();
    let hwm = peak_kib(std::process::id()).unwrap_or(0);
    println!("RESULT {tasks} {submitted:.2} {opened:.2} {total:.2} {hwm}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    rayish::serve_if_worker();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let tasks: usize = args
        .iter()
        .position(|a| a == "--tasks")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse())
        .transpose()
        .context("--tasks N")?
        .unwrap_or(1_000_000);
    if let Ok(n) = std::env::var("RAYISH_SCALE_DRIVER") {
        return driver(n.parse()?);
    }
    let cluster = rayish_suite::TestCluster::start(0, NODE_CPUS, 10_000);
    let node_pid = cluster.nodes[0].id();
    let mut child = Command::new(std::env::current_exe()?)
        .env("RAYISH_SCALE_DRIVER", tasks.to_string())
        .env("RAYISH_ADDRESS", &cluster.address)
        .env("RAYISH_TOKEN", &cluster.token)
        .stdout(Stdio::piped())
        .spawn()?;
    // Workers come and go: sample their resident sets while the driver runs.
    let mut workers_peak_kib = 0u64;
    while child.try_wait()?.is_none() {
        let sum: u64 = children(node_pid)
            .into_iter()
            .filter_map(|p| proc_status_kib(p, "VmRSS:"))
            .sum();
        workers_peak_kib = workers_peak_kib.max(sum);
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
        bail!("the driver gave no result ({})\n{stdout}", out.status);
    };
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse())
        .collect::<Result<_, _>>()?;
    let node_kib = peak_kib(node_pid).unwrap_or(0);
    let mib = |kib: f64| kib / 1024.0;
    println!(
        "{} no-op tasks queued on one node ({NODE_CPUS} CPUs): submitted in {:.2} s, taken by the head in {:.2} s, all gathered in {:.2} s ({:.0} tasks/s)  (target < 30 s)",
        f[0], f[1], f[2], f[3], f[0] / f[3]
    );
    println!(
        "peak memory: driver {:.0} MiB + node {:.0} MiB = {:.0} MiB  (target < 2048 MiB); workers, summed at their peak: {:.0} MiB",
        mib(f[4]),
        mib(node_kib as f64),
        mib(f[4] + node_kib as f64),
        mib(workers_peak_kib as f64)
    );
    Ok(())
}
