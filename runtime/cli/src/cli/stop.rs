//! `rayish stop`.

use anyhow::Result;
use clap::Args;
use rayish_core::session::{registered_processes, temp_root, unregister_process};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Arguments of `rayish stop`.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// Kill with SIGKILL at once instead of asking politely.
    #[arg(long)]
    force: bool,
    /// Root for sessions (default /tmp/rayish or $RAYISH_TEMP_DIR).
    #[arg(long)]
    temp_dir: Option<PathBuf>,
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid from this user's registry whose start time matched
    // the record just before (the same process, not a reused pid).
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Runs `rayish stop`.
pub fn run(args: StopArgs) -> Result<()> {
    let root = args.temp_dir.clone().unwrap_or_else(temp_root);
    let procs = registered_processes(&root);
    let mut stopped = 0;
    let mut waiting = Vec::new();
    for p in procs {
        if !p.is_running() {
            unregister_process(&root, p.pid);
            continue;
        }
        signal(
            p.pid,
            if args.force {
                libc::SIGKILL
            } else {
                libc::SIGTERM
            },
        );
        waiting.push(p);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in waiting {
        while p.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if p.is_running() {
            signal(p.pid, libc::SIGKILL);
        }
        unregister_process(&root, p.pid);
        println!("stopped {} (pid {}, {})", p.role, p.pid, p.address);
        stopped += 1;
    }
    // Shared-memory directories of nodes that are gone (a SIGKILLed node leaves its
    // own behind).
    rayish_core::object_store::shm::remove_stale_dirs();
    println!("Stopped {stopped} rayish process(es).");
    Ok(())
}
