//! `rayish logs`: Ray's `ray logs`, as a client of the head's log API
//! (`/api/v0/logs` on the dashboard port): lists a node's log files, or prints one
//! (its last `--tail` lines) and with `--follow` keeps printing what is appended.

use super::state::{Api, ApiArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;
use std::io::{Read, Write};

/// Arguments of `rayish logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// A glob over file names (`worker-*.out`); one match is printed, several listed.
    glob: Option<String>,
    /// The node whose logs to read (default: the head's).
    #[arg(long, conflicts_with = "node_ip")]
    node_id: Option<String>,
    /// The node, by IP.
    #[arg(long)]
    node_ip: Option<String>,
    /// The worker log of this process (on --node-id's node).
    #[arg(long, conflicts_with_all = ["glob", "actor_id", "task_id"])]
    pid: Option<u32>,
    /// The worker log of this actor.
    #[arg(long, conflicts_with_all = ["glob", "task_id"])]
    actor_id: Option<String>,
    /// The worker log of the worker that ran this task.
    #[arg(long, conflicts_with = "glob")]
    task_id: Option<String>,
    /// With --pid, --actor-id or --task-id: the worker's stderr rather than stdout.
    #[arg(long)]
    err: bool,
    /// Keep printing what is appended, until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Print the last this many lines (-1: the whole file).
    #[arg(long, default_value_t = 1000, allow_negative_numbers = true)]
    tail: i64,
    /// Seconds between looks for new lines with --follow.
    #[arg(long)]
    interval: Option<f64>,
    #[command(flatten)]
    api: ApiArgs,
}

/// The head node's id, from the state API.
fn head_node(api: &Api) -> Result<String> {
    let nodes = api.get("/api/v0/nodes", &[("detail", "true".into())])?;
    nodes["result"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|n| n["is_head_node"] == true && n["state"] == "ALIVE")
        })
        .and_then(|n| n["node_id"].as_str())
        .map(str::to_string)
        .context("the cluster has no live head node")
}

/// Runs `rayish logs`.
pub fn logs(args: LogsArgs) -> Result<()> {
    let api = Api::new(&args.api)?;
    let mut node: Vec<(&str, String)> = match (&args.node_id, &args.node_ip) {
        (Some(id), _) => vec![("node_id", id.clone())],
        (None, Some(ip)) => vec![("node_ip", ip.clone())],
        (None, None) if args.actor_id.is_some() || args.task_id.is_some() => Vec::new(),
        (None, None) => vec![("node_id", head_node(&api)?)],
    };
    let mut query = node.clone();
    if let Some(pid) = args.pid {
        query.push(("pid", pid.to_string()));
    } else if let Some(actor) = &args.actor_id {
        query.push(("actor_id", actor.clone()));
    } else if let Some(task) = &args.task_id {
        query.push(("task_id", task.clone()));
    } else {
        let glob = args.glob.clone().unwrap_or_else(|| "*".into());
        node.push(("glob", glob));
        let listed = api.get("/api/v0/logs", &node)?;
        let files: Vec<&str> = listed
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if files.len() != 1 {
            print_listing(&listed);
            return Ok(());
        }
        query.push(("filename", files[0].to_string()));
    }
    if args.err {
        query.push(("suffix", "err".into()));
    }
    query.push(("lines", args.tail.to_string()));
    if let Some(i) = args.interval {
        query.push(("interval", i.to_string()));
    }
    let media = if args.follow { "stream" } else { "file" };
    let mut body = api.stream(&format!("/api/v0/logs/{media}"), &query)?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("the log stream broke off: {e}"),
        };
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
    Ok(())
}

/// The files of a listing, by Ray's category.
fn print_listing(listed: &Value) {
    let Some(categories) = listed.as_object() else {
        return;
    };
    if categories.is_empty() {
        println!("(no log files match)");
    }
    for (category, files) in categories {
        println!("{category}:");
        for f in files.as_array().into_iter().flatten() {
            println!("  - {}", f.as_str().unwrap_or_default());
        }
    }
}
