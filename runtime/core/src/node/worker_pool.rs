//! Worker processes: started from the job's binary, reused across its tasks, and
//! watched so that a worker's death becomes a task outcome, not a hang.
//!
//! Each worker is linked to its node by one end of a Unix socket pair inherited as a
//! file descriptor, so no socket path has to be agreed on and no other process can
//! connect in its place.

use super::worker_output::{pump, OutputSink};
use crate::ids::{ActorId, JobId, NodeId, ObjectId, TaskId};
use crate::protocol::{
    FromWorker, RunKind, TaskError, TaskSpec, ToWorker, WorkerValue, MAX_WORKER_FRAME_LEN,
};
use crate::transport::{spawn_writer_within, FrameReader, MessageSender};
use dashmap::DashMap;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// File descriptor number a worker finds its node socket on.
pub const WORKER_FD: i32 = 3;

/// How long a new worker may take to connect to the head and say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a worker needs to know, passed in its environment.
#[derive(Debug, Clone)]
pub struct WorkerEnv {
    /// The head's address.
    pub head: std::net::SocketAddr,
    /// The cluster key (what a worker needs of the token; the token itself stays
    /// with the node).
    pub cluster_key: crate::transport::tls::ClusterKey,
    /// The node starting it.
    pub node: NodeId,
    /// The node's address, for error messages.
    pub node_address: std::net::SocketAddr,
    /// Where its stdout and stderr go.
    pub log_dir: PathBuf,
    /// The node's shared-memory directory, for handing over large values.
    pub shm_dir: Option<PathBuf>,
    /// How long the worker waits for a silent head (the node's own setting).
    pub head_reconnect_timeout: Duration,
    /// The node's secret for [`crate::protocol::worker_proof`].
    pub worker_key: [u8; 32],
}

/// A request from a worker that the node must serve.
pub enum WorkerRequest {
    /// Fetch an object for it.
    Get {
        /// The request number.
        request: u64,
        /// The object.
        id: crate::ids::ObjectId,
        /// Where it is.
        holders: Vec<crate::protocol::NodeAddress>,
    },
    /// Its task blocked in `get`, or resumed.
    Blocked {
        /// The task.
        task_id: TaskId,
        /// Blocked or resumed.
        blocked: bool,
    },
    /// Lend it a free segment to write a value into.
    Lend {
        /// The request number.
        request: u64,
        /// The object the value will be.
        id: crate::ids::ObjectId,
        /// The value's size.
        len: u64,
    },
    /// Store an object it made.
    Put {
        /// The request number.
        request: u64,
        /// The object.
        id: crate::ids::ObjectId,
        /// Its value.
        value: WorkerValue,
    },
    /// The worker held an actor and has died.
    ActorDied {
        /// The actor.
        actor: ActorId,
        /// How the process ended.
        reason: String,
    },
}

/// One call for a worker to run.
pub struct WorkerCall {
    /// The task (its id and registered function name are sent to the worker; the
    /// whole is kept while it runs, for the metrics of running tasks).
    pub spec: Arc<TaskSpec>,
    /// Which try this is, from 0.
    pub attempt: u32,
    /// Encoded arguments.
    pub args: Vec<WorkerValue>,
    /// Where the result goes.
    pub return_id: ObjectId,
}

/// The actor a dedicated worker holds.
#[derive(Debug, Clone, Copy)]
pub struct ActorBinding {
    /// The actor.
    pub actor: ActorId,
    /// Whether it outlives its job (spared by [`WorkerPool::kill_job`]).
    pub detached: bool,
}

/// A task's result as the worker gave it, or why the worker died.
pub type RunResult = Result<Result<WorkerValue, TaskError>, String>;

/// How a run sent to a worker ended.
pub enum RunEnd {
    /// The worker ran it (or died while running it): the result, and the worker's
    /// time on it (from when it could start: the later of its sending and the end of
    /// the run before it).
    Ran(RunResult, Duration),
    /// Given back unrun: it was sent behind a task that then blocked in `get`, or
    /// whose worker died. It should run elsewhere, without counting as a try.
    Declined,
}

