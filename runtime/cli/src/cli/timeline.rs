//! `rayish timeline`: Ray's `ray timeline`, as a client of the head's
//! `/api/v0/tasks/timeline`: writes the tasks' Chrome trace to a file for
//! `chrome://tracing` or Perfetto.

use super::state::{Api, ApiArgs};
use anyhow::{Context, Result};
use clap::Args;
use std::io::Read;
use std::path::PathBuf;

/// Arguments of `rayish timeline`.
#[derive(Args, Debug)]
pub struct TimelineArgs {
    /// Where to write the trace (default: rayish-timeline-<unix time>.json here).
    #[arg(long, short = 'o', alias = "filename")]
    output: Option<PathBuf>,
    /// Only this job's tasks.
    #[arg(long)]
    job_id: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

/// Runs `rayish timeline`.
pub fn timeline(args: TimelineArgs) -> Result<()> {
    let api = Api::new(&args.api)?;
    let mut query = Vec::new();
    if let Some(job) = args.job_id {
        query.push(("job_id", job));
    }
    let mut trace = String::new();
    api.stream("/api/v0/tasks/timeline", &query)?
        .read_to_string(&mut trace)
        .context("reading the trace")?;
    let events: serde_json::Value =
        serde_json::from_str(&trace).context("the trace is not JSON")?;
    let output = args.output.unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("rayish-timeline-{secs}.json"))
    });
    std::fs::write(&output, trace).with_context(|| format!("writing {}", output.display()))?;
    let spans = events
        .as_array()
        .map_or(0, |e| e.iter().filter(|e| e["ph"] == "X").count());
    println!(
        "Trace file written to {} ({spans} task spans); open it in chrome://tracing or \
         https://ui.perfetto.dev",
        output.display()
    );
    Ok(())
}
