//! Scenarios for the actor integration tests (tests/actors.rs); each prints one
//! `RESULT {json}` line that the test checks. Runs in local mode too:
//!     cargo run --release --bin actor_driver -- basics

use clap::{Parser, Subcommand};
use rayish::{ActorOptions, ObjectRef};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A log that remembers the order calls arrived in.
pub struct Journal {
    entries: Vec<(u64, u64)>,
    total: u64,
}

#[rayish::actor]
impl Journal {
    pub fn new(start: u64) -> Self {
        Self {
            entries: Vec::new(),
            total: start,
        }
    }

    /// Appends `(caller, i)`; returns how many entries there are.
    pub fn push(&mut self, caller: u64, i: u64) -> usize {
        self.entries.push((caller, i));
        self.entries.len()
    }

    /// [`Self::push`] after a pause of `ms`.
    pub fn push_after(&mut self, ms: u64, caller: u64, i: u64) -> usize {
        std::thread::sleep(Duration::from_millis(ms));
        self.push(caller, i)
    }

    pub fn add(&mut self, n: u64) -> u64 {
        self.total += n;
        self.total
    }

    pub fn entries(&self) -> Vec<(u64, u64)> {
        self.entries.clone()
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Fails for odd numbers; the actor lives on.
    pub fn even_only(&self, n: u64) -> Result<u64, String> {
        if n % 2 == 1 {
            Err(format!("{n} is odd"))
        } else {
            Ok(n)
        }
    }

    pub fn explode(&mut self) -> u64 {
        panic!("actor method exploded");
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    pub fn node(&self) -> String {
        rayish::current_node_id().unwrap_or_default()
    }

    pub fn sleep_ms(&self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }

    /// Sums a large argument passed by reference.
    pub fn byte_sum(&self, data: Vec<u8>) -> u64 {
        data.iter().map(|b| *b as u64).sum()
    }
}

/// An actor whose constructor fails.
pub struct Broken;

#[rayish::actor]
impl Broken {
    pub fn new(why: String) -> Result<Self, String> {
        Err(why)
    }

    pub fn hello(&self) -> u64 {
        1
    }
}

/// A caller: makes `n` calls through the handle it was given, in order.
#[rayish::remote]
fn call_in_order(journal: JournalHandle, caller: u64, n: u64) -> rayish::Result<u64> {
    let refs: Vec<ObjectRef<usize>> = (0..n).map(|i| journal.push(caller, i)).collect();
    rayish::get_all(&refs)?;
    Ok(n)
}

/// A handle arriving inside a value (a Vec of handles), used from a task.
#[rayish::remote]
fn add_through_all(journals: Vec<JournalHandle>, n: u64) -> rayish::Result<Vec<u64>> {
    let refs: Vec<_> = journals.iter().map(|j| j.add(n)).collect();
    rayish::get_all(&refs)
}

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Ordered calls from concurrent callers, handles passed around, errors, panics,
    /// reference arguments, a custom resource.
    Basics {
        #[arg(long, default_value_t = 4)]
        callers: u64,
        #[arg(long, default_value_t = 50)]
        calls: u64,
    },
    /// Restarts after SIGKILL until `max_restarts` are used, then `ActorDied`.
    Restart {
        #[arg(long, default_value_t = 1)]
        max_restarts: i32,
    },
    /// Creates a named actor, adds to it, prints RESULT, then holds on until `go` exists.
    Named {
        #[arg(long)]
        name: String,
        #[arg(long)]
        detached: bool,
        #[arg(long)]
        go: Option<PathBuf>,
        /// Its `max_restarts`.
        #[arg(long, default_value_t = 0)]
        max_restarts: i32,
        /// A custom resource it needs one of (to place it on a node that has it).
        #[arg(long)]
        resource: Option<String>,
    },
    /// Finds a named actor and adds to it; with `--kill`, kills it afterwards.
    Lookup {
        #[arg(long)]
        name: String,
        #[arg(long)]
        kill: bool,
    },
    /// `kill`, a failing constructor, pending calls of a killed actor, dropped handles.
    Kill,
    /// An actor that holds a custom resource only one node has.
    Placed,
    /// An actor needing resource `spot`, restartable; prints `NODE <id>`, waits for
    /// `go` (the test kills that node, or restarts the head, meanwhile), then calls it
    /// again; with `--name`, it is named so and also looked up by name after `go`.
    Survive {
        #[arg(long)]
        go: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    /// An actor needing resource `spot` is sent `calls` slow calls (prints `SENT`),
    /// then, once `go` exists (the test kills the head meanwhile, and starts it
    /// again after), `calls` more: every call's count, in order, and the journal.
    InFlight {
        #[arg(long)]
        go: PathBuf,
        #[arg(long, default_value_t = 30)]
        calls: u64,
    },
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) on the pid of an actor process this test made; a stale pid is a no-op.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

fn alive(pid: u32) -> bool {
    // A killed process may stay a zombie until reaped: check its state too.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

fn error_text<T: std::fmt::Debug>(r: rayish::Result<T>) -> String {
    match r {
        Ok(v) => format!("ok: {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn main() -> anyhow::Result<()> {
    rayish::serve_if_worker();
    let args = Args::parse();
    rayish::init(rayish::Config::default())?;
    let t0 = Instant::now();
    let result = match args.scenario {
        Scenario::Basics { callers, calls } => {
            let journal = Journal::remote(10);
            rayish::get(&journal.ready())?;
            // The driver's own calls run in order.
            let adds: Vec<_> = (1..=5).map(|n| journal.add(n)).collect();
            let totals = rayish::get_all(&adds)?;
            // Callers in tasks, each with its own clone of the handle.
            let tasks: Vec<_> = (0..callers)
                .map(|c| call_in_order::remote(journal.clone(), c, calls))
                .collect();
            rayish::get_all(&tasks)?;
            let entries = rayish::get(&journal.entries())?;
            let mut per_caller: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            for (c, i) in &entries {
                per_caller.entry(*c).or_default().push(*i);
            }
            let in_order = per_caller.values().all(|v| v.iter().copied().eq(0..calls));
            // Handles inside a value, a second actor, a put reference as argument.
            let other = Journal::remote(100);
            let sums = rayish::get(&add_through_all::remote(
                vec![journal.clone(), other.clone()],
                1000,
            ))?;
            let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            let expected: u64 = data.iter().map(|b| *b as u64).sum();
            let data_ref = rayish::put(&data)?;
            let byte_sum = rayish::get(&journal.byte_sum(&data_ref))?;
            // Errors: an Err return and a panic fail the call, not the actor.
            let odd = error_text(rayish::get(&journal.even_only(3)));
            let even = rayish::get(&journal.even_only(4))?;
            let panic = error_text(rayish::get(&journal.explode()));
            let after_panic = rayish::get(&journal.total())?;
            let pid = rayish::get(&journal.pid())?;
            json!({
                "totals": totals,
                "entries": entries.len(),
                "in_order": in_order,
                "callers_seen": per_caller.len(),
                "sums": sums,
                "byte_sum_ok": byte_sum == expected,
                "odd": odd,
                "even": even,
                "panic": panic,
                "after_panic": after_panic,
                "pid": pid,
            })
        }
        Scenario::Restart { max_restarts } => {
            let j = Journal::remote_with(
                ActorOptions::new()
                    .max_restarts(max_restarts)
                    .max_task_retries(-1),
                0,
            );
            let mut pids = vec![rayish::get(&j.pid())?];
            rayish::get(&j.add(5))?;
            let mut totals_after_restart = Vec::new();
            for _ in 0..max_restarts {
                kill9(pids[pids.len() - 1]);
                // With retries, calls made meanwhile wait for the new process.
                let pid = rayish::get_timeout(&j.pid(), Duration::from_secs(60))?;
                pids.push(pid);
                totals_after_restart.push(rayish::get(&j.total())?);
                rayish::get(&j.add(5))?;
            }
            // Pending calls when the last process dies: none may hang.
            let pending: Vec<_> = (0..10).map(|_| j.sleep_ms(200)).collect();
            std::thread::sleep(Duration::from_millis(300));
            kill9(pids[pids.len() - 1]);
            let mut outcomes = Vec::new();
            for r in &pending {
                outcomes.push(error_text(rayish::get_timeout(r, Duration::from_secs(60))));
            }
            let after = error_text(rayish::get_timeout(&j.total(), Duration::from_secs(60)));
            json!({
                "pids": pids,
                "totals_after_restart": totals_after_restart,
                "pending": outcomes,
                "after": after,
            })
        }
        Scenario::Named {
            name,
            detached,
            go,
            max_restarts,
            resource,
        } => {
            let mut opts = ActorOptions::new().name(&name).max_restarts(max_restarts);
            if detached {
                opts = opts.detached();
            }
            if let Some(resource) = &resource {
                opts = opts.resource(resource, 1.0);
            }
            let j = Journal::remote_with(opts.clone(), 0);
            let total = rayish::get(&j.add(5))?;
            let pid = rayish::get(&j.pid())?;
            // A second actor under a name in use is born dead, saying why.
            let twin = Journal::remote_with(opts, 0);
            let twin = error_text(rayish::get_timeout(&twin.ready(), Duration::from_secs(60)));
            println!(
                "RESULT {}",
                json!({"total": total, "pid": pid, "twin": twin})
            );
            use std::io::Write;
            std::io::stdout().flush()?;
            if let Some(go) = go {
                let deadline = Instant::now() + Duration::from_secs(120);
                while !go.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            return Ok(());
        }
        Scenario::Lookup { name, kill } => match rayish::get_actor::<Journal>(&name) {
            Ok(j) => {
                let total = rayish::get(&j.add(1))?;
                let pid = rayish::get(&j.pid())?;
                if kill {
                    j.kill()?;
                }
                json!({"found": true, "total": total, "pid": pid})
            }
            Err(e) => json!({"found": false, "error": e.to_string()}),
        },
        Scenario::Kill => {
            let j = Journal::remote(1);
            let pid = rayish::get(&j.pid())?;
            let pending: Vec<_> = (0..5).map(|_| j.sleep_ms(300)).collect();
            std::thread::sleep(Duration::from_millis(100));
            j.kill()?;
            let mut outcomes = Vec::new();
            for r in &pending {
                outcomes.push(error_text(rayish::get_timeout(r, Duration::from_secs(60))));
            }
            let after_kill = error_text(rayish::get_timeout(&j.total(), Duration::from_secs(60)));
            let deadline = Instant::now() + Duration::from_secs(30);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let killed_process_gone = !alive(pid);
            let broken = Broken::remote("no good reason".to_string());
            let ready = error_text(rayish::get_timeout(
                &broken.ready(),
                Duration::from_secs(60),
            ));
            let broken_call = error_text(rayish::get_timeout(
                &broken.hello(),
                Duration::from_secs(60),
            ));
            // Dropping every handle ends the actor's process.
            let scoped = Journal::remote(0);
            let scoped_pid = rayish::get(&scoped.pid())?;
            drop(scoped);
            let deadline = Instant::now() + Duration::from_secs(30);
            while alive(scoped_pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            json!({
                "pending": outcomes,
                "after_kill": after_kill,
                "killed_process_gone": killed_process_gone,
                "broken_ready": ready,
                "broken_call": broken_call,
                "dropped_process_gone": !alive(scoped_pid),
            })
        }
        Scenario::Survive { go, name } => {
            let mut opts = ActorOptions::new()
                .resource("spot", 1.0)
                .max_restarts(1)
                .max_task_retries(-1);
            if let Some(name) = &name {
                opts = opts.name(name);
            }
            let j = Journal::remote_with(opts, 0);
            rayish::get(&j.add(5))?;
            let first = rayish::get(&j.node())?;
            println!("NODE {first}");
            use std::io::Write;
            std::io::stdout().flush()?;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !go.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let second = rayish::get_timeout(&j.node(), Duration::from_secs(90))?;
            let total = rayish::get(&j.total())?;
            // Its handle object is still ready (after a head restart too).
            let ready = error_text(rayish::get_timeout(&j.ready(), Duration::from_secs(30)));
            // Looked up by name, it is the same actor, with the same count.
            let by_name = match &name {
                Some(name) => {
                    let found = rayish::get_actor::<Journal>(name)?;
                    json!(rayish::get(&found.total())?)
                }
                None => json!(null),
            };
            json!({"first": first, "second": second, "total_after": total, "by_name": by_name, "ready": ready})
        }
        Scenario::InFlight { go, calls } => {
            let j = Journal::remote_with(ActorOptions::new().resource("spot", 1.0), 0);
            let pid = rayish::get(&j.pid())?;
            let mut sent: Vec<_> = (0..calls).map(|i| j.push_after(100, 0, i)).collect();
            println!("SENT");
            use std::io::Write;
            std::io::stdout().flush()?;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !go.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Made while the head is away.
            sent.extend((calls..2 * calls).map(|i| j.push_after(0, 0, i)));
            let counts: Vec<String> = sent
                .iter()
                .map(|r| match rayish::get_timeout(r, Duration::from_secs(120)) {
                    Ok(n) => n.to_string(),
                    Err(e) => format!("error: {e}"),
                })
                .collect();
            let order: Vec<u64> = rayish::get(&j.entries())?
                .into_iter()
                .map(|(_, i)| i)
                .collect();
            let same_process = rayish::get(&j.pid())? == pid;
            json!({"counts": counts, "order": order, "same_process": same_process})
        }
        Scenario::Placed => {
            let j = Journal::remote_with(ActorOptions::new().resource("special", 1.0), 0);
            let node = rayish::get(&j.node())?;
            // A second actor wanting the same single unit waits until the first dies.
            let k = Journal::remote_with(ActorOptions::new().resource("special", 1.0), 0);
            let waiting = rayish::get_timeout(&k.ready(), Duration::from_secs(2)).is_err();
            j.kill()?;
            let k_node = rayish::get_timeout(&k.node(), Duration::from_secs(60))?;
            json!({"node": node, "second_waited": waiting, "second_node": k_node})
        }
    };
    let mut result = result;
    result["seconds"] = json!(t0.elapsed().as_secs_f64());
    println!("RESULT {result}");
    Ok(())
}
