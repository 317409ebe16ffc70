//! Running a chain over many images: on the rayish runtime (stages as remote tasks on
//! batches, batches passed between tasks as object references) or in a plain loop on
//! local threads. A [`RunObserver`] hears of each image as it finishes (to journal
//! it) and may hand back images already finished by an earlier run, which are not
//! run again.
//!
//! The aggregate is summed in the driver over every image in input order, not
//! reduced on the nodes: a sum of floats depends on its grouping, and the average of
//! a resumed run must equal, bit for bit, an uninterrupted run's. It costs 128 adds
//! a face.
//!
//! Stage fusion: by default the stages after read run as one task per batch
//! ([`run_stages`] with the whole remote chain), as Ray Data fuses consecutive map
//! operators: every stage from decode to encode carries the decoded pixels, and
//! shipping them through the object store between stages cost 15–20% of the run
//! (benches/faces.rs). [`RunOptions::task_per_stage`] runs each stage as its own task
//! instead; the output is the same either way.
//!
//! Where the read stage runs ([`ReadOn`]): in the driver, which then `put`s the bytes
//! (nodes need not see its files), or in each batch's task on its node, so that the
//! driver sends paths, not bytes, and its disk and link no longer bound the cluster.
//! By default ([`ReadOn::Auto`]) the nodes read, checking that what they find is what
//! the driver listed (the same size and modification time, [`FaceJob::listed`]); an
//! image a node cannot read that way comes back unread and the driver reads it and
//! sends it again, and once more images come back unread than read, the driver reads
//! the rest itself. Until a node has read one, a single batch at a time goes out
//! unread (a probe) and the driver reads the others, so a cluster whose nodes see
//! nothing loses no time waiting for them. The output is the same wherever the images
//! are read.
//!
//! At most `window` batches are in flight, so memory stays bounded however many
//! images there are.

use crate::aggregate::Aggregate;
use crate::chain::{apply, Chain, ChainError, Stage};
use crate::inputs::Input;
use crate::job::{FaceJob, Status};
use rayish::ObjectRef;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Some consecutive stages of the chain (one, or all after read) on one batch.
#[rayish::remote]
pub fn run_stages(stages: Vec<Stage>, mut batch: Vec<FaceJob>) -> Result<Vec<FaceJob>, ChainError> {
    let node = rayish::current_node_id();
    for stage in &stages {
        let handler = crate::chain::build_stage(stage)?;
        for job in &mut batch {
            apply(handler.as_ref(), job);
        }
    }
    for job in &mut batch {
        job.node.clone_from(&node);
    }
    Ok(batch)
}

/// What the caller of a run hears of it, and what it already has.
pub trait RunObserver {
    /// The image at `index` of the input (`path`), if an earlier run finished it: it
    /// is not run again.
    fn already_done(&mut self, index: u64, path: &str) -> Option<FaceJob> {
        let _ = (index, path);
        None
    }

    /// An image finished. An error stops the run: its result could not be kept.
    fn finished(&mut self, job: &FaceJob) -> Result<(), RunError> {
        let _ = job;
        Ok(())
    }

    /// Where the run stands; called when that may have changed.
    fn progress(&mut self, progress: &Progress) -> Result<(), RunError> {
        let _ = progress;
        Ok(())
    }
}

/// An observer that wants nothing.
impl RunObserver for () {}

/// How a run goes.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Images per task (default 1).
    pub batch: usize,
    /// Batches in flight at once (default 64).
    pub window: usize,
    /// One task per stage instead of one task for all stages after read (default
    /// false: fused, see the module docs).
    pub task_per_stage: bool,
    /// Where the images are read (default [`ReadOn::Auto`]).
    pub read_on: ReadOn,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            batch: 1,
            window: 64,
            task_per_stage: false,
            read_on: ReadOn::Auto,
        }
    }
}

/// Where a run reads its images (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadOn {
    /// On the nodes where they see what the driver listed, else in the driver.
    #[default]
    Auto,
    /// On the nodes, unchecked: every node sees the inputs at the same paths.
    Nodes,
    /// In the driver, which sends the bytes.
    Driver,
}

/// Where a run stands, for a progress display.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Images in the run.
    pub total: u64,
    /// Images finished (whatever their outcome), resumed ones included.
    pub done: u64,
    /// Images an earlier run had finished (taken from the observer, not run).
    pub resumed: u64,
    /// Faces encoded so far.
    pub faces: u64,
    /// Images failed so far.
    pub failed: u64,
    /// Images read on the nodes (in this run).
    pub read_on_nodes: u64,
    /// Images read by the driver (in this run).
    pub read_by_driver: u64,
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// Every image, in input order, with its faces or the reason it stopped.
    pub jobs: Vec<FaceJob>,
    /// Counts and the encoding sum.
    pub aggregate: Aggregate,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Where things stood at the end (counts, and where the images were read).
    pub progress: Progress,
}