impl RunEnd {
    /// The result and time of a run that was not sent behind another: such a run is
    /// never given back, and if it were, failing it is the safe answer.
    pub fn into_result(self) -> (RunResult, Duration) {
        match self {
            RunEnd::Ran(result, took) => (result, took),
            RunEnd::Declined => (Err("the worker gave the call back".into()), Duration::ZERO),
        }
    }
}

/// A run sent to a worker and not yet ended.
struct PendingRun {
    number: u64,
    task_id: TaskId,
    /// The task, for the running tasks' metrics.
    spec: Arc<TaskSpec>,
    attempt: u32,
    /// Sent behind another function call (a follower, see `node::task_queue`): given
    /// back, not failed, if the worker dies before starting it.
    follower: bool,
    sent_at: Instant,
    tx: oneshot::Sender<RunEnd>,
}

/// The runs a worker holds, in the order sent (it runs them in that order).
#[derive(Default)]
struct Runs {
    pending: VecDeque<PendingRun>,
    /// When its last run ended.
    last_end: Option<Instant>,
}

impl Runs {
    /// Takes the run of `task_id` out; with `ran`, it ended now after running.
    fn take(&mut self, task_id: TaskId, ran: bool) -> Option<(PendingRun, Duration)> {
        let at = self.pending.iter().position(|r| r.task_id == task_id)?;
        let run = self.pending.remove(at)?;
        let now = Instant::now();
        let began = self
            .last_end
            .map_or(run.sent_at, |end| end.max(run.sent_at));
        if ran {
            self.last_end = Some(now);
        }
        Some((run, now.saturating_duration_since(began)))
    }
}

/// One worker process.
pub struct Worker {
    pid: u32,
    job: JobId,
    sender: MessageSender<ToWorker>,
    /// Where the results of the runs sent to it go, in the order sent (it runs them in
    /// that order; an actor's worker may have many, a task's worker one and a follower).
    runs: Mutex<Runs>,
    next_run: AtomicU64,
    /// Set once it holds an actor: it then never returns to the idle pool.
    actor: Mutex<Option<ActorBinding>>,
    /// What it was last sent to run: the function, or its actor's class; the prefix
    /// of its output in the driver.
    label: Mutex<Arc<str>>,
}

