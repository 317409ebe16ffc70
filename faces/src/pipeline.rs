//! Running a chain over many images: on the rayish runtime (stages as remote tasks on
//! batches, batches passed between tasks as object references, the aggregate reduced
//! by tasks on the nodes) or in a plain loop on local threads.
//!
//! Stage fusion: by default the stages after read run as one task per batch
//! ([`run_stages`] with the whole remote chain), as Ray Data fuses consecutive map
//! operators: every stage from decode to encode carries the decoded pixels, and
//! shipping them through the object store between stages cost 15–20% of the run
//! (benches/faces.rs). [`RunOptions::task_per_stage`] runs each stage as its own task
//! instead; the output is the same either way.
//!
//! The read stage runs in the driver, where the files are (nodes need not share a
//! filesystem); its bytes are `put` and everything after it runs wherever the head
//! schedules it. At most `window` batches are in flight, so memory stays bounded
//! however many images there are.

use crate::aggregate::Aggregate;
use crate::chain::{apply, Chain, ChainError, Stage};
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

/// The aggregate of one finished batch (runs where the batch is).
#[rayish::remote]
pub fn aggregate_batch(batch: Vec<FaceJob>) -> Aggregate {
    let mut agg = Aggregate::default();
    batch.iter().for_each(|j| agg.add(j));
    agg
}

/// Two partial aggregates merged into one.
#[rayish::remote]
pub fn merge_aggregates(mut a: Aggregate, b: Aggregate) -> Aggregate {
    a.merge(&b);
    a
}

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
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            batch: 1,
            window: 64,
            task_per_stage: false,
        }
    }
}

/// Where a run stands, for a progress display.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Images in the run.
    pub total: u64,
    /// Images finished (whatever their outcome).
    pub done: u64,
    /// Faces encoded so far.
    pub faces: u64,
    /// Images failed so far.
    pub failed: u64,
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
}

struct InFlight {
    jobs: Vec<(u64, String)>,
    result: ObjectRef<Vec<FaceJob>>,
}

