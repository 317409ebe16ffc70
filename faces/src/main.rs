//! `rayish-faces`: face encodings of a folder of photos, on a rayish cluster or locally.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rayish_faces::{
    inputs, output, Chain, DetectorKind, LandmarkModel, Progress, RunOptions, Settings,
};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "rayish-faces",
    version,
    about = "dlib face encodings of photos, identical to Python face_recognition 1.3.0"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Encode every face in a directory of photos (or a file listing photo paths).
    Encode(EncodeArgs),
}

#[derive(clap::Args)]
struct EncodeArgs {
    /// A directory (searched recursively for image files) or a file with one path a line.
    input: PathBuf,
    /// The cluster's head, HOST:PORT, or "auto"; omit for a local cluster in this process.
    #[arg(long, env = "RAYISH_ADDRESS")]
    address: Option<String>,
    /// The cluster token (or RAYISH_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// Where to write average.json, encodings.jsonl and encodings.npy.
    #[arg(long, default_value = "faces-out")]
    out: PathBuf,
    /// face_recognition's number_of_times_to_upsample.
    #[arg(long, default_value_t = 1)]
    upsample: u32,
    /// Landmark model: small (5 points) or large (68 points).
    #[arg(long, value_enum, default_value = "small")]
    model: LandmarkModel,
    /// Face detector: hog or cnn.
    #[arg(long, value_enum, default_value = "hog")]
    detector: DetectorKind,
    /// face_recognition's num_jitters.
    #[arg(long, default_value_t = 1)]
    jitters: u32,
    /// Images per task.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Batches in flight at once (bounds the driver's memory).
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// One remote task per stage, instead of one per batch for every stage after read
    /// (same output; slower, as the decoded pixels then go through the object store
    /// between stages).
    #[arg(long)]
    task_per_stage: bool,
    /// The model directory on every node (default: $RAYISH_FACE_MODELS, else
    /// ~/.cache/rayish/face_models, where scripts/setup-faces.sh puts them).
    #[arg(long)]
    models: Option<PathBuf>,
    /// Refuse images with more pixels than this (PIL's decompression-bomb limit).
    #[arg(long, default_value_t = rayish_faces::settings::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// CPUs of the local cluster (local mode only; default: all cores).
    #[arg(long)]
    cpus: Option<f64>,
    /// Run the chain in a plain loop on this many threads, without the runtime.
    #[arg(long, value_name = "THREADS")]
    plain: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    if let Err(e) = rayish_faces::blas::use_native_kernels() {
        eprintln!("rayish-faces: could not restart with OpenBLAS's faster kernels: {e}");
    }
    rayish::serve_if_worker();
    let cli = Cli::parse();
    match cli.command {
        Command::Encode(args) => encode(args),
    }
}

fn encode(args: EncodeArgs) -> anyhow::Result<()> {
    if args.address.is_some() && args.cpus.is_some() {
        bail!("--cpus sets the local cluster's size; it cannot be used with --address");
    }
    let settings = Settings {
        upsample: args.upsample,
        detector: args.detector,
        landmarks: args.model,
        jitters: args.jitters,
        max_pixels: args.max_pixels,
        models_dir: args.models.clone(),
    };
    if args.address.is_none() {
        // Local mode: the models must be here. On a cluster they must be on the nodes,
        // and a node without them fails each image with this same message.
        check_models(&settings)?;
    }
    let paths = inputs::list_images(&args.input)
        .with_context(|| format!("listing {}", args.input.display()))?;
    if paths.is_empty() {
        bail!("no images found in {}", args.input.display());
    }
    let chain = Chain::standard(&settings);
    let bar = progress_bar(paths.len() as u64, args.quiet);

    let run = if let Some(threads) = args.plain {
        let faces = std::sync::atomic::AtomicU64::new(0);
        rayish_faces::run_plain(&chain, &paths, threads, |job| {
            let n = faces.fetch_add(job.faces.len() as u64, std::sync::atomic::Ordering::Relaxed);
            bar.set_message(format!("{} faces", n + job.faces.len() as u64));
            bar.inc(1);
        })?
    } else {
        let mut config = rayish::Config::default()
            .address(args.address.clone())
            .token(args.token.clone());
        if let Some(cpus) = args.cpus {
            config = config.num_cpus(cpus);
        }
        rayish::init(config).context("starting the runtime")?;
        let options = RunOptions {
            batch: args.batch,
            window: args.window,
            task_per_stage: args.task_per_stage,
        };
        rayish_faces::run_on_runtime(&chain, &paths, &options, |p: &Progress| {
            bar.set_position(p.done);
            bar.set_message(format!("{} faces, {} failed", p.faces, p.failed));
        })?
    };
    bar.finish_and_clear();

    let seconds = run.elapsed.as_secs_f64();
    output::write_all(&args.out, &run.jobs, &run.aggregate, &settings, seconds)
        .with_context(|| format!("writing results to {}", args.out.display()))?;
    for job in &run.jobs {
        if let rayish_faces::Status::Failed(reason) = &job.status {
            eprintln!("failed: {}: {reason}", job.path);
        }
    }
    let agg = &run.aggregate;
    match agg.mean() {
        Some(mean) => println!(
            "average face vector ({} faces): {}",
            agg.faces,
            format_vector(&mean)
        ),
        None => println!("average face vector: none (no face found)"),
    }
    println!(
        "images: {}, faces: {}, no face: {}, failed: {}, seconds: {:.2}, images/s: {:.2}",
        agg.images,
        agg.faces,
        agg.no_face,
        agg.failed,
        seconds,
        agg.images as f64 / seconds.max(1e-9)
    );
    println!(
        "wrote {}/{{average.json,encodings.jsonl,encodings.npy}}",
        args.out.display()
    );
    Ok(())
}

/// Fails early, with the fix, when a model this run needs is missing here.
fn check_models(settings: &Settings) -> anyhow::Result<()> {
    use rayish_faces::models::*;
    let dir = models_dir(settings.models_dir.as_deref());
    model_path(&dir, ENCODER_FILE)?;
    model_path(&dir, landmarks_file(settings.landmarks))?;
    if settings.detector == DetectorKind::Cnn {
        model_path(&dir, CNN_DETECTOR_FILE)?;
    }
    Ok(())
}

fn progress_bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images, {msg}, {per_sec}, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn format_vector(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:.6}")).collect();
    format!("[{}]", parts.join(", "))
}