/// Errors that stop a whole run (per-image errors never do).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The chain names a handler this program lacks, or a config is bad.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The runtime failed (cluster unreachable, ...).
    #[error("runtime: {0}")]
    Runtime(#[from] rayish::Error),
    /// A finished image could not be kept.
    #[error("keeping results: {0}")]
    Journal(#[from] crate::journal::JournalError),
}

/// How often an image is run again after the cluster lost its batch's data
/// (`TaskError::ObjectLost`) before it fails with that error.
const LOST_RUNS: u32 = 3;

struct InFlight {
    jobs: Vec<u64>,
    result: ObjectRef<Vec<FaceJob>>,
    read_on_nodes: bool,
}

/// Takes from `observer` the images an earlier run finished: the results so far,
/// the progress they make, and the indices left to run.
fn resume(
    inputs: &[Input],
    observer: &mut impl RunObserver,
) -> (Vec<Option<FaceJob>>, Progress, Vec<u64>) {
    let mut results: Vec<Option<FaceJob>> = vec![None; inputs.len()];
    let mut status = Progress {
        total: inputs.len() as u64,
        ..Default::default()
    };
    let mut todo = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        match observer.already_done(i as u64, &input.path) {
            Some(mut job) => {
                job.index = i as u64;
                status.note(&job);
                status.resumed += 1;
                results[i] = Some(job);
            }
            None => todo.push(i as u64),
        }
    }
    (results, status, todo)
}

impl Progress {
    fn note(&mut self, job: &FaceJob) {
        self.done += 1;
        self.faces += job.faces.len() as u64;
        if matches!(job.status, Status::Failed(_)) {
            self.failed += 1;
        }
    }
}

/// The run's output: every image in input order (an image without a result, which
/// cannot happen unless a bug drops one, is reported failed) and their aggregate.
fn finish(
    inputs: &[Input],
    results: Vec<Option<FaceJob>>,
    start: Instant,
    progress: Progress,
) -> RunOutput {
    let jobs: Vec<FaceJob> = results
        .into_iter()
        .enumerate()
        .map(|(i, j)| {
            j.unwrap_or_else(|| {
                let mut job = FaceJob::new(i as u64, inputs[i].path.clone());
                job.status = Status::Failed("lost: no result came back".into());
                job
            })
        })
        .collect();
    let mut aggregate = Aggregate::default();
    jobs.iter().for_each(|j| aggregate.add(j));
    RunOutput {
        jobs,
        aggregate,
        elapsed: start.elapsed(),
        progress,
    }
}