/// Runs `chain` over `paths` on the rayish runtime (initialised by the caller).
pub fn run_on_runtime(
    chain: &Chain,
    paths: &[String],
    options: &RunOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<RunOutput, RunError> {
    let start = Instant::now();
    // Stages up to and including "read" run here, where the files are.
    let (local, remote) = chain.split_after("read");
    let local_handlers = local.build()?;
    // Fail fast on an unknown handler rather than on every image.
    remote.build()?;

    let batch = options.batch.max(1);
    let mut queue: VecDeque<Vec<(u64, String)>> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64, p.clone()))
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|c| c.to_vec())
        .collect();
    let mut results: Vec<Option<FaceJob>> = vec![None; paths.len()];
    let mut in_flight: Vec<InFlight> = Vec::new();
    let mut partials: Vec<ObjectRef<Aggregate>> = Vec::new();
    let mut here = Aggregate::default(); // images whose tasks failed outright
    let mut status = Progress {
        total: paths.len() as u64,
        ..Default::default()
    };
    progress(&status);

    while !queue.is_empty() || !in_flight.is_empty() {
        while in_flight.len() < options.window.max(1) {
            let Some(jobs) = queue.pop_front() else { break };
            let mut batch_jobs: Vec<FaceJob> = jobs
                .iter()
                .map(|(i, p)| FaceJob::new(*i, p.clone()))
                .collect();
            for h in &local_handlers {
                batch_jobs.iter_mut().for_each(|j| apply(h.as_ref(), j));
            }
            let mut r: ObjectRef<Vec<FaceJob>> = rayish::put(&batch_jobs)?;
            if options.task_per_stage {
                for stage in &remote.stages {
                    r = run_stages::remote(vec![stage.clone()], &r);
                }
            } else if !remote.stages.is_empty() {
                r = run_stages::remote(remote.stages.clone(), &r);
            }
            in_flight.push(InFlight { jobs, result: r });
        }
        let refs: Vec<_> = in_flight.iter().map(|f| f.result.clone()).collect();
        let (ready, _) = rayish::wait(&refs, 1, Some(Duration::from_millis(500)))?;
        for r in ready {
            let Some(pos) = in_flight.iter().position(|f| f.result.id() == r.id()) else {
                continue;
            };
            let done = in_flight.swap_remove(pos);
            match rayish::get(&done.result) {
                Ok(jobs) => {
                    partials.push(aggregate_batch::remote(&done.result));
                    if partials.len() >= 64 {
                        // Keep the driver's list short on long runs: fold it now.
                        let folded = merge_tree(std::mem::take(&mut partials));
                        partials.extend(folded);
                    }
                    for job in jobs {
                        status.done += 1;
                        status.faces += job.faces.len() as u64;
                        if matches!(job.status, Status::Failed(_)) {
                            status.failed += 1;
                        }
                        if let Some(slot) = results.get_mut(job.index as usize) {
                            *slot = Some(job);
                        }
                    }
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
                }
                Err(rayish::Error::Task(e)) => {
                    for (index, path) in done.jobs {
                        let mut job = FaceJob::new(index, path);
                        job.status = Status::Failed(format!("task failed: {e}"));
                        here.add(&job);
                        status.done += 1;
                        status.failed += 1;
                        if let Some(slot) = results.get_mut(index as usize) {
                            *slot = Some(job);
                        }
                    }
                }
                Err(other) => return Err(other.into()),
            }
        }
        progress(&status);
    }

    let mut aggregate = reduce(partials)?;
    aggregate.merge(&here);
    let jobs = results
        .into_iter()
        .enumerate()
        .map(|(i, j)| {
            j.unwrap_or_else(|| {
                let mut job = FaceJob::new(i as u64, paths[i].clone());
                job.status = Status::Failed("lost: no result came back".into());
                job
            })
        })
        .collect();
    Ok(RunOutput {
        jobs,
        aggregate,
        elapsed: start.elapsed(),
    })
}

/// Pairwise tree reduction of partial aggregates, then the result.
fn reduce(level: Vec<ObjectRef<Aggregate>>) -> Result<Aggregate, RunError> {
    match merge_tree(level) {
        Some(root) => Ok(rayish::get(&root)?),
        None => Ok(Aggregate::default()),
    }
}

/// Submits the merges of a pairwise tree over `level`, each a task on the nodes;
/// returns the root's reference at once (`None` for an empty level).
fn merge_tree(mut level: Vec<ObjectRef<Aggregate>>) -> Option<ObjectRef<Aggregate>> {
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        let mut it = level.chunks(2);
        for pair in &mut it {
            match pair {
                [a, b] => next.push(merge_aggregates::remote(a, b)),
                [a] => next.push(a.clone()),
                _ => {}
            }
        }
        level = next;
    }
    level.pop()
}

/// Runs `chain` over `paths` without any runtime: `threads` OS threads, each taking
/// the next image. The baseline the runtime is measured against.
pub fn run_plain(
    chain: &Chain,
    paths: &[String],
    threads: usize,
    progress: impl Fn(&FaceJob) + Sync,
) -> Result<RunOutput, RunError> {
    let start = Instant::now();
    chain.build()?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = threads.max(1);
    let mut results: Vec<FaceJob> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    let handlers = match chain.build() {
                        Ok(h) => h,
                        Err(_) => return out, // checked above
                    };
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(path) = paths.get(i) else { break };
                        let mut job = FaceJob::new(i as u64, path.clone());
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
                        progress(&job);
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
    results.sort_by_key(|j| j.index);
    let mut aggregate = Aggregate::default();
    results.iter().for_each(|j| aggregate.add(j));
    Ok(RunOutput {
        jobs: results,
        aggregate,
        elapsed: start.elapsed(),
    })
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
