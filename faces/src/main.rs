//! `rayish-faces`: face encodings of a folder of photos, on a rayish cluster or locally.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rayish_faces::journal::{InputKey, Journal};
use rayish_faces::pipeline::{ReadOn, RunError};
use rayish_faces::{
    inputs, output, Chain, DetectorKind, FaceJob, LandmarkModel, Progress, RunObserver, RunOptions,
    Settings,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
    /// A directory (searched recursively for image files), a file with one path or
    /// s3:// URL a line, or s3://BUCKET/PREFIX (every image object under it; AWS
    /// credentials, region and AWS_ENDPOINT_URL from the environment).
    input: String,
    /// The cluster's head, HOST:PORT, or "auto"; omit for a local cluster in this process.
    #[arg(long, env = "RAYISH_ADDRESS")]
    address: Option<String>,
    /// The cluster token (or RAYISH_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// Where to write average.json, encodings.jsonl and encodings.npy, and the
    /// journal of finished images a re-run resumes from.
    #[arg(long, default_value = "faces-out")]
    out: PathBuf,
    /// Resume from --out's journal: skip every image it holds. That is the default
    /// whenever a journal is there; with this flag, its absence is an error.
    #[arg(long, conflicts_with = "restart")]
    resume: bool,
    /// Discard --out's journal and output (even if made with other settings) and
    /// start over.
    #[arg(long)]
    restart: bool,
    /// face_recognition's number_of_times_to_upsample.
    #[arg(long, default_value_t = 1)]
    upsample: u32,
    /// Landmark model: small (5 points) or large (68 points).
    #[arg(long, value_enum, default_value = "small")]
    model: LandmarkModel,
    /// Face detector: hog or cnn.
    #[arg(long, value_enum, default_value = "hog")]
    detector: DetectorKind,
    /// A second detector for the images where the first found no face: cnn (dlib's
    /// CNN detector, after HOG). Off by default, so that the output stays
    /// face_recognition's; each face then says which detector found it.
    #[arg(long, value_enum)]
    fallback: Option<Fallback>,
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
    /// Where images are read: auto (on the node that processes each one when it sees
    /// the same file the driver listed, same size and mtime; else in the driver),
    /// nodes (always, unchecked: a shared mount) or driver (which sends the bytes).
    #[arg(long, value_enum, value_name = "WHERE", default_value = "auto")]
    read_on: ReadOn,
    /// Short for --read-on nodes.
    #[arg(long, conflicts_with_all = ["plain", "read_on"])]
    read_on_nodes: bool,
    /// The model directory on every node (default: $RAYISH_FACE_MODELS, else
    /// ~/.cache/rayish/face_models, where scripts/setup-faces.sh puts them).
    #[arg(long)]
    models: Option<PathBuf>,
    /// Refuse images with more pixels than this (PIL's decompression-bomb limit).
    #[arg(long, default_value_t = rayish_faces::settings::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Refuse input files larger than this many bytes, before reading them.
    #[arg(long, default_value_t = rayish_faces::settings::DEFAULT_MAX_FILE_BYTES)]
    max_file_bytes: u64,
    /// Fail an image whose file is not read within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = rayish_faces::settings::DEFAULT_READ_TIMEOUT_SECS)]
    read_timeout: u64,
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

/// A fallback detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Fallback {
    /// dlib's CNN (MMOD) detector.
    Cnn,
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
        max_file_bytes: args.max_file_bytes,
        read_timeout_secs: args.read_timeout,
        fallback_cnn: args.fallback == Some(Fallback::Cnn),
    };
    if settings.fallback_cnn && settings.detector == DetectorKind::Cnn {
        bail!("--fallback cnn runs after the HOG detector; it cannot follow --detector cnn");
    }
    if args.address.is_none() {
        // Local mode: the models must be here. On a cluster they must be on the nodes,
        // and a node without them fails each image with this same message.
        check_models(&settings)?;
    }
    let timeout = std::time::Duration::from_secs(settings.read_timeout_secs);
    let inputs = inputs::list_inputs(&args.input, timeout)
        .with_context(|| format!("listing {}", args.input))?;
    if inputs.is_empty() {
        bail!("no images found in {}", args.input);
    }
    // Everything about --out is checked before any compute starts.
    let mut journal = prepare_out(&args, &settings, inputs.len() as u64)?;
    let mut observer = Observer::new(&inputs, &mut journal, args.quiet);
    let chain = Chain::standard(&settings);

    let result = if observer.all_done() {
        // Nothing left to compute: no runtime to start.
        rayish_faces::run_plain(&chain, &inputs, 1, &mut observer)
    } else if let Some(threads) = args.plain {
        rayish_faces::run_plain(&chain, &inputs, threads, &mut observer)
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
            read_on: if args.read_on_nodes {
                ReadOn::Nodes
            } else {
                args.read_on
            },
        };
        rayish_faces::run_on_runtime(&chain, &inputs, &options, &mut observer)
    };
    let resumed = observer.resumed;
    observer.bar.finish_and_clear();
    drop(observer);
    // Whatever happened, what finished is on disk before this process goes.
    let synced = journal.sync();
    let run = result.with_context(|| {
        format!(
            "the run stopped; the images it finished are kept in {} and a re-run resumes from them",
            args.out.join(rayish_faces::journal::FILE).display()
        )
    })?;
    synced.context("keeping the journal")?;
    if resumed > 0 {
        println!(
            "resumed: {resumed} images already finished in {}",
            args.out.join(rayish_faces::journal::FILE).display()
        );
    }
    let read = &run.progress;
    if read.read_on_nodes + read.read_by_driver > 0 {
        println!(
            "read: {} images on the nodes, {} by the driver",
            read.read_on_nodes, read.read_by_driver
        );
    }

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
    if settings.fallback_cnn {
        let cnn = |j: &&FaceJob| {
            j.faces
                .iter()
                .any(|f| f.detector == Some(DetectorKind::Cnn))
        };
        let images = run.jobs.iter().filter(cnn).count();
        let faces: usize = run
            .jobs
            .iter()
            .flat_map(|j| &j.faces)
            .filter(|f| f.detector == Some(DetectorKind::Cnn))
            .count();
        println!("cnn fallback: {faces} faces in {images} images where HOG found none");
    }
    println!(
        "wrote {}/{{average.json,encodings.jsonl,encodings.npy}}",
        args.out.display()
    );
    Ok(())
}

