//! Adding handlers of your own to the faces chain, without touching the others.
//!
//! `MinSize` skips images whose shorter side is below `--min-side` pixels (inserted
//! after decode). `AbortOn` kills its worker process on images whose file name
//! contains a marker, standing in for a crash inside dlib: with `--abort-once-dir` it
//! crashes only on the first try (the retried task then succeeds), otherwise on every
//! try (the image is reported failed, the rest of the run goes on).
//!
//!   cargo run --release --example faces_custom -- DIR --min-side 300
//!
//! Prints one line `RESULT {json}` with each image's outcome and the aggregate.

use clap::Parser;
use rayish_faces::{Chain, FaceJob, Handler, RunOptions, Settings, Stage, Status, Stop};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    /// Directory of photos, list file or s3:// prefix.
    input: String,
    /// The head, HOST:PORT; omit for local mode.
    #[arg(long)]
    address: Option<String>,
    /// Cluster token.
    #[arg(long)]
    token: Option<String>,
    /// Skip images smaller than this on their shorter side.
    #[arg(long, default_value_t = 0)]
    min_side: u32,
    /// Abort the worker on images whose name contains this.
    #[arg(long)]
    abort_on: Option<String>,
    /// With --abort-on: abort only once per image, remembering it in this directory.
    #[arg(long)]
    abort_once_dir: Option<PathBuf>,
    /// Images per task.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// One task per stage.
    #[arg(long)]
    task_per_stage: bool,
}

/// Skips small images.
#[derive(Serialize, Deserialize)]
struct MinSize {
    min_side: u32,
}

impl Handler for MinSize {
    fn handle(&self, job: &mut FaceJob) -> Result<(), Stop> {
        let Some(img) = &job.image else {
            return Err(Stop::Failed("min_size needs a decoded image".into()));
        };
        if img.width.min(img.height) < self.min_side {
            return Err(Stop::Skipped(format!(
                "{}x{} is smaller than {} pixels on a side",
                img.width, img.height, self.min_side
            )));
        }
        Ok(())
    }
}
rayish_faces::register_handler!("min_size", MinSize);

/// Kills the worker process on marked images.
#[derive(Serialize, Deserialize)]
struct AbortOn {
    marker: String,
    once_dir: Option<PathBuf>,
}

impl Handler for AbortOn {
    fn handle(&self, job: &mut FaceJob) -> Result<(), Stop> {
        let name = job.path.rsplit('/').next().unwrap_or_default().to_string();
        if !name.contains(&self.marker) {
            return Ok(());
        }
        if let Some(dir) = &self.once_dir {
            let flag = dir.join(&name);
            if flag.exists() {
                return Ok(());
            }
            let _ = std::fs::write(&flag, b"crashed once");
        }
        std::process::abort();
    }
}
rayish_faces::register_handler!("abort_on", AbortOn);

fn main() -> anyhow::Result<()> {
    // The encoder's matrix products run on OpenBLAS's best kernels for this CPU.
    if let Err(e) = rayish_faces::blas::use_native_kernels() {
        eprintln!("faces_custom: keeping OpenBLAS's own kernels: {e}");
    }
    rayish::serve_if_worker();
    let args = Args::parse();
    rayish::init(
        rayish::Config::default()
            .address(args.address.clone())
            .token(args.token.clone()),
    )?;
    let settings = Settings::default();
    let mut chain = Chain::standard(&settings);
    if args.min_side > 0 {
        chain = chain.insert_before(
            "detect",
            Stage::new(
                "min_size",
                &MinSize {
                    min_side: args.min_side,
                },
            ),
        );
    }
    if let Some(marker) = args.abort_on.clone() {
        let handler = AbortOn {
            marker,
            once_dir: args.abort_once_dir.clone(),
        };
        chain = chain.insert_before("detect", Stage::new("abort_on", &handler));
    }
    let read_timeout = std::time::Duration::from_secs(60);
    let inputs = rayish_faces::inputs::list_inputs(&args.input, read_timeout)?;
    let options = RunOptions {
        batch: args.batch,
        task_per_stage: args.task_per_stage,
        ..Default::default()
    };
    let run = rayish_faces::run_on_runtime(&chain, &inputs, &options, &mut ())?;
    let images: Vec<_> = run
        .jobs
        .iter()
        .map(rayish_faces::output::job_record)
        .collect();
    let failed: Vec<_> = run
        .jobs
        .iter()
        .filter(|j| matches!(j.status, Status::Failed(_)))
        .map(|j| j.path.clone())
        .collect();
    println!(
        "RESULT {}",
        serde_json::json!({ "images": images, "failed": failed, "faces": run.aggregate.faces,
                            "average": run.aggregate.mean() })
    );
    Ok(())
}
