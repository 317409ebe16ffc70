//! A driver of scenarios for the cluster integration tests (tests/cluster.rs); each
//! prints one `RESULT {json}` line that the test checks. Runs in local mode too:
//!     cargo run --release --bin cluster_driver -- many --n 1000

use clap::{Parser, Subcommand};
use rayish::{Blob, ObjectRef, TaskOptions};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Tasks that count their calls in a metric of their own, and a driver gauge.
    Metrics {
        #[arg(long, default_value_t = 20)]
        n: u64,
    },
    /// Many small tasks; where did they run?
    Many {
        #[arg(long, default_value_t = 10_000)]
        n: u64,
    },
    /// Large objects made on one node and read by tasks on others, and nested references.
    PassRefs,
    /// Parents that wait on children, more of them than there are CPUs.
    Nested {
        #[arg(long, default_value_t = 12)]
        parents: u64,
    },
    /// Recursive Fibonacci: every task above the leaves blocks in `get_all` on its
    /// two children, so the cluster is full of blocked tasks (issue 17 #10).
    Fib {
        #[arg(long, default_value_t = 10)]
        n: u64,
    },
    /// A panicking task and a task returning an error.
    Panic,
    /// Workers that abort: once (retried) and always (retries exhausted).
    Crash {
        /// Scratch directory for markers.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Slow tasks whose worker processes the driver kills with SIGKILL mid-task.
    KillWorker {
        #[arg(long)]
        dir: PathBuf,
    },
    /// A long job of slow tasks and large objects; the test kills a node meanwhile.
    Long {
        #[arg(long, default_value_t = 200)]
        n: u64,
        /// The driver waits for this file to exist before the second stage.
        #[arg(long)]
        go: PathBuf,
    },
    /// Tasks the test kills the head under: some received before, `n` slow ones and
    /// a chain after each running or queued when it dies, and more after it is back.
    /// Each run of a task leaves a file in `dir`, so the test counts runs.
    HeadRestart {
        #[arg(long, default_value_t = 8)]
        n: u64,
        #[arg(long)]
        dir: PathBuf,
    },
    /// One task (needing `spot`) puts a large value and waits for `n` children of
    /// 300 ms each (needing `kid`) that read it; prints SUBMITTED (the test restarts
    /// the head meanwhile). Each child leaves a file per run in `dir`.
    NestedRestart {
        #[arg(long, default_value_t = 6)]
        n: u64,
        #[arg(long)]
        dir: PathBuf,
    },
    /// `n` tasks of `ms` milliseconds each, all at once; where did they run?
    Burst {
        /// Tasks.
        #[arg(long)]
        n: u64,
        /// Milliseconds each.
        #[arg(long)]
        ms: u64,
    },
    /// `n` tasks of `ms` milliseconds each, all at once: how many worker processes ran
    /// them on each node?
    Workers {
        /// Tasks.
        #[arg(long)]
        n: u64,
        /// Milliseconds each.
        #[arg(long)]
        ms: u64,
    },
    /// A task no node can run.
    Infeasible,
    /// Puts `count` objects of `mib` MiB, waits for `<go>.1`, reads every byte back,
    /// drops them, prints DROPPED, exits when `<go>.2` exists.
    Spill {
        #[arg(long)]
        count: u64,
        #[arg(long)]
        mib: u64,
        #[arg(long)]
        go: PathBuf,
    },
    /// Holds many objects until `<go>.1` exists, drops them, exits when `<go>.2` exists.
    Free {
        #[arg(long)]
        go: PathBuf,
    },
    /// Twice: creates and drops `n` tasks and `n` objects (plus large ones and nested
    /// references). Prints BASELINE after a warm-up, then for round 1 and 2 waits for
    /// `<go>.<round>` and prints `DONE <round>` after it; exits once `<go>.3` exists.
    Churn {
        #[arg(long, default_value_t = 100_000)]
        n: u64,
        #[arg(long)]
        go: PathBuf,
    },
    /// A `mib`-MiB object made on the "producer" node and read at once by a task on
    /// each "consumer" node; prints MADE once it exists and waits for `<go>.1` first.
    Huge {
        #[arg(long, default_value_t = 1024)]
        mib: usize,
        #[arg(long, default_value_t = 2)]
        readers: usize,
        #[arg(long)]
        go: PathBuf,
    },
    /// Puts of `mib` MiB (from the driver and from a task) into a store that can
    /// neither hold nor spill them; reports the errors, then reads back a small
    /// object stored before.
    StoreFull {
        #[arg(long, default_value_t = 100)]
        mib: usize,
    },
    /// Large values put, read and dropped in turn, from the driver and from tasks, so
    /// that freed shared segments are reused; every value is checked, and whether
    /// tasks read their `Blob` arguments in place (shared memory).
    Reuse {
        #[arg(long, default_value_t = 24)]
        rounds: u64,
    },
    /// Waits on a long task while the test kills the head.
    HeadDies,
    /// One small task after another, each `get` before the next is submitted,
    /// printing `TICK <ms since the Unix epoch>` as each result arrives, until `until`
    /// exists (benches/head_restart.sh times a resumed driver's first task so).
    Ticks {
        #[arg(long)]
        until: PathBuf,
        /// Pause between one result and the next submission.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
    /// Tasks that need a custom resource only one node has.
    Special,
    /// Arguments and results of many megabytes, moved between nodes.
    Large {
        #[arg(long, default_value_t = 80)]
        mb: usize,
    },
    /// Short tasks run back to back, each sent to its worker behind the one before
    /// (a follower); one of them waits for the task sent behind it.
    Follow,
    /// Tasks that print (see `chatter`); with `TEST_NO_LOG_TO_DRIVER` set, the driver
    /// turns `log_to_driver` off.
    Print {
        #[arg(long, default_value_t = 24)]
        n: u64,
    },
    /// What the state API lists: `n` tasks over the nodes, a task returning an error
    /// and a panicking one, a named actor with a call; prints its RESULT, then keeps
    /// the actor alive until `go` exists.
    State {
        #[arg(long, default_value_t = 40)]
        n: u64,
        #[arg(long)]
        go: PathBuf,
    },
}

/// Holds a reference for tasks to pick up (scenario `follow`).
#[derive(Default)]
pub struct Board {
    posted: Option<ObjectRef<u64>>,
}

#[rayish::actor]
impl Board {
    pub fn new() -> Self {
        Board { posted: None }
    }

    pub fn post(&mut self, r: ObjectRef<u64>) {
        self.posted = Some(r);
    }

    pub fn take(&self) -> Option<ObjectRef<u64>> {
        self.posted.clone()
    }
}

/// Counts its calls in `ray_test_task_calls_total{parity}` and its argument in the
/// histogram `ray_test_task_values`, from the worker.
#[rayish::remote]
fn counted(i: u64) -> u64 {
    static CALLS: std::sync::OnceLock<rayish::metrics::Counter> = std::sync::OnceLock::new();
    let calls = CALLS.get_or_init(|| {
        rayish::metrics::Counter::new("test_task_calls", "Calls of counted.", &["parity"])
    });
    let parity = if i.is_multiple_of(2) { "even" } else { "odd" };
    calls
        .inc(1.0, &[("parity", parity)])
        .expect("the declared tag");
    static VALUES: std::sync::OnceLock<rayish::metrics::Histogram> = std::sync::OnceLock::new();
    let values = VALUES.get_or_init(|| {
        rayish::metrics::Histogram::new(
            "test_task_values",
            "Arguments of counted.",
            &[5.0, 10.0],
            &[],
        )
    });
    values.observe(i as f64, &[]).expect("no tags");
    i
}

#[rayish::remote]
fn plus_one(x: u64) -> u64 {
    x + 1
}

/// Waits until a reference is posted on `board`, then for its value.
#[rayish::remote]
fn await_posted(board: BoardHandle) -> rayish::Result<u64> {
    loop {
        if let Some(r) = rayish::get(&board.take())? {
            return rayish::get(&r);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Prints to stdout a line every task prints, a line of its own (in letters: Ray's
/// deduplication ignores words with digits) and, in the first, one to stderr.
#[rayish::remote]
fn chatter(i: u64) -> u32 {
    let own: String = i
        .to_string()
        .bytes()
        .map(|d| char::from(b'a' + (d - b'0')))
        .collect();
    println!("the same line from every task");
    println!("task {own} says hello");
    if i == 0 {
        eprintln!("a line to stderr");
    }
    std::thread::sleep(Duration::from_millis(40));
    std::process::id()
}

#[rayish::remote]
fn where_am_i(i: u64) -> (u64, String) {
    (i * 2, rayish::current_node_id().unwrap_or_default())
}

#[rayish::remote]
fn make_block(seed: u64, len: usize) -> (Vec<u64>, String) {
    let v = (0..len as u64)
        .map(|i| i.wrapping_mul(seed) ^ seed)
        .collect();
    (v, rayish::current_node_id().unwrap_or_default())
}

#[rayish::remote]
fn checksum(block: (Vec<u64>, String)) -> (u64, String, String) {
    let sum = block.0.iter().fold(0u64, |a, b| a.wrapping_add(*b));
    (sum, block.1, rayish::current_node_id().unwrap_or_default())
}

#[rayish::remote]
fn sum_slice(values: Vec<u64>) -> u64 {
    values.iter().sum()
}

#[rayish::remote]
fn refs_to_squares(n: u64) -> Vec<ObjectRef<u64>> {
    (0..n)
        .map(|i| rayish::put(&(i * i)).expect("put"))
        .collect()
}

#[rayish::remote]
fn sum_refs(refs: Vec<ObjectRef<u64>>) -> rayish::Result<u64> {
    Ok(rayish::get_all(&refs)?.into_iter().sum())
}

#[rayish::remote]
fn leaf(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    x + 1
}

#[rayish::remote]
fn parent(x: u64) -> rayish::Result<u64> {
    let kids: Vec<_> = (0..3).map(|k| leaf::remote(x * 10 + k)).collect();
    Ok(rayish::get_all(&kids)?.into_iter().sum())
}

#[rayish::remote]
fn fib(n: u64) -> rayish::Result<u64> {
    if n < 2 {
        return Ok(n);
    }
    let kids = [fib::remote(n - 1), fib::remote(n - 2)];
    Ok(rayish::get_all(&kids)?.into_iter().sum())
}

#[rayish::remote]
fn explode(code: u64) -> u64 {
    panic!("boom {code}");
}

#[rayish::remote]
fn refuse(x: i64) -> Result<i64, String> {
    if x < 0 {
        Err(format!("negative input {x}"))
    } else {
        Ok(x)
    }
}

#[rayish::remote]
fn crash_once(marker: String, x: u64) -> u64 {
    if std::fs::metadata(&marker).is_err() {
        let _ = std::fs::write(&marker, b"crashed");
        std::process::abort();
    }
    x * 3
}

#[rayish::remote]
fn always_crash() -> u64 {
    std::process::abort();
}

#[rayish::remote]
fn slow_pid(dir: String, i: u64) -> u64 {
    let _ = std::fs::write(format!("{dir}/{}", std::process::id()), b"");
    std::thread::sleep(Duration::from_millis(1500));
    i + 1000
}

#[rayish::remote]
fn slow_where(ms: u64) -> (String, u32) {
    std::thread::sleep(Duration::from_millis(ms));
    (
        rayish::current_node_id().unwrap_or_default(),
        std::process::id(),
    )
}

/// As `slow_where`, once `before` (another task's result) is ready.
#[rayish::remote]
fn slow_where_after(before: (String, u32), ms: u64) -> (String, u32) {
    let _ = before;
    slow_where(ms)
}

/// `base + i` after `ms`, leaving a file named after `key` in `dir` per run, which
/// holds the id of the node it ran on.
#[rayish::remote]
fn counted_add(dir: String, key: String, base: u64, i: u64, ms: u64) -> u64 {
    note_run(&dir, &key, ms);
    base + i
}

/// Leaves a file for this run of `key` in `dir` (`<key>.<pid>.<nanos>`, holding the
/// node's id), then sleeps `ms`.
fn note_run(dir: &str, key: &str, ms: u64) {
    let run = format!(
        "{dir}/{key}.{}.{}",
        std::process::id(),
        rayish_suite_nanos()
    );
    let _ = std::fs::write(run, rayish::current_node_id().unwrap_or_default());
    std::thread::sleep(Duration::from_millis(ms));
}

/// Puts a large value, then waits for `n` children of `ms` each that read it
/// (`counted_len`), submitted at once: its CPU is lent to them meanwhile.
#[rayish::remote]
fn fan_out(dir: String, n: u64, ms: u64) -> rayish::Result<Vec<u64>> {
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let data = rayish::put(&data)?;
    let kid = TaskOptions::new().resource("kid", 1.0);
    let kids: Vec<_> = (0..n)
        .map(|i| {
            counted_len::remote_with(kid.clone(), dir.clone(), format!("kid{i}"), &data, i, ms)
        })
        .collect();
    rayish::get_all(&kids)
}

/// `data`'s length plus `i`, after `ms`, leaving a file per run as `counted_add`.
#[rayish::remote]
fn counted_len(dir: String, key: String, data: Vec<u8>, i: u64, ms: u64) -> u64 {
    note_run(&dir, &key, ms);
    data.len() as u64 + i
}

fn rayish_suite_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[rayish::remote]
fn slow(i: u64, ms: u64) -> (u64, String) {
    std::thread::sleep(Duration::from_millis(ms));
    (i * 7, rayish::current_node_id().unwrap_or_default())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[rayish::remote]
fn byte_sum(data: Vec<u8>) -> (u64, usize, String) {
    (
        data.iter().map(|b| *b as u64).sum(),
        data.len(),
        rayish::current_node_id().unwrap_or_default(),
    )
}

#[rayish::remote]
fn make_bytes(len: usize, seed: u8) -> Vec<u8> {
    pattern(len, seed)
}

#[rayish::remote]
fn make_buf(len: usize, seed: u8) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(pattern(len, seed))
}

#[rayish::remote]
fn buf_sum(data: serde_bytes::ByteBuf) -> (u64, usize, String) {
    (
        data.iter().map(|b| *b as u64).sum(),
        data.len(),
        rayish::current_node_id().unwrap_or_default(),
    )
}

/// Whether `ptr` lies in a mapping of a rayish shared-memory file in this process.
fn in_shared_memory(ptr: *const u8) -> bool {
    let at = ptr as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines().any(|line| {
        let mut parts = line.split_whitespace();
        let range = parts.next().unwrap_or("");
        let path = parts.nth(4).unwrap_or("");
        let Some((lo, hi)) = range.split_once('-') else {
            return false;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            return false;
        };
        path.starts_with("/dev/shm/rayish-") && (lo..hi).contains(&at)
    })
}

#[rayish::remote]
fn blob_check(data: Blob, seed: u8) -> (bool, bool) {
    (
        data[..] == pattern(data.len(), seed)[..],
        in_shared_memory(data.as_ptr()),
    )
}

#[rayish::remote]
fn make_blob(len: usize, seed: u8) -> Blob {
    Blob::from(pattern(len, seed))
}

#[rayish::remote]
fn put_blob(len: usize, seed: u8) -> rayish::Result<ObjectRef<Blob>> {
    rayish::put(&Blob::from(pattern(len, seed)))
}

#[rayish::remote]
fn put_into_full_store(mib: usize) -> (bool, String) {
    match rayish::put(&serde_bytes::ByteBuf::from(vec![6u8; mib << 20])) {
        Ok(_) => (false, "stored".into()),
        Err(e) => (
            matches!(e, rayish::Error::ObjectStoreFull(_)),
            e.to_string(),
        ),
    }
}

#[rayish::remote]
fn never_runs() -> u64 {
    1
}

/// Creates and drops `n` tasks and `n` objects in windows of 10,000, then large
/// objects on the nodes and objects holding references.
fn churn(n: u64) -> anyhow::Result<()> {
    let window = 10_000;
    let mut done = 0;
    while done < n {
        let k = window.min(n - done);
        let tasks: Vec<_> = (done..done + k).map(where_am_i::remote).collect();
        let puts: Vec<_> = (done..done + k)
            .map(|i| rayish::put(&i))
            .collect::<Result<_, _>>()?;
        rayish::get_all(&tasks)?;
        rayish::get_all(&puts)?;
        done += k;
    }
    let big: Vec<_> = (1..=40).map(|s| make_block::remote(s, 200_000)).collect();
    let sums: Vec<_> = big.iter().map(checksum::remote).collect();
    rayish::get_all(&sums)?;
    drop((big, sums));
    for _ in 0..20 {
        let nested = refs_to_squares::remote(50u64);
        rayish::get(&sum_refs::remote(&nested))?;
    }
    Ok(())
}

fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn result(value: serde_json::Value) {
    println!("RESULT {value}");
}

fn main() -> anyhow::Result<()> {
    let quiet = std::env::var_os("TEST_NO_LOG_TO_DRIVER").is_some();
    rayish::init(rayish::Config::default().log_to_driver(!quiet))?;
    let args = Args::parse();
    match args.scenario {
        Scenario::Metrics { n } => {
            let refs: Vec<_> = (0..n).map(counted::remote).collect();
            rayish::get_all(&refs)?;
            let gauge = rayish::metrics::Gauge::new("test_driver_gauge", "Set by the driver.", &[]);
            gauge.set(n as f64, &[])?;
            result(json!({"n": n}));
        }
        Scenario::Many { n } => {
            // Warm up: start workers on every node (a node's first worker must fetch
            // the binary and connect, and a fast node would take all the work meanwhile).
            let warm: Vec<_> = (0..12u64).map(|i| slow::remote(i, 100u64)).collect();
            rayish::get_all(&warm)?;
            let start = Instant::now();
            let refs: Vec<_> = (0..n).map(where_am_i::remote).collect();
            let out = rayish::get_all(&refs)?;
            let mut nodes: BTreeMap<String, u64> = BTreeMap::new();
            let mut wrong = 0;
            for (i, (v, node)) in out.iter().enumerate() {
                if *v != i as u64 * 2 {
                    wrong += 1;
                }
                *nodes.entry(node.clone()).or_default() += 1;
            }
            result(
                json!({"n": n, "wrong": wrong, "nodes": nodes, "seconds": start.elapsed().as_secs_f64()}),
            );
        }
        Scenario::Burst { n, ms } => {
            let start = Instant::now();
            let refs: Vec<_> = (0..n).map(|i| slow::remote(i, ms)).collect();
            let out = rayish::get_all(&refs)?;
            let mut nodes: BTreeMap<String, u64> = BTreeMap::new();
            let wrong = out
                .iter()
                .enumerate()
                .filter(|(i, (v, _))| *v != *i as u64 * 7)
                .count();
            for (_, node) in &out {
                *nodes.entry(node.clone()).or_default() += 1;
            }
            result(
                json!({"n": n, "wrong": wrong, "nodes": nodes, "seconds": start.elapsed().as_secs_f64()}),
            );
        }
        Scenario::Workers { n, ms } => {
            // Half of them then run a step of next to nothing after one of the others
            // (as a pipeline's merges do): each is assigned to the node the moment the
            // one before it ends.
            let first: Vec<_> = (0..n / 2).map(|_| slow_where::remote(ms)).collect();
            let then: Vec<_> = first
                .iter()
                .map(|r| slow_where_after::remote(r, 0))
                .collect();
            let refs: Vec<_> = first.into_iter().chain(then).collect();
            let mut pids: BTreeMap<String, std::collections::BTreeSet<u32>> = BTreeMap::new();
            for (node, pid) in rayish::get_all(&refs)? {
                pids.entry(node).or_default().insert(pid);
            }
            let workers: BTreeMap<_, _> = pids.iter().map(|(n, p)| (n.clone(), p.len())).collect();
            result(json!({"n": n, "workers": workers}));
        }
        Scenario::PassRefs => {
            // Blocks are made where the "producer" resource is and read where
            // "consumer" is, so every read crosses nodes (the scheduler would otherwise
            // rightly run the readers where the data already is).
            let len = 200_000; // 1.6 MB: held on the node that made it, pulled by others
            let produce = TaskOptions::new().resource("producer", 1.0);
            let consume = TaskOptions::new().resource("consumer", 1.0);
            let blocks: Vec<_> = (1..=4)
                .map(|s| make_block::remote_with(produce.clone(), s, len))
                .collect();
            let mut sums = Vec::new();
            for (s, b) in blocks.iter().enumerate() {
                for _ in 0..3 {
                    sums.push((s as u64 + 1, checksum::remote_with(consume.clone(), b)));
                }
            }
            let mut transfers = 0;
            let mut wrong = 0;
            for (seed, r) in &sums {
                let (sum, made_on, read_on) = rayish::get(r)?;
                let expect = (0..len as u64)
                    .map(|i| i.wrapping_mul(*seed) ^ seed)
                    .fold(0u64, |a, b| a.wrapping_add(b));
                if sum != expect {
                    wrong += 1;
                }
                if made_on != read_on {
                    transfers += 1;
                }
            }
            // A large put from the driver, read by a task.
            let big: Vec<u64> = (0..300_000).collect();
            let big_ref = rayish::put(&big)?;
            let big_sum = rayish::get(&sum_slice::remote(&big_ref))?;
            // References inside values: a task returns refs, another reads through them.
            let refs = refs_to_squares::remote(50u64);
            let through = rayish::get(&sum_refs::remote(&refs))?;
            let direct: u64 = rayish::get_all(&rayish::get(&refs)?)?.into_iter().sum();
            result(json!({
                "wrong": wrong, "cross_node_reads": transfers, "reads": sums.len(),
                "big_sum": big_sum, "big_expected": big.iter().sum::<u64>(),
                "nested_sum": through, "nested_direct": direct, "nested_expected": (0..50u64).map(|i| i * i).sum::<u64>(),
            }));
        }
        Scenario::Print { n } => {
            let refs: Vec<_> = (0..n).map(chatter::remote).collect();
            let pids: std::collections::BTreeSet<u32> =
                rayish::get_all(&refs)?.into_iter().collect();
            result(json!({"n": n, "processes": pids.len()}));
        }
        Scenario::State { n, go } => {
            let refs: Vec<_> = (0..n).map(where_am_i::remote).collect();
            let nodes: std::collections::BTreeSet<String> = rayish::get_all(&refs)?
                .into_iter()
                .map(|(_, node)| node)
                .collect();
            let failed = rayish::get(&refuse::remote(-7i64));
            let panicked = rayish::get(&explode::remote(3u64));
            let board = Board::remote_with(rayish::ActorOptions::new().name("state-board"));
            rayish::get(&board.post(plus_one::remote(1u64)))?;
            result(json!({
                "n": n,
                "nodes": nodes,
                "refused": failed.err().map(|e| e.to_string()),
                "panicked": panicked.err().map(|e| e.to_string()),
                "actor": board.id().to_string(),
            }));
            wait_for(&go);
        }
        Scenario::Follow => {
            // Short tasks first, so that the node sends each task behind another.
            let warm: Vec<_> = (0..500u64).map(plus_one::remote).collect();
            rayish::get_all(&warm)?;
            let board = Board::remote();
            rayish::get(&board.take())?;
            let before: Vec<_> = (0..50u64).map(plus_one::remote).collect();
            // Queued right behind `waiter`, so sent to its worker behind it; the
            // worker must give it back once `waiter` blocks, or neither ever ends.
            let waiter = await_posted::remote(board.clone());
            let posted = plus_one::remote(1000u64);
            let after: Vec<_> = (0..50u64).map(plus_one::remote).collect();
            rayish::get(&board.post(posted))?;
            let got = rayish::get_timeout(&waiter, Duration::from_secs(60))?;
            let rest = rayish::get_all(&before)?.len() + rayish::get_all(&after)?.len();
            result(json!({"waiter": got, "expected": 1001, "others": rest}));
        }
        Scenario::Nested { parents } => {
            let refs: Vec<_> = (0..parents).map(parent::remote).collect();
            let got = rayish::get_all(&refs)?;
            let expected: Vec<u64> = (0..parents)
                .map(|x| (0..3).map(|k| x * 10 + k + 1).sum())
                .collect();
            result(json!({"ok": got == expected, "got": got}));
        }
        Scenario::Fib { n } => {
            let start = Instant::now();
            let got = rayish::get(&fib::remote(n))?;
            let (mut a, mut b) = (0u64, 1u64);
            for _ in 0..n {
                (a, b) = (b, a + b);
            }
            result(json!({"got": got, "expected": a, "seconds": start.elapsed().as_secs_f64()}));
        }
        Scenario::Panic => {
            let p = rayish::get(&explode::remote(42u64))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            let f = rayish::get(&refuse::remote(-5i64))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            let ok = rayish::get(&refuse::remote(5i64))?;
            // A dependent of a failed task fails with the same error.
            let dep = rayish::get(&leaf::remote(explode::remote(7u64)))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            result(json!({"panic": p, "failed": f, "ok": ok, "dependent": dep}));
        }
        Scenario::Crash { dir } => {
            std::fs::create_dir_all(&dir)?;
            let marker = dir.join("crashed-once").to_string_lossy().into_owned();
            let once = rayish::get(&crash_once::remote(marker, 14u64)).map_err(|e| e.to_string());
            let always = rayish::get(&always_crash::remote_with(
                TaskOptions::new().max_retries(1),
            ))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
            result(json!({"once": once.ok(), "always": always}));
        }
        Scenario::KillWorker { dir } => {
            std::fs::create_dir_all(&dir)?;
            let d = dir.to_string_lossy().into_owned();
            let refs: Vec<_> = (0..8).map(|i| slow_pid::remote(d.clone(), i)).collect();
            // Wait until some workers are mid-task, then kill two of them.
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut killed = Vec::new();
            while killed.len() < 2 && Instant::now() < deadline {
                for entry in std::fs::read_dir(&dir)?.flatten() {
                    if let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() {
                        if killed.len() < 2 && !killed.contains(&pid) {
                            // SAFETY: kill(2) on a worker pid this job's task wrote.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                            killed.push(pid);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let got = rayish::get_all(&refs)?;
            let ok = got == (0..8).map(|i| i + 1000).collect::<Vec<u64>>();
            result(json!({"ok": ok, "killed": killed.len()}));
        }
        Scenario::HeadRestart { n, dir } => {
            let dir = dir.to_string_lossy().into_owned();
            let base = rayish::put(&1000u64)?;
            // Received before the head dies: never run again.
            let early: Vec<_> = (0..4u64)
                .map(|i| counted_add::remote(dir.clone(), format!("early{i}"), &base, i, 0u64))
                .collect();
            let early_values = rayish::get_all(&early)?;
            // Running or queued when it dies; the driver keeps only the chain's ends.
            let slow: Vec<_> = (0..n)
                .map(|i| counted_add::remote(dir.clone(), format!("slow{i}"), &base, i, 1500u64))
                .collect();
            let chain: Vec<_> = slow
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    counted_add::remote(dir.clone(), format!("chain{i}"), s, 1u64, 100u64)
                })
                .collect();
            drop(slow);
            println!("SUBMITTED");
            let chained = rayish::get_all(&chain)?;
            // After: a value received from the old head is an argument for the new.
            let after =
                counted_add::remote(dir.clone(), "after".to_string(), &early[0], 5u64, 0u64);
            let after = rayish::get(&after)?;
            let early_again = rayish::get_all(&early)?;
            let wrong = (0..n)
                .filter(|&i| chained[i as usize] != 1000 + i + 1)
                .count();
            result(json!({
                "early": early_values,
                "early_again": early_again,
                "chain_wrong": wrong,
                "after": after,
            }));
        }
        Scenario::NestedRestart { n, dir } => {
            let dir = dir.to_string_lossy().into_owned();
            let spot = TaskOptions::new().resource("spot", 1.0);
            let parent = fan_out::remote_with(spot, dir, n, 300u64);
            println!("SUBMITTED");
            let got = match rayish::get(&parent) {
                Ok(v) => json!(v),
                Err(e) => json!(format!("error: {e}")),
            };
            let expected: Vec<u64> = (0..n).map(|i| 1_000_000 + i).collect();
            result(json!({"values": got, "expected": expected}));
        }
        Scenario::Long { n, go } => {
            let len = 100_000;
            let blocks: Vec<_> = (1..=6).map(|s| make_block::remote(s, len)).collect();
            let made: Vec<String> = blocks
                .iter()
                .map(|b| rayish::get(b).map(|x| x.1))
                .collect::<Result<_, _>>()?;
            let first: Vec<_> = (0..n).map(|i| slow::remote(i, 50u64)).collect();
            println!("STAGE1 {}", serde_json::to_string(&made)?);
            let deadline = Instant::now() + Duration::from_secs(120);
            while !go.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let sums: Vec<_> = blocks.iter().map(checksum::remote).collect();
            let out = rayish::get_all(&first)?;
            let wrong = out
                .iter()
                .enumerate()
                .filter(|(i, (v, _))| *v != *i as u64 * 7)
                .count();
            let mut sum_wrong = 0;
            for (s, r) in sums.iter().enumerate() {
                let seed = s as u64 + 1;
                let expect = (0..len as u64)
                    .map(|i| i.wrapping_mul(seed) ^ seed)
                    .fold(0u64, |a, b| a.wrapping_add(b));
                if rayish::get(r)?.0 != expect {
                    sum_wrong += 1;
                }
            }
            let nodes: std::collections::BTreeSet<String> =
                out.iter().map(|x| x.1.clone()).collect();
            result(json!({"wrong": wrong, "sum_wrong": sum_wrong, "nodes": nodes.len()}));
        }
        Scenario::Spill { count, mib, go } => {
            let len = (mib << 20) as usize;
            let pattern = |i: u64| -> Vec<u8> {
                (0..len)
                    .map(|j| (j as u64).wrapping_mul(i * 2 + 1).wrapping_add(i) as u8)
                    .collect()
            };
            let refs: Vec<_> = (0..count)
                .map(|i| rayish::put(&serde_bytes::ByteBuf::from(pattern(i))))
                .collect::<Result<_, _>>()?;
            println!("PUT");
            wait_for(&go.with_extension("1"));
            let mut wrong = 0;
            for (i, r) in refs.iter().enumerate() {
                if rayish::get(r)?.into_vec() != pattern(i as u64) {
                    wrong += 1;
                }
            }
            drop(refs);
            println!("DROPPED");
            result(json!({"wrong": wrong, "bytes": count * (mib << 20)}));
            wait_for(&go.with_extension("2"));
        }
        Scenario::Free { go } => {
            let big: Vec<_> = (1..=20).map(|s| make_block::remote(s, 50_000)).collect();
            rayish::get_all(&big)?;
            let small: Vec<_> = (0..500u64)
                .map(|i| rayish::put(&i))
                .collect::<Result<_, _>>()?;
            let nested = refs_to_squares::remote(20u64);
            let inner = rayish::get(&nested)?;
            println!("HOLDING");
            wait_for(&go.with_extension("1"));
            drop((big, small, nested, inner));
            println!("DROPPED");
            wait_for(&go.with_extension("2"));
            result(json!({"ok": true}));
        }
        Scenario::Churn { n, go } => {
            let warm: Vec<_> = (0..2_000).map(where_am_i::remote).collect();
            rayish::get_all(&warm)?;
            drop(warm);
            println!("BASELINE");
            for round in 1..=2 {
                wait_for(&go.with_extension(round.to_string()));
                churn(n)?;
                println!("DONE {round}");
            }
            wait_for(&go.with_extension("3"));
            result(json!({"tasks": 2 * n, "objects": 2 * n}));
        }
        Scenario::Huge { mib, readers, go } => {
            let len = mib << 20;
            let produce = TaskOptions::new().resource("producer", 1.0);
            let consume = TaskOptions::new().resource("consumer", 1.0);
            let big = make_buf::remote_with(produce, len, 7u8);
            rayish::wait(std::slice::from_ref(&big), 1, None)?;
            println!("MADE");
            wait_for(&go.with_extension("1"));
            let sums: Vec<_> = (0..readers)
                .map(|_| buf_sum::remote_with(consume.clone(), &big))
                .collect();
            let got = rayish::get_all(&sums)?;
            let expected: u64 = pattern(len, 7).iter().map(|b| *b as u64).sum();
            let nodes: std::collections::BTreeSet<String> =
                got.iter().map(|g| g.2.clone()).collect();
            result(json!({
                "all_correct": got.iter().all(|g| g.0 == expected && g.1 == len),
                "reader_nodes": nodes.len(),
            }));
        }
        Scenario::StoreFull { mib } => {
            let kept = rayish::put(&serde_bytes::ByteBuf::from(pattern(4 << 20, 3)))?;
            let big = serde_bytes::ByteBuf::from(vec![5u8; mib << 20]);
            let driver = match rayish::put(&big) {
                Ok(_) => json!({"full": false, "text": "stored"}),
                Err(e) => json!({
                    "full": matches!(e, rayish::Error::ObjectStoreFull(_)),
                    "text": e.to_string(),
                }),
            };
            let (task_full, task_text) = rayish::get(&put_into_full_store::remote(mib))?;
            let back = rayish::get(&kept)?;
            result(json!({
                "driver": driver,
                "task": {"full": task_full, "text": task_text},
                "kept_intact": back.as_ref() == pattern(4 << 20, 3).as_slice(),
            }));
        }
        Scenario::Reuse { rounds } => {
            let len = 3 << 20;
            let (mut right, mut wrong, mut in_place) = (0u64, Vec::new(), 0u64);
            let mut check = |what: String, ok: bool| {
                if ok {
                    right += 1;
                } else {
                    wrong.push(what);
                }
            };
            for i in 0..rounds {
                let seed = (i * 7) as u8;
                // From the driver; read by a task every other round.
                let r = rayish::put(&Blob::from(pattern(len, seed)))?;
                if i % 2 == 0 {
                    let (ok, shared) = rayish::get(&blob_check::remote(&r, seed))?;
                    check(format!("round {i}: driver put read by a task"), ok);
                    in_place += u64::from(shared);
                }
                drop(r);
                // From a task: its result, and a put inside it.
                let made = rayish::get(&make_blob::remote(len, seed.wrapping_add(1)))?;
                check(
                    format!("round {i}: task result"),
                    made[..] == pattern(len, seed.wrapping_add(1))[..],
                );
                let inner = rayish::get(&put_blob::remote(len, seed.wrapping_add(2)))?;
                let value = rayish::get(&inner)?;
                check(
                    format!("round {i}: put in a task"),
                    value[..] == pattern(len, seed.wrapping_add(2))[..],
                );
            }
            result(json!({"right": right, "wrong": wrong, "read_in_place": in_place}));
        }
        Scenario::Ticks { until, pause_ms } => {
            let mut wrong = 0u64;
            let mut i = 0u64;
            while !until.exists() {
                if rayish::get(&plus_one::remote(i))? != i + 1 {
                    wrong += 1;
                }
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis();
                println!("TICK {ms}");
                i += 1;
                std::thread::sleep(Duration::from_millis(pause_ms));
            }
            result(json!({"ticks": i, "wrong": wrong}));
        }
        Scenario::HeadDies => {
            let r = slow::remote(0u64, 120_000u64);
            println!("WAITING");
            let start = Instant::now();
            let err = rayish::get(&r).err().map(|e| e.to_string());
            result(json!({"error": err, "seconds": start.elapsed().as_secs_f64()}));
        }
        Scenario::Special => {
            let opts = TaskOptions::new().num_cpus(0.5).resource("special", 1.0);
            let refs: Vec<_> = (0..10u64)
                .map(|i| where_am_i::remote_with(opts.clone(), i))
                .collect();
            let nodes: std::collections::BTreeSet<String> =
                rayish::get_all(&refs)?.into_iter().map(|r| r.1).collect();
            result(json!({"nodes": nodes}));
        }
        Scenario::Large { mb } => {
            let len = mb << 20;
            let data = pattern(len, 7);
            let expect: u64 = data.iter().map(|b| *b as u64).sum();
            // A value argument this large is stored as an object, not put in the spec.
            let by_value = rayish::get(&byte_sum::remote(data))?;
            // A large result stays on its node; tasks elsewhere and the driver pull it.
            let made = make_bytes::remote(len, 7u8);
            let reads: Vec<_> = (0..4).map(|_| byte_sum::remote(&made)).collect();
            let reads = rayish::get_all(&reads)?;
            let pulled = rayish::get(&made)?;
            let nodes: std::collections::BTreeSet<String> =
                reads.iter().map(|r| r.2.clone()).collect();
            result(json!({
                "expect": expect, "by_value": by_value.0, "by_value_len": by_value.1,
                "reads_ok": reads.iter().all(|r| r.0 == expect && r.1 == len),
                "read_nodes": nodes.len(), "pulled_ok": pulled == pattern(len, 7),
            }));
        }
        Scenario::Infeasible => {
            let r = never_runs::remote_with(TaskOptions::new().num_cpus(64.0));
            let err = rayish::get_timeout(&r, Duration::from_secs(4))
                .err()
                .map(|e| e.to_string());
            result(json!({"error": err}));
        }
    }
    Ok(())
}