/// Checks `--out` and opens its journal (`--resume` demands one, `--restart` empties
/// it): it must be a writable directory on a file
/// system with room for the run, not holding another run's output with other
/// settings (unless `restart`); an interrupted commit of the final files is finished.
fn prepare_out(args: &EncodeArgs, settings: &Settings, images: u64) -> anyhow::Result<Journal> {
    let (out, restart) = (args.out.as_path(), args.restart);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let journal_path = out.join(rayish_faces::journal::FILE);
    let journal_existed = journal_path.exists();
    if args.resume && !journal_existed {
        bail!(
            "--resume: {} has no {} to resume from",
            out.display(),
            rayish_faces::journal::FILE
        );
    }
    let free = output::space_free(out)
        .with_context(|| format!("checking free space in {}", out.display()))?;
    let needed = output::space_needed(images);
    if free < needed {
        bail!(
            "{} has {free} bytes free; {images} images need about {needed}",
            out.display()
        );
    }
    // Opening the journal locks --out against other runs: what follows is this run's.
    let journal = Journal::open(out, settings, restart).context("opening the journal")?;
    output::recover(out)
        .with_context(|| format!("finishing the last commit in {}", out.display()))?;
    if !restart && !journal_existed {
        if let Err(e) = same_settings_as_previous_output(out, settings) {
            // The journal just made must not vouch for this --out next time.
            drop(journal);
            let _ = std::fs::remove_file(&journal_path);
            return Err(e);
        }
    }
    Ok(journal)
}

/// A previous run's output without a journal (an older rayish-faces, or the journal
/// removed) is not mixed with this run's if their settings differ.
fn same_settings_as_previous_output(out: &Path, settings: &Settings) -> anyhow::Result<()> {
    let Some(previous) = output::previous_settings(out) else {
        return Ok(());
    };
    let differs = rayish_faces::journal::differences(&previous, &settings.output_record());
    if !differs.is_empty() {
        bail!(
            "{} holds a run with other settings ({}); use another --out, or --restart to discard it",
            out.join("average.json").display(),
            differs.join(", ")
        );
    }
    Ok(())
}

/// Keeps each finished image in the journal, counts it in the cluster's metrics and
/// shows progress.
struct Observer<'a> {
    keys: Vec<Option<InputKey>>,
    done: HashMap<InputKey, FaceJob>,
    journal: &'a mut Journal,
    bar: ProgressBar,
    resumed: u64,
    /// `ray_faces_images_total{status}`: images this run finished, by outcome.
    images: rayish::metrics::Counter,
    /// `ray_faces_found_total`: faces this run encoded.
    faces: rayish::metrics::Counter,
}

impl<'a> Observer<'a> {
    fn new(inputs: &[inputs::Input], journal: &'a mut Journal, quiet: bool) -> Self {
        let keys = inputs
            .iter()
            .map(|i| i.stamp.map(|s| InputKey::new(&i.path, s)))
            .collect();
        let done = journal.take_done();
        Observer {
            keys,
            done,
            journal,
            bar: progress_bar(inputs.len() as u64, quiet),
            resumed: 0,
            images: rayish::metrics::Counter::new(
                "faces_images",
                "Images rayish-faces finished, by outcome (ok, no_face, skipped, error).",
                &["status"],
            ),
            faces: rayish::metrics::Counter::new("faces_found", "Faces rayish-faces encoded.", &[]),
        }
    }

    /// Whether the journal holds every image.
    fn all_done(&self) -> bool {
        self.keys
            .iter()
            .all(|k| k.as_ref().is_some_and(|k| self.done.contains_key(k)))
    }
}

impl RunObserver for Observer<'_> {
    fn already_done(&mut self, index: u64, _path: &str) -> Option<FaceJob> {
        let key = self.keys.get(index as usize)?.as_ref()?;
        let job = self.done.get(key).cloned()?;
        self.resumed += 1;
        Some(job)
    }

    fn finished(&mut self, job: &FaceJob) -> Result<(), RunError> {
        // An image without a stamp (not stat'ed here) has nothing to resume it by.
        if let Some(Some(key)) = self.keys.get(job.index as usize) {
            self.journal.append(key, job)?;
        }
        // The tags are declared above: these cannot fail.
        let (status, _) = output::status_name(&job.status);
        let _ = self.images.inc(1.0, &[("status", status)]);
        let _ = self.faces.inc(job.faces.len() as f64, &[]);
        Ok(())
    }

    fn progress(&mut self, p: &Progress) -> Result<(), RunError> {
        self.bar.set_position(p.done);
        self.bar
            .set_message(format!("{} faces, {} failed", p.faces, p.failed));
        Ok(())
    }
}

/// Fails early, with the fix, when a model this run needs is missing here.
fn check_models(settings: &Settings) -> anyhow::Result<()> {
    use rayish_faces::models::*;
    let dir = models_dir(settings.models_dir.as_deref());
    model_path(&dir, ENCODER_FILE)?;
    model_path(&dir, landmarks_file(settings.landmarks))?;
    if settings.detector == DetectorKind::Cnn || settings.fallback_cnn {
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