/// Runs `chain` over `inputs` on the rayish runtime (initialised by the caller),
/// skipping what `observer` already has and telling it of each image as it finishes.
pub fn run_on_runtime(
    chain: &Chain,
    inputs: &[Input],
    options: &RunOptions,
    observer: &mut impl RunObserver,
) -> Result<RunOutput, RunError> {
    let start = Instant::now();
    // Read in the driver: the stages up to and including "read" run here.
    let (driver_stages, after_read) = chain.split_after("read");
    let driver_handlers = driver_stages.build()?;
    // Fail fast on an unknown handler rather than on every image.
    chain.build()?;

    let (mut results, mut status, todo) = resume(inputs, observer);
    let batch = options.batch.max(1);
    let mut queue: VecDeque<Vec<u64>> = todo.chunks(batch).map(<[u64]>::to_vec).collect();
    // Images the nodes handed back unread, for the driver to read.
    let mut driver_queue: VecDeque<Vec<u64>> = VecDeque::new();
    let mut in_flight: Vec<InFlight> = Vec::new();
    let mut handed_back = 0u64;
    // Runs of each image lost to the cluster (see `LOST_RUNS`).
    let mut lost_runs: std::collections::HashMap<u64, u32> = Default::default();
    observer.progress(&status)?;

    while !queue.is_empty() || !driver_queue.is_empty() || !in_flight.is_empty() {
        while in_flight.len() < options.window.max(1) {
            let (indices, on_nodes) = if let Some(b) = driver_queue.pop_front() {
                (b, false)
            } else if let Some(b) = queue.pop_front() {
                let on_nodes = match options.read_on {
                    ReadOn::Nodes => true,
                    ReadOn::Driver => false,
                    // One batch probes whether the nodes can read (the driver reads
                    // the others meanwhile: a node that cannot may take the read
                    // timeout to say so); once one has, every batch, until the
                    // nodes have handed back more images than they read.
                    ReadOn::Auto => {
                        let probing = in_flight.iter().any(|f| f.read_on_nodes);
                        handed_back <= status.read_on_nodes
                            && (status.read_on_nodes > 0 || !probing)
                    }
                };
                (b, on_nodes)
            } else {
                break;
            };
            let mut jobs: Vec<FaceJob> = indices
                .iter()
                .map(|&i| {
                    let input = &inputs[i as usize];
                    let mut job = FaceJob::new(i, input.path.clone());
                    if on_nodes && options.read_on == ReadOn::Auto {
                        job.listed = input.stamp;
                    }
                    job
                })
                .collect();
            let stages = if on_nodes {
                &chain.stages
            } else {
                for h in &driver_handlers {
                    jobs.iter_mut().for_each(|j| apply(h.as_ref(), j));
                }
                &after_read.stages
            };
            let mut r: ObjectRef<Vec<FaceJob>> = rayish::put(&jobs)?;
            if options.task_per_stage {
                for stage in stages {
                    r = run_stages::remote(vec![stage.clone()], &r);
                }
            } else if !stages.is_empty() {
                r = run_stages::remote(stages.clone(), &r);
            }
            in_flight.push(InFlight {
                jobs: indices,
                result: r,
                read_on_nodes: on_nodes,
            });
        }
        let refs: Vec<_> = in_flight.iter().map(|f| f.result.clone()).collect();
        let (ready, _) = rayish::wait(&refs, 1, Some(Duration::from_millis(500)))?;
        for r in ready {
            let Some(pos) = in_flight.iter().position(|f| f.result.id() == r.id()) else {
                continue;
            };
            let done = in_flight.swap_remove(pos);
            let finished = match rayish::get(&done.result) {
                Ok(jobs) => jobs,
                Err(rayish::Error::Task(e))
                    if matches!(e, rayish::TaskError::ObjectLost { .. })
                        && done
                            .jobs
                            .iter()
                            .all(|j| lost_runs.get(j).copied().unwrap_or(0) < LOST_RUNS) =>
                {
                    // The cluster lost the batch's data (a put kept on a node that
                    // died, or on a head that restarted), not the images: read and
                    // run them again.
                    tracing::warn!(
                        "a batch of {} was lost ({e}); running it again",
                        done.jobs.len()
                    );
                    for j in &done.jobs {
                        *lost_runs.entry(*j).or_default() += 1;
                    }
                    queue.push_front(done.jobs);
                    continue;
                }
                Err(rayish::Error::Task(e)) if done.jobs.len() > 1 => {
                    // One image may be the culprit (a worker dying inside dlib): retry
                    // the batch's images one by one, so only that one fails.
                    tracing::warn!(
                        "a batch of {} failed ({e}); retrying its images one at a time",
                        done.jobs.len()
                    );
                    for j in done.jobs.into_iter().rev() {
                        queue.push_front(vec![j]);
                    }
                    continue;
                }
                Err(rayish::Error::Task(e)) => done
                    .jobs
                    .into_iter()
                    .map(|index| {
                        let mut job = FaceJob::new(index, inputs[index as usize].path.clone());
                        job.status = Status::Failed(format!("task failed: {e}"));
                        job
                    })
                    .collect(),
                Err(other) => return Err(other.into()),
            };
            let mut unread = Vec::new();
            for mut job in finished {
                if let Status::NotRead(reason) = &job.status {
                    tracing::debug!(
                        "{} not read on its node ({reason}); the driver reads it",
                        job.path
                    );
                    unread.push(job.index);
                    continue;
                }
                job.listed = None;
                if done.read_on_nodes {
                    status.read_on_nodes += 1;
                } else {
                    status.read_by_driver += 1;
                }
                observer.finished(&job)?;
                status.note(&job);
                if let Some(slot) = results.get_mut(job.index as usize) {
                    *slot = Some(job);
                }
            }
            if !unread.is_empty() {
                handed_back += unread.len() as u64;
                driver_queue.push_back(unread);
            }
        }
        observer.progress(&status)?;
    }
    Ok(finish(inputs, results, start, status))
}

/// Runs `chain` over `inputs` without any runtime: `threads` OS threads, each taking
/// the next image. The baseline the runtime is measured against.
pub fn run_plain<O: RunObserver + Send>(
    chain: &Chain,
    inputs: &[Input],
    threads: usize,
    observer: &mut O,
) -> Result<RunOutput, RunError> {
    let start = Instant::now();
    chain.build()?;
    let (mut results, status, todo) = resume(inputs, observer);
    observer.progress(&status)?;
    let shared = std::sync::Mutex::new((observer, status, None::<RunError>));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = threads.max(1);
    let finished: Vec<FaceJob> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    let handlers = match chain.build() {
                        Ok(h) => h,
                        Err(_) => return out, // checked above
                    };
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&i) = todo.get(n) else { break };
                        let mut job = FaceJob::new(i, inputs[i as usize].path.clone());
                        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            let mut j = job.clone();
                            handlers.iter().for_each(|h| apply(h.as_ref(), &mut j));
                            j
                        }));
                        match run {
                            Ok(j) => job = j,
                            Err(p) => {
                                job.status =
                                    Status::Failed(format!("handler panicked: {}", panic_text(&p)))
                            }
                        }
                        let Ok(mut guard) = shared.lock() else { break };
                        let (observer, status, error) = &mut *guard;
                        if error.is_some() {
                            break;
                        }
                        status.note(&job);
                        status.read_by_driver += 1;
                        let kept = observer
                            .finished(&job)
                            .and_then(|()| observer.progress(status));
                        if let Err(e) = kept {
                            *error = Some(e);
                            break;
                        }
                        drop(guard);
                        out.push(job);
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let (_, status, error) = shared
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(e) = error {
        return Err(e);
    }
    for job in finished {
        let i = job.index as usize;
        results[i] = Some(job);
    }
    Ok(finish(inputs, results, start, status))
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
