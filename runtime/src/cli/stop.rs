//! `rayish stop`.

use anyhow::Result;
use clap::Args;
use rayish::session::{registered_processes, temp_root, unregister_process};
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

fn is_rayish(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("rayish"))
        .unwrap_or(false)
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid read from our own registry and checked to be rayish.
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
        if !is_rayish(p.pid) {
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
        while is_rayish(p.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_rayish(p.pid) {
            signal(p.pid, libc::SIGKILL);
        }
        unregister_process(&root, p.pid);
        println!("stopped {} (pid {}, {})", p.role, p.pid, p.address);
        stopped += 1;
    }
    println!("Stopped {stopped} rayish process(es).");
    Ok(())
}