impl Worker {
    /// Sends an answer to one of its requests.
    pub fn reply(&self, msg: ToWorker) {
        self.sender.send(msg);
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its job.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// What it was last sent to run (the function, or its actor's class).
    pub fn label(&self) -> Arc<str> {
        self.label
            .lock()
            .map(|l| l.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

/// The workers of one node.
pub struct WorkerPool {
    env: WorkerEnv,
    idle: Mutex<Vec<Arc<Worker>>>,
    live: DashMap<u32, Arc<Worker>>,
    requests: tokio::sync::mpsc::UnboundedSender<(Arc<Worker>, WorkerRequest)>,
    /// The workers' own metrics (`rayish::metrics`), by pid; an ended worker's
    /// counters stay.
    user_metrics: Mutex<crate::metrics::UserMetricTable<u32>>,
    /// Where the workers' printed lines go, besides their log files.
    output: OutputSink,
}

impl WorkerPool {
    /// A pool; requests from workers (object gets and puts) arrive on `requests`.
    /// Their printed lines go to the head through `head` (see [`super::worker_output`]).
    pub(super) fn new(
        env: WorkerEnv,
        requests: tokio::sync::mpsc::UnboundedSender<(Arc<Worker>, WorkerRequest)>,
        head: Arc<super::head_link::HeadLink>,
    ) -> Self {
        Self {
            env,
            idle: Mutex::new(Vec::new()),
            live: DashMap::new(),
            requests,
            user_metrics: Mutex::new(Default::default()),
            output: OutputSink::start(head),
        }
    }

    /// Adds the workers' own metrics to `out`.
    pub fn add_user_metrics(&self, out: &mut crate::metrics::MetricSet) {
        self.user_metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_to(out);
    }

    /// The tasks sent to workers and not ended, with their tries and whether each
    /// runs now (the first of a worker's runs: it runs them in order) or waits
    /// behind another: for the `ray_tasks` Source="executor" series.
    pub fn sent_tasks(&self) -> Vec<(Arc<TaskSpec>, u32, bool)> {
        let mut out = Vec::new();
        for w in self.live.iter() {
            if let Ok(runs) = w.runs.lock() {
                for (i, r) in runs.pending.iter().enumerate() {
                    out.push((r.spec.clone(), r.attempt, i == 0));
                }
            }
        }
        out
    }

    /// The process ids of the live workers.
    pub fn pids(&self) -> Vec<u32> {
        self.live.iter().map(|w| *w.key()).collect()
    }

    /// Worker processes alive now.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no worker is alive.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// An idle worker of `job`, or a new one started from `binary`, to send calls to
    /// with [`Self::send_call`] and give back with [`Self::release`].
    pub async fn worker_for(
        self: &Arc<Self>,
        job: JobId,
        binary: &Path,
    ) -> Result<Arc<Worker>, String> {
        match self.take_idle(job) {
            Some(w) => Ok(w),
            None => self.spawn(job, binary).await,
        }
    }

    /// Returns `worker` to the idle pool once it holds no run, is alive and holds no
    /// actor. Idempotent: a leader and its follower may both end and both call it.
    pub fn release(&self, worker: &Arc<Worker>) {
        let busy = worker.runs.lock().map_or(true, |r| !r.pending.is_empty());
        let actor = worker.actor.lock().map_or(true, |a| a.is_some());
        if busy || actor || !self.live.contains_key(&worker.pid) {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if !idle.iter().any(|w| w.pid == worker.pid) {
                idle.push(worker.clone());
            }
        }
    }

    /// Starts a worker dedicated to `binding.actor` and runs its constructor there.
    /// On success the worker is returned, to be sent the actor's calls with
    /// [`Self::run_on`]; its death is then reported as [`WorkerRequest::ActorDied`].
    pub async fn start_actor(
        self: &Arc<Self>,
        job: JobId,
        binary: &Path,
        binding: ActorBinding,
        call: WorkerCall,
    ) -> (RunResult, Duration, Option<Arc<Worker>>) {
        let worker = match self.spawn(job, binary).await {
            Ok(w) => w,
            Err(e) => return (Err(e), Duration::ZERO, None),
        };
        if let Ok(mut a) = worker.actor.lock() {
            *a = Some(binding);
        }
        let (result, took) = self.run_on(&worker, call, RunKind::CreateActor).await;
        match result {
            Ok(Ok(v)) => (Ok(Ok(v)), took, Some(worker)),
            other => {
                // A constructor that failed leaves no actor: the process goes.
                kill(worker.pid);
                (other, took, None)
            }
        }
    }

    /// Runs one call on `worker`; an error if the worker is dead or dies meanwhile.
    pub async fn run_on(
        &self,
        worker: &Arc<Worker>,
        call: WorkerCall,
        kind: RunKind,
    ) -> (RunResult, Duration) {
        self.send_call(worker, call, kind, false)
            .await
            .into_result()
    }

    /// Sends one call to `worker` now, behind those it already has, and returns where
    /// its result will arrive (an error if the worker is dead or dies meanwhile). An
    /// actor's calls are sent ahead like this so that its process never waits for the
    /// node between two calls.
    pub fn send_run(
        &self,
        worker: &Arc<Worker>,
        call: WorkerCall,
        kind: RunKind,
    ) -> impl std::future::Future<Output = RunResult> + Send + 'static {
        let end = self.send_call(worker, call, kind, false);
        async move { end.await.into_result().0 }
    }

    /// Sends one call to `worker` behind those it has; `follower` marks a function
    /// call sent behind another (see [`RunEnd::Declined`]).
    pub fn send_call(
        &self,
        worker: &Arc<Worker>,
        call: WorkerCall,
        kind: RunKind,
        follower: bool,
    ) -> impl std::future::Future<Output = RunEnd> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let number = worker.next_run.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut runs) = worker.runs.lock() {
            runs.pending.push_back(PendingRun {
                number,
                task_id: call.spec.task_id,
                spec: call.spec.clone(),
                attempt: call.attempt,
                follower,
                sent_at: Instant::now(),
                tx,
            });
        }
        // The watcher removes a dead worker from `live` before it drains `runs`:
        // whichever of us takes the sender answers, so this cannot hang.
        let mut refused = None;
        if !self.live.contains_key(&worker.pid) {
            let taken = worker.runs.lock().ok().and_then(|mut r| {
                let at = r.pending.iter().position(|p| p.number == number)?;
                r.pending.remove(at)
            });
            if taken.is_some() {
                refused = Some(format!("worker pid {} is no longer alive", worker.pid));
            }
        }
        if refused.is_none() {
            let label = match kind {
                RunKind::Function => Some(&*call.spec.function),
                // Its output is labelled by class from then on, as Ray's.
                RunKind::CreateActor => Some(
                    call.spec
                        .function
                        .strip_suffix("::new")
                        .unwrap_or(&call.spec.function),
                ),
                RunKind::ActorMethod => None,
            };
            if let (Some(label), Ok(mut l)) = (label, worker.label.lock()) {
                if **l != *label {
                    *l = Arc::from(label);
                }
            }
            worker.sender.send(ToWorker::Run {
                task_id: call.spec.task_id,
                function: call.spec.function.to_string(),
                args: call.args,
                return_id: call.return_id,
                kind,
            });
        }
        async move {
            match refused {
                Some(reason) => RunEnd::Ran(Err(reason), Duration::ZERO),
                None => rx.await.unwrap_or_else(|_| {
                    RunEnd::Ran(Err("worker channel closed".into()), Duration::ZERO)
                }),
            }
        }
    }

    /// An idle worker of `job` with nothing queued on it. A worker can be in the idle
    /// list and still be sent a follower (released as its run ended, then handed a
    /// follower by `finished`); it is left there and taken once that ends.
    fn take_idle(&self, job: JobId) -> Option<Arc<Worker>> {
        let mut idle = self.idle.lock().ok()?;
        let pos = idle
            .iter()
            .position(|w| w.job == job && w.runs.lock().is_ok_and(|r| r.pending.is_empty()))?;
        Some(idle.swap_remove(pos))
    }

    /// The command that starts a worker of `job` from `binary`: its environment (the
    /// cluster key and this job's proof, never the token), its log files, and the
    /// socket `their_fd` moved to `WORKER_FD` in the child.
    fn command(&self, job: JobId, binary: &Path, their_fd: i32) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(binary);
        cmd.env("RAYISH_WORKER_FD", WORKER_FD.to_string())
            .env("RAYISH_HEAD_ADDRESS", self.env.head.to_string())
            .env("RAYISH_CLUSTER_KEY", self.env.cluster_key.to_hex())
            .env_remove("RAYISH_TOKEN")
            .env("RAYISH_NODE_ID", self.env.node.0.to_string())
            .env("RAYISH_JOB_ID", job.0.to_string())
            .env(
                "RAYISH_WORKER_PROOF",
                hex::encode(crate::protocol::worker_proof(&self.env.worker_key, job)),
            )
            .env("RAYISH_NODE_ADDRESS", self.env.node_address.to_string())
            .env(
                crate::transport::HEAD_RECONNECT_TIMEOUT_ENV,
                self.env.head_reconnect_timeout.as_secs_f64().to_string(),
            )
            .env(
                "RAYISH_SHM_DIR",
                self.env.shm_dir.as_deref().unwrap_or(Path::new("")),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(false);
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (dup2, fcntl, prctl) on plain integers.
        unsafe {
            cmd.pre_exec(move || {
                if their_fd == WORKER_FD {
                    // Already in place: only clear close-on-exec.
                    libc::fcntl(WORKER_FD, libc::F_SETFD, 0);
                } else if libc::dup2(their_fd, WORKER_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Die with the node rather than linger as an orphan.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }

    /// Starts a worker process of `job` and waits until it says it is ready; from then
    /// on [`Self::watch`] reads it.
    async fn spawn(self: &Arc<Self>, job: JobId, binary: &Path) -> Result<Arc<Worker>, String> {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let theirs: OwnedFd = theirs.into();
        let their_fd = theirs.as_raw_fd();
        let log_base = self.env.log_dir.join(format!(
            "starting-worker-{job}-{:08x}",
            rand::random::<u32>()
        ));
        let out = std::fs::File::create(log_base.with_extension("out"))
            .map_err(|e| format!("worker log: {e}"))?;
        let err = std::fs::File::create(log_base.with_extension("err"))
            .map_err(|e| format!("worker log: {e}"))?;
        let mut cmd = self.command(job, binary, their_fd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start worker {}: {e}", binary.display()))?;
        let pipes = (child.stdout.take(), child.stderr.take());
        drop(theirs);
        let pid = child.id().unwrap_or(0);
        // Ray's name for a worker's logs, `worker-<worker id>-<job id>-<pid>`, which
        // Ray's log API resolves a pid with; the pid is known only now.
        let named = self
            .env
            .log_dir
            .join(format!("worker-{:08x}-{job}-{pid}", rand::random::<u32>()));
        let log_base = match ["out", "err"].iter().try_for_each(|ext| {
            std::fs::rename(log_base.with_extension(ext), named.with_extension(ext))
        }) {
            Ok(()) => named,
            Err(e) => {
                tracing::warn!("cannot name the worker's logs after its pid: {e}");
                log_base
            }
        };
        ours.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stream = tokio::net::UnixStream::from_std(ours).map_err(|e| e.to_string())?;
        let (r, w) = stream.into_split();
        let sender = spawn_writer_within::<_, ToWorker>(w, MAX_WORKER_FRAME_LEN);
        let mut reader = FrameReader::<_, FromWorker>::within(r, MAX_WORKER_FRAME_LEN);
        let worker = Arc::new(Worker {
            pid,
            job,
            sender,
            runs: Mutex::new(Runs::default()),
            next_run: AtomicU64::new(0),
            actor: Mutex::new(None),
            label: Mutex::new(Arc::from("")),
        });
        // Drained from the start: a worker that prints before it is ready must not
        // fill its pipe and stall.
        if let (Some(stdout), Some(stderr)) = pipes {
            let sink = &self.output;
            tokio::spawn(pump(stdout, out, false, worker.clone(), sink.clone()));
            tokio::spawn(pump(stderr, err, true, worker.clone(), sink.clone()));
        }

        let ready = tokio::time::timeout(READY_TIMEOUT, reader.next()).await;
        match ready {
            Ok(Ok(Some(FromWorker::Ready { .. }))) => {}
            other => {
                let _ = child.start_kill();
                let status = child.wait().await.ok();
                return Err(format!(
                    "worker {} did not start ({}; {}); see {}.err",
                    binary.display(),
                    match other {
                        Err(_) => "timed out".to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Ok(Ok(_)) => "it did not say it was ready".to_string(),
                    },
                    status.map(describe_exit).unwrap_or_default(),
                    log_base.display()
                ));
            }
        }
        self.live.insert(pid, worker.clone());
        tracing::debug!(pid, ?job, "worker started");

        tokio::spawn(self.clone().watch(worker.clone(), reader, child, log_base));
        Ok(worker)
    }

    /// Reads a started worker's messages until its socket closes, passing its
    /// requests to the node; then learns how the process ended and reports what it
    /// leaves unfinished: its pending runs, and its actor if it held one.
    async fn watch(
        self: Arc<Self>,
        w: Arc<Worker>,
        mut reader: FrameReader<tokio::net::unix::OwnedReadHalf, FromWorker>,
        child: tokio::process::Child,
        log_base: PathBuf,
    ) {
        let reason = loop {
            match reader.next().await {
                Ok(Some(msg)) => self.route(&w, msg),
                Ok(None) => break None,
                Err(e) => break Some(format!("bad message from worker: {e}")),
            }
        };
        self.live.remove(&w.pid);
        self.user_metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ended(&w.pid);
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|x| x.pid != w.pid);
        }
        let status = reap(child).await;
        remove_empty_logs(&log_base);
        let reason = match reason {
            Some(r) => format!("{r}; worker pid {} {status}", w.pid),
            None => format!("worker pid {} {status}", w.pid),
        };
        let runs = w
            .runs
            .lock()
            .map(|mut r| std::mem::take(&mut r.pending))
            .unwrap_or_default();
        if !runs.is_empty() {
            tracing::warn!("worker died during a task: {reason}");
        }
        // The first was running; a follower behind it never started.
        for (i, run) in runs.into_iter().enumerate() {
            let end = if i > 0 && run.follower {
                RunEnd::Declined
            } else {
                RunEnd::Ran(Err(reason.clone()), Duration::ZERO)
            };
            let _ = run.tx.send(end);
        }
        let binding = w.actor.lock().ok().and_then(|a| *a);
        if let Some(binding) = binding {
            tracing::warn!(actor = ?binding.actor, "actor process ended: {reason}");
            let _ = self.requests.send((
                w.clone(),
                WorkerRequest::ActorDied {
                    actor: binding.actor,
                    reason,
                },
            ));
        }
    }

    /// One message from worker `w`: a run's end goes to whoever waits for it, a
    /// request to the node.
    fn route(&self, w: &Arc<Worker>, msg: FromWorker) {
        let request = match msg {
            FromWorker::Finished { task_id, result } => {
                let run = w.runs.lock().ok().and_then(|mut r| r.take(task_id, true));
                if let Some((run, took)) = run {
                    let _ = run.tx.send(RunEnd::Ran(Ok(result), took));
                }
                return;
            }
            FromWorker::Declined { task_id } => {
                let run = w.runs.lock().ok().and_then(|mut r| r.take(task_id, false));
                if let Some((run, _)) = run {
                    let _ = run.tx.send(RunEnd::Declined);
                }
                return;
            }
            FromWorker::Ready { .. } => return,
            FromWorker::Metrics(metrics) => {
                let mut table = self.user_metrics.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(why) = table.report(w.pid, metrics) {
                    tracing::warn!(pid = w.pid, "refused a worker's metrics report: {why:?}");
                }
                return;
            }
            FromWorker::GetObject {
                request,
                id,
                holders,
            } => WorkerRequest::Get {
                request,
                id,
                holders,
            },
            FromWorker::PutObject { request, id, value } => {
                WorkerRequest::Put { request, id, value }
            }
            FromWorker::LendSegment { request, id, len } => {
                WorkerRequest::Lend { request, id, len }
            }
            FromWorker::Blocked { task_id, blocked } => WorkerRequest::Blocked { task_id, blocked },
        };
        let _ = self.requests.send((w.clone(), request));
    }

    /// Kills every worker of `job`, except those holding detached actors.
    pub fn kill_job(&self, job: JobId) {
        let pids: Vec<u32> = self
            .live
            .iter()
            .filter(|w| w.job == job)
            .filter(|w| {
                !w.actor
                    .lock()
                    .ok()
                    .and_then(|a| *a)
                    .is_some_and(|b| b.detached)
            })
            .map(|w| w.pid)
            .collect();
        for pid in pids {
            kill(pid);
        }
    }

    /// Kills one worker (an actor's, on the head's order).
    pub fn kill_worker(&self, worker: &Worker) {
        kill(worker.pid);
    }

    /// Kills every worker.
    pub fn kill_all(&self) {
        let pids: Vec<u32> = self.live.iter().map(|w| w.pid).collect();
        for pid in pids {
            kill(pid);
        }
    }
}

/// How a worker whose socket closed ended: its exit status, waited for up to 2 s
/// before it is killed.
async fn reap(mut child: tokio::process::Child) -> String {
    match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        Ok(Ok(status)) => describe_exit(status),
        _ => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            "closed its socket and was killed".to_string()
        }
    }
}

/// A worker that printed nothing leaves no log files behind (a recursive job starts
/// hundreds of workers).
fn remove_empty_logs(log_base: &Path) {
    for ext in ["out", "err"] {
        let path = log_base.with_extension(ext);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn kill(pid: u32) {
    if pid > 0 {
        // SAFETY: kill(2) on a pid this pool started; a stale pid is at worst a no-op.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}

/// Says how a process ended, in words.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let name = match sig {
            libc::SIGKILL => "SIGKILL",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGABRT => "SIGABRT",
            libc::SIGTERM => "SIGTERM",
            libc::SIGBUS => "SIGBUS",
            _ => "signal",
        };
        format!("was killed by signal {sig} ({name})")
    } else {
        format!("exited with code {}", status.code().unwrap_or(-1))
    }
}
