//! A node (Ray's raylet): joins the head, runs the tasks the head assigns to it in
//! worker processes, holds the large objects they make, and serves them to others.
//!
//! Architecture invariant: a node acts only on what the head tells it (and on its
//! workers' requests); it never schedules and never decodes object values.

mod task_queue;
pub mod worker_pool;

use crate::object_store::{ObjectStore, StoreError, FREE_SEGMENT_IDLE};

use crate::binaries::BinaryCache;
use crate::ids::{ActorId, BinaryHash, NodeId, ObjectId, TaskId};
use crate::protocol::{
    ArgSource, FromHead, Hello, NodeAddress, NodeLoad, NodeRegistration, PeerRole, PutError,
    RunKind, StoredValue, TaskArg, TaskAssignment, TaskError, TaskKind, TaskOutcome, ToHead,
    ToWorker, WorkerValue, INLINE_OBJECT_MAX,
};
use crate::resources::ResourceSet;
use crate::transfer::{fetch_binary, pull_object_into, TransferError};
use crate::transport::{
    connect, open_control, ConnectError, Endpoint, HandshakeError, InProcessHead, MessageSender,
    PeerConnections,
};
use bytes::Bytes;
use dashmap::DashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use worker_pool::{
    ActorBinding, RunEnd, RunResult, Worker, WorkerCall, WorkerEnv, WorkerPool, WorkerRequest,
};

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The head's address.
    pub head: SocketAddr,
    /// Where peers reach this node's object server (its endpoint's address).
    pub address: SocketAddr,
    /// What it offers to tasks.
    pub resources: ResourceSet,
    /// The cluster key derived from the token (handed to workers instead of it).
    pub cluster_key: crate::transport::tls::ClusterKey,
    /// Where worker logs go.
    pub log_dir: PathBuf,
    /// Where job binaries are cached.
    pub binaries: BinaryCache,
    /// How long connection attempts wait.
    pub connect_timeout: Duration,
    /// Heartbeats go out at a fifth of this; connections to other nodes are dropped
    /// after this much silence.
    pub node_timeout: Duration,
    /// How long this node (and its workers) wait for a silent head.
    pub head_reconnect_timeout: Duration,
}

/// Why a node could not join.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The head could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The head refused.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

struct NodeInner {
    cfg: NodeConfig,
    store: Arc<ObjectStore>,
    /// QUIC connection to the head, for fetching binaries; `None` for the head's own
    /// node, which shares the head's binary cache.
    head_conn: Option<quinn::Connection>,
    head: MessageSender<ToHead>,
    pool: Arc<WorkerPool>,
    queue: task_queue::LocalTaskQueue,
    peers: PeerConnections,
    /// Binaries known to be in the cache (saves a stat per task).
    known_binaries: DashMap<BinaryHash, PathBuf>,
    /// The binary of each job that ran here, pinned in the cache until the job ends.
    job_binaries: DashMap<crate::ids::JobId, BinaryHash>,
    binary_fetch: tokio::sync::Mutex<()>,
    /// Actors living in this node's workers.
    actors: DashMap<ActorId, LocalActor>,
    /// Moving average of its function calls' run times, in microseconds (0 before
    /// the first): tasks get followers only while they are short.
    avg_run_micros: std::sync::atomic::AtomicU64,
}

/// A worker taken for function calls of one job and shape, run back to back: the
/// first call, then followers (see `task_queue`), until none is left.
struct Lease {
    worker: Arc<Worker>,
    /// The first call: followers must have its job, binary and shape.
    like: TaskAssignment,
}

/// Tasks shorter than this on average get a follower on their worker (see
/// `task_queue`): for them the node's round trip between two tasks is a large part
/// of the work. Longer ones would only make the follower wait. The same bound as
/// the head's deepest `dispatch_factor`.
const FOLLOW_BELOW_MICROS: u64 = 2_000;

/// How often a node marks its live jobs' binaries as used (see `BinaryCache::touch`).
const BINARY_TOUCH_EVERY: Duration = Duration::from_secs(60);

/// An actor call sent to its worker (or refused before), waiting to be reported.
struct SentCall {
    task_id: TaskId,
    attempt: u32,
    function: String,
    return_id: ObjectId,
    sent_at: std::time::Instant,
    run: SentRun,
}

enum SentRun {
    /// Its arguments could not be had: this is its outcome.
    Refused(TaskOutcome),
    /// On the worker: its result, when it comes.
    Running(std::pin::Pin<Box<dyn std::future::Future<Output = RunResult> + Send>>),
}

/// The arguments of `a` if every one came with it (nothing to fetch).
fn inline_args(a: &TaskAssignment) -> Option<Vec<WorkerValue>> {
    a.spec
        .args
        .iter()
        .zip(&a.sources)
        .map(|(arg, source)| match (arg, source) {
            (TaskArg::Value(v), _) | (TaskArg::Ref(_), ArgSource::Inline(v)) => {
                Some(WorkerValue::Inline(v.clone()))
            }
            _ => None,
        })
        .collect()
}

/// An actor held by one of this node's workers.
struct LocalActor {
    worker: Arc<Worker>,
    /// Its calls that need arguments fetched, in the order the head sent them; one
    /// task serves them in turn.
    calls: tokio::sync::mpsc::UnboundedSender<TaskAssignment>,
    /// How many of those are not yet sent to the worker.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// Calls sent to the worker, in order, for their results to be reported.
    sent: tokio::sync::mpsc::UnboundedSender<SentCall>,
    /// The creation task, whose resources the actor holds until it dies.
    creation: TaskId,
}

/// A running node.
pub struct RunningNode {
    inner: Arc<NodeInner>,
    ended: tokio::sync::oneshot::Receiver<String>,
}

impl RunningNode {
    /// Waits until the node's link to the head ends, and says why.
    pub async fn closed(&mut self) -> String {
        (&mut self.ended)
            .await
            .unwrap_or_else(|_| "node stopped".into())
    }

    /// Kills the node's workers (on shutdown).
    pub fn kill_workers(&self) {
        self.inner.pool.kill_all();
    }

    /// Ends this incarnation of the node: kills its workers and drops its objects and
    /// their files (before it joins again as a new node, or exits).
    pub fn close(&self) {
        self.inner.pool.kill_all();
        self.inner.store.close();
    }

    /// The node's object store (a driver in the same process reads and writes it
    /// directly, as Ray's drivers use their node's plasma store).
    pub fn store(&self) -> Arc<ObjectStore> {
        self.inner.store.clone()
    }

    /// A handle that can kill the node's workers while another task waits on [`Self::closed`].
    pub fn workers(&self) -> Arc<WorkerPool> {
        self.inner.pool.clone()
    }
}

/// Joins the cluster and starts serving. The endpoint's listener must route transfer
/// streams to `store` (see [`crate::server`]).
///
/// `local_head` is the head of this same process, if it is the head process: the node
/// then talks to it in memory.
pub async fn start_node(
    cfg: NodeConfig,
    endpoint: Endpoint,
    store: Arc<ObjectStore>,
    local_head: Option<Arc<dyn InProcessHead>>,
) -> Result<RunningNode, NodeError> {
    let reg = NodeRegistration {
        node_id: cfg.node_id,
        address: cfg.address,
        resources: cfg.resources.clone(),
        hostname: crate::session::hostname(),
        pid: std::process::id(),
        worker_key: rand::random(),
    };
    let worker_key = reg.worker_key;
    let hello = Hello {
        role: PeerRole::Node(reg),
        software_version: env!("CARGO_PKG_VERSION").into(),
    };
    let (head_conn, control) = match local_head {
        Some(head) => (None, head.open(hello).await?),
        None => {
            let conn = connect(&endpoint, cfg.head, cfg.connect_timeout).await?;
            let control = open_control(&conn, hello).await?;
            (Some(conn), control)
        }
    };
    let (req_tx, mut req_rx) = tokio::sync::mpsc::unbounded_channel();
    let env = WorkerEnv {
        head: cfg.head,
        cluster_key: cfg.cluster_key.clone(),
        node: cfg.node_id,
        node_address: cfg.address,
        log_dir: cfg.log_dir.clone(),
        shm_dir: store.shm_dir().map(|d| d.to_path_buf()),
        head_reconnect_timeout: cfg.head_reconnect_timeout,
        worker_key,
    };
    let pool = Arc::new(WorkerPool::new(env, req_tx));
    let cfg_resources = cfg.resources.clone();
    let tls = crate::transport::tls::ClusterTls::from_key(&cfg.cluster_key)
        .map_err(ConnectError::from)?;
    let peer_client = crate::transport::client_config(&tls, cfg.node_timeout, cfg.address)?;
    let peers = PeerConnections::new(endpoint.clone(), peer_client, cfg.connect_timeout);
    let inner = Arc::new(NodeInner {
        cfg,
        store,
        head_conn,
        head: control.sender,
        pool,
        queue: task_queue::LocalTaskQueue::new(cfg_resources),
        peers,
        known_binaries: DashMap::new(),
        job_binaries: DashMap::new(),
        binary_fetch: tokio::sync::Mutex::new(()),
        actors: DashMap::new(),
        avg_run_micros: std::sync::atomic::AtomicU64::new(0),
    });
    tracing::info!(node = ?inner.cfg.node_id, head = %inner.cfg.head, "joined the cluster");

    // Heartbeats.
    let hb = inner.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(hb.cfg.node_timeout / 5);
        let mut last_touch = std::time::Instant::now();
        loop {
            interval.tick().await;
            // Binaries of live jobs look recently used to every process of this
            // machine that shares the cache, so none of them evicts one.
            if last_touch.elapsed() > BINARY_TOUCH_EVERY {
                last_touch = std::time::Instant::now();
                hb.cfg.binaries.touch_pinned();
            }
            let load = NodeLoad {
                store_objects: hb.store.len() as u64,
                store_bytes: hb.store.bytes(),
                store_free_bytes: hb.store.free_bytes(),
                store_reused: hb.store.reused(),
                workers: hb.pool.len() as u64,
            };
            hb.store.trim_free(FREE_SEGMENT_IDLE);
            if !hb.head.send(ToHead::Heartbeat(load)) {
                break;
            }
        }
    });

    // Requests from workers.
    let rq = inner.clone();
    tokio::spawn(async move {
        while let Some((worker, request)) = req_rx.recv().await {
            match request {
                WorkerRequest::Blocked { task_id, blocked } => {
                    // In order: a resume must never overtake its block.
                    let start = rq.queue.set_blocked(task_id, blocked);
                    rq.start(start);
                    continue;
                }
                WorkerRequest::ActorDied { actor, reason } => {
                    rq.actor_died(actor, reason);
                    continue;
                }
                _ => {}
            }
            let node = rq.clone();
            tokio::spawn(async move { node.serve_worker(worker, request).await });
        }
    });

    // Orders from the head.
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    let node = inner.clone();
    let mut reader = control.reader;
    tokio::spawn(async move {
        let reason = loop {
            match reader.next().await {
                Ok(Some(FromHead::Execute(assignment))) => {
                    if let TaskKind::ActorCall(actor) = assignment.spec.kind {
                        node.actor_call(actor, *assignment);
                    } else {
                        let start = node.queue.push(*assignment);
                        node.start(start);
                    }
                }
                Ok(Some(FromHead::KillActor(actor))) => {
                    if let Some(a) = node.actors.get(&actor) {
                        tracing::info!(
                            ?actor,
                            pid = a.worker.pid(),
                            "killing actor on the head's order"
                        );
                        node.pool.kill_worker(&a.worker);
                    }
                }
                Ok(Some(FromHead::DeleteObjects(ids))) => {
                    for id in ids {
                        node.store.remove(&id);
                    }
                }
                Ok(Some(FromHead::JobEnded(job))) => {
                    node.queue.drop_job(job);
                    node.pool.kill_job(job);
                    if let Some((_, hash)) = node.job_binaries.remove(&job) {
                        node.cfg.binaries.unpin(&hash);
                        if !node.cfg.binaries.is_pinned(&hash) {
                            node.known_binaries.remove(&hash);
                        }
                    }
                }
                Ok(Some(FromHead::NodeDead(reason))) => {
                    break format!("the head declared this node dead ({reason})")
                }
                Ok(Some(other)) => tracing::debug!("ignoring {other:?}"),
                Ok(None) => break "the head closed the connection".to_string(),
                Err(e) => break format!("lost the head: {e}"),
            }
        };
        node.pool.kill_all();
        let _ = ended_tx.send(reason);
    });
    Ok(RunningNode { inner, ended })
}

impl NodeInner {
    fn start(self: &Arc<Self>, tasks: Vec<TaskAssignment>) {
        for task in tasks {
            let follower = self.follower_for(task.spec.task_id, &task);
            let node = self.clone();
            tokio::spawn(async move { node.execute(task, follower).await });
        }
    }

    /// A waiting task to send behind `running` (a call like `like`) on its worker,
    /// while tasks are short: a function call of the same job, binary and shape with
    /// nothing to fetch.
    fn follower_for(&self, running: TaskId, like: &TaskAssignment) -> Option<TaskAssignment> {
        use std::sync::atomic::Ordering::Relaxed;
        let avg = self.avg_run_micros.load(Relaxed);
        if like.spec.kind != TaskKind::Function || avg == 0 || avg >= FOLLOW_BELOW_MICROS {
            return None;
        }
        self.queue
            .take_follower(running, like.spec.job, &like.spec.resources, |t| {
                t.spec.kind == TaskKind::Function
                    && t.binary == like.binary
                    && inline_args(t).is_some()
            })
    }

    async fn execute(self: Arc<Self>, a: TaskAssignment, follower: Option<TaskAssignment>) {
        let task_id = a.spec.task_id;
        let attempt = a.attempt;
        let mut run_time = Duration::ZERO;
        let mut lease = None;
        let (outcome, actor_started) = self
            .clone()
            .run(a, follower, &mut run_time, &mut lease)
            .await;
        // The worker goes back to the pool before `finished` starts the next tasks, or
        // they would find none idle and start a process (and load its models) for
        // nothing.
        if let Some(lease) = &lease {
            self.pool.release(&lease.worker);
        }
        // A live actor keeps its creation's resources until it dies (`actor_died`).
        self.finished(
            task_id,
            attempt,
            outcome,
            run_time,
            !actor_started,
            lease.as_ref(),
        );
    }

    /// A task ended here: frees its share (unless an actor now holds it) or passes it
    /// to its follower, which then gets a follower of its own; starts what fits;
    /// reports the task.
    fn finished(
        self: &Arc<Self>,
        task_id: TaskId,
        attempt: u32,
        outcome: TaskOutcome,
        run_time: Duration,
        free: bool,
        lease: Option<&Arc<Lease>>,
    ) {
        let run_micros = run_time.as_micros() as u64;
        if free {
            use std::sync::atomic::Ordering::Relaxed;
            let avg = self.avg_run_micros.load(Relaxed);
            let avg = if avg == 0 {
                run_micros
            } else {
                (avg * 4 + run_micros) / 5
            };
            self.avg_run_micros.store(avg.max(1), Relaxed);
            let (next, promoted) = self.queue.finish_promoting(task_id);
            if let (Some(running), Some(lease)) = (promoted, lease) {
                if let Some(f) = self.follower_for(running, &lease.like) {
                    self.send_follower(lease, f);
                }
            }
            self.start(next);
        }
        self.head.send(ToHead::TaskFinished {
            task_id,
            attempt,
            outcome,
            run_micros,
        });
    }

    /// A follower that will not run behind its leader waits in the queue again.
    fn give_back(self: &Arc<Self>, follower: Option<TaskAssignment>) {
        if let Some(f) = follower {
            let start = self.queue.give_back(f);
            self.start(start);
        }
    }

    /// Sends follower `f` to the lease's worker, behind what it runs, and awaits its
    /// end on a task of its own: it may come back while the task before it still runs.
    fn send_follower(self: &Arc<Self>, lease: &Arc<Lease>, f: TaskAssignment) {
        let Some(args) = inline_args(&f) else {
            return self.give_back(Some(f));
        };
        let call = WorkerCall {
            task_id: f.spec.task_id,
            function: f.spec.function.clone(),
            args,
            return_id: f.spec.return_id,
        };
        let end = self
            .pool
            .send_call(&lease.worker, call, RunKind::Function, true);
        let node = self.clone();
        let lease = lease.clone();
        tokio::spawn(async move {
            match end.await {
                RunEnd::Ran(result, took) => {
                    let function = f.spec.function.clone();
                    let outcome = node.outcome_of(result, f.spec.return_id, function);
                    node.pool.release(&lease.worker);
                    node.finished(f.spec.task_id, f.attempt, outcome, took, true, Some(&lease));
                }
                RunEnd::Declined => {
                    tracing::info!(task = ?f.spec.task_id, "a follower came back unrun (the task before it blocked, or its worker died); queued again");
                    node.pool.release(&lease.worker);
                    node.give_back(Some(f));
                }
            }
        });
    }

    /// Runs an assignment (a function call or an actor's creation); `run_time` gets
    /// the worker's share (start-up and argument fetching excluded: the head uses it
    /// to judge how short tasks are). The flag says an actor now lives here.
    async fn run(
        self: Arc<Self>,
        a: TaskAssignment,
        follower: Option<TaskAssignment>,
        run_time: &mut Duration,
        lease: &mut Option<Arc<Lease>>,
    ) -> (TaskOutcome, bool) {
        let binary = match self.binary(&a.binary).await {
            Ok(path) => {
                if let dashmap::Entry::Vacant(e) = self.job_binaries.entry(a.spec.job) {
                    self.cfg.binaries.pin(&a.binary);
                    e.insert(a.binary.clone());
                }
                path
            }
            Err(e) => {
                self.give_back(follower);
                let reason = format!("cannot get the job's binary: {e}");
                return (TaskOutcome::WorkerDied(reason), false);
            }
        };
        let args = match self.resolve_args(&a).await {
            Ok(args) => args,
            Err(outcome) => {
                self.give_back(follower);
                return (outcome, false);
            }
        };
        let function = a.spec.function.clone();
        let return_id = a.spec.return_id;
        let call = WorkerCall {
            task_id: a.spec.task_id,
            function: a.spec.function.clone(),
            args,
            return_id,
        };
        let (result, took, actor) = match &a.spec.kind {
            TaskKind::CreateActor(c) => {
                let binding = ActorBinding {
                    actor: c.actor,
                    detached: c.detached,
                };
                let (result, took, worker) = self
                    .pool
                    .start_actor(a.spec.job, &binary, binding, call)
                    .await;
                (result, took, worker.map(|w| (c.actor, w)))
            }
            _ => {
                let worker = match self.pool.worker_for(a.spec.job, &binary).await {
                    Ok(w) => w,
                    Err(e) => {
                        self.give_back(follower);
                        return (TaskOutcome::WorkerDied(e), false);
                    }
                };
                let this = Arc::new(Lease {
                    worker,
                    // Only its job, binary and shape are read: no argument copies.
                    like: TaskAssignment {
                        spec: a.spec.clone(),
                        attempt: a.attempt,
                        sources: Vec::new(),
                        binary: a.binary.clone(),
                    },
                });
                let end = self
                    .pool
                    .send_call(&this.worker, call, RunKind::Function, false);
                if let Some(f) = follower {
                    self.send_follower(&this, f);
                }
                *lease = Some(this);
                let (result, took) = end.await.into_result();
                (result, took, None)
            }
        };
        *run_time = took;
        let started = actor.is_some();
        if let Some((actor, worker)) = actor {
            self.clone().host_actor(actor, worker, a.spec.task_id);
        }
        (self.outcome_of(result, return_id, function), started)
    }

    /// A stored object as a worker of this node receives it: the shared segment it
    /// can map, or (without one) a copy.
    fn worker_value(&self, id: ObjectId, value: Bytes) -> WorkerValue {
        match self.store.shared(&id) {
            Some(shared) => WorkerValue::Shared {
                path: shared.path,
                len: shared.len,
            },
            None => WorkerValue::Inline(value.to_vec()),
        }
    }

    /// The values of a task's arguments, pulled from their holders where needed.
    async fn resolve_args(&self, a: &TaskAssignment) -> Result<Vec<WorkerValue>, TaskOutcome> {
        let mut args = Vec::with_capacity(a.spec.args.len());
        for (arg, source) in a.spec.args.iter().zip(&a.sources) {
            let value = match (arg, source) {
                (TaskArg::Value(v), _) => WorkerValue::Inline(v.clone()),
                (TaskArg::Ref(_), ArgSource::Inline(v)) => WorkerValue::Inline(v.clone()),
                (TaskArg::Ref(id), ArgSource::At(holders)) => {
                    match self.object(*id, holders).await {
                        Ok(v) => self.worker_value(*id, v),
                        // The holder may have died: let the head re-run us once it knows.
                        Err(e) => {
                            return Err(TaskOutcome::ArgumentUnavailable {
                                object: *id,
                                reason: e.to_string(),
                            })
                        }
                    }
                }
                (TaskArg::Ref(id), ArgSource::InSpec) => {
                    return Err(TaskOutcome::Failed(TaskError::ObjectLost {
                        object: *id,
                        reason: "the head sent no location for it".into(),
                    }))
                }
            };
            args.push(value);
        }
        Ok(args)
    }

    /// Turns what a worker gave back into the outcome reported to the head, keeping a
    /// large value in this node's store.
    fn outcome_of(&self, result: RunResult, return_id: ObjectId, function: String) -> TaskOutcome {
        let (stored, size) = match result {
            Err(reason) => return TaskOutcome::WorkerDied(reason),
            Ok(Err(e)) => return TaskOutcome::Failed(e),
            Ok(Ok(WorkerValue::Inline(value))) if value.len() <= INLINE_OBJECT_MAX => {
                return TaskOutcome::Stored(StoredValue::Inline(value))
            }
            Ok(Ok(WorkerValue::Inline(value))) => {
                let size = value.len() as u64;
                (self.store.insert(return_id, Bytes::from(value)), size)
            }
            Ok(Ok(WorkerValue::Shared { path, len })) => {
                (self.store.insert_segment(return_id, path, len), len)
            }
        };
        match stored {
            Ok(()) => TaskOutcome::Stored(StoredValue::OnNode { size }),
            Err(e) => TaskOutcome::Failed(TaskError::Failed {
                function,
                message: format!("its result could not be stored: {e}"),
                node: format!("{} at {}", self.cfg.node_id, self.cfg.address),
            }),
        }
    }

    /// Registers an actor whose constructor has just succeeded in `worker`, and starts
    /// the task that serves its calls one at a time, in the order they arrive.
    fn host_actor(self: Arc<Self>, actor: ActorId, worker: Arc<Worker>, creation: TaskId) {
        // Calls go to the worker as soon as their arguments are here, without waiting
        // for the one before to end (the worker runs them in order); their results are
        // reported in that same order by a second task. A call whose arguments are all
        // at hand, with none waiting before it, skips the first task (`actor_call`).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<TaskAssignment>();
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<SentCall>();
        let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        self.actors.insert(
            actor,
            LocalActor {
                worker: worker.clone(),
                calls: tx,
                waiting: waiting.clone(),
                sent: sent_tx.clone(),
                creation,
            },
        );
        let node = self.clone();
        tokio::spawn(async move {
            let mut last_end = std::time::Instant::now();
            while let Some(call) = sent_rx.recv().await {
                let outcome = match call.run {
                    SentRun::Refused(outcome) => outcome,
                    SentRun::Running(result) => {
                        node.outcome_of(result.await, call.return_id, call.function)
                    }
                };
                // Time on the worker: from when it could start (sent, and the call
                // before it ended) to its end.
                let end = std::time::Instant::now();
                let started = call.sent_at.max(last_end);
                last_end = end;
                node.head.send(ToHead::TaskFinished {
                    task_id: call.task_id,
                    attempt: call.attempt,
                    outcome,
                    run_micros: end.duration_since(started).as_micros() as u64,
                });
            }
        });
        tokio::spawn(async move {
            while let Some(a) = rx.recv().await {
                let args = self.resolve_args(&a).await;
                let sent = self.send_call(&worker, a, args);
                // Counted down only once sent, so that a call taking the short way in
                // `actor_call` never overtakes this one.
                let gone = sent_tx.send(sent).is_err();
                waiting.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                if gone {
                    break;
                }
            }
        });
    }

    /// Sends a call whose arguments are resolved (or could not be) to its actor's
    /// worker.
    fn send_call(
        &self,
        worker: &Arc<Worker>,
        a: TaskAssignment,
        args: Result<Vec<WorkerValue>, TaskOutcome>,
    ) -> SentCall {
        let run = match args {
            Err(outcome) => SentRun::Refused(outcome),
            Ok(args) => {
                let call = WorkerCall {
                    task_id: a.spec.task_id,
                    function: a.spec.function.clone(),
                    args,
                    return_id: a.spec.return_id,
                };
                SentRun::Running(Box::pin(self.pool.send_run(
                    worker,
                    call,
                    RunKind::ActorMethod,
                )))
            }
        };
        SentCall {
            task_id: a.spec.task_id,
            attempt: a.attempt,
            function: a.spec.function.clone(),
            return_id: a.spec.return_id,
            run,
            sent_at: std::time::Instant::now(),
        }
    }

    /// Hands a call to its actor: straight to its worker if nothing waits before it
    /// and its arguments are in the spec, else to the actor's queue. A call for an
    /// actor not (or no longer) here goes back to the head as a lost worker, for it to
    /// retry or fail.
    fn actor_call(&self, actor: ActorId, a: TaskAssignment) {
        let (task_id, attempt) = (a.spec.task_id, a.attempt);
        let refused = match self.actors.get(&actor) {
            Some(local) => {
                let at_hand = (local.waiting.load(std::sync::atomic::Ordering::Acquire) == 0)
                    .then(|| inline_args(&a))
                    .flatten();
                match at_hand {
                    Some(args) => {
                        let sent = self.send_call(&local.worker, a, Ok(args));
                        local.sent.send(sent).is_err()
                    }
                    None => {
                        local
                            .waiting
                            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        local.calls.send(a).is_err()
                    }
                }
            }
            None => true,
        };
        if refused {
            self.head.send(ToHead::TaskFinished {
                task_id,
                attempt,
                outcome: TaskOutcome::WorkerDied(format!(
                    "actor {actor} has no live process on node {}",
                    self.cfg.node_id
                )),
                run_micros: 0,
            });
        }
    }

    /// An actor's process ended: release what it held and tell the head. Calls still
    /// queued for it fail as their turn comes (the worker is gone).
    fn actor_died(self: &Arc<Self>, actor: ActorId, reason: String) {
        if let Some((_, local)) = self.actors.remove(&actor) {
            let next = self.queue.finish(local.creation);
            self.start(next);
        }
        self.head.send(ToHead::ActorDied { actor, reason });
    }

    async fn binary(&self, hash: &BinaryHash) -> Result<PathBuf, TransferError> {
        if let Some(path) = self.known_binaries.get(hash) {
            return Ok(path.clone());
        }
        // One look-up or fetch at a time: the second waiter then finds it known.
        let _guard = self.binary_fetch.lock().await;
        if let Some(path) = self.known_binaries.get(hash) {
            return Ok(path.clone());
        }
        let path = self.cfg.binaries.path(hash)?;
        // A file already there is executed only once it hashes to its name: the
        // cache is private to this user (see `session::ensure_private_dir`), and this
        // check, once per process and binary, catches anything put there before.
        // A file already there runs only once it hashed to its name in this process
        // (see `BinaryCache::contains`): the cache is private to this user, and the
        // check catches anything put there before.
        let cache = self.cfg.binaries.clone();
        let wanted = hash.clone();
        let cached = tokio::task::spawn_blocking(move || cache.contains(&wanted))
            .await
            .map_err(|e| TransferError::Stream(e.to_string()))?;
        if cached {
            self.known_binaries.insert(hash.clone(), path.clone());
            return Ok(path);
        }
        tracing::info!(%hash, "fetching a job binary from the head");
        let Some(conn) = &self.head_conn else {
            return Err(TransferError::Stream(format!(
                "binary {hash} is not in the head's cache {} (or failed its check)",
                path.display()
            )));
        };
        let path = fetch_binary(conn, hash, &self.cfg.binaries).await?;
        self.known_binaries.insert(hash.clone(), path.clone());
        Ok(path)
    }

    /// The value of `id`, pulled from a holder if it is not here.
    async fn object(&self, id: ObjectId, holders: &[NodeAddress]) -> Result<Bytes, TransferError> {
        if let Some(v) = self.store.get(&id) {
            return Ok(v);
        }
        let mut last = None;
        for holder in holders.iter().filter(|h| h.node != self.cfg.node_id) {
            match self.pull_from(holder.address, id).await {
                Ok(value) => {
                    self.head.send(ToHead::ObjectCopied(id));
                    return Ok(value);
                }
                Err(e) => {
                    tracing::warn!(object = ?id, holder = %holder.address, "pull failed: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| TransferError::Stream("no live node holds the object".into())))
    }

    /// Pulls `id` from `addr` straight into this node's store.
    async fn pull_from(&self, addr: SocketAddr, id: ObjectId) -> Result<Bytes, TransferError> {
        let conn = self
            .peers
            .get(addr)
            .await
            .map_err(|e| TransferError::Stream(e.to_string()))?;
        pull_object_into(&conn, id, &self.store).await
    }

    async fn serve_worker(self: Arc<Self>, worker: Arc<Worker>, request: WorkerRequest) {
        match request {
            // Handled in order by the request loop, never here.
            WorkerRequest::Blocked { .. } | WorkerRequest::ActorDied { .. } => {}
            WorkerRequest::Get {
                request,
                id,
                holders,
            } => {
                let value = self
                    .object(id, &holders)
                    .await
                    .map(|b| self.worker_value(id, b))
                    .map_err(|e| e.to_string());
                worker.reply(ToWorker::Object { request, value });
            }
            WorkerRequest::Lend { request, id, len } => {
                let path = usize::try_from(len)
                    .ok()
                    .and_then(|len| self.store.lend(id, len));
                worker.reply(ToWorker::Lent { request, path });
            }
            WorkerRequest::Put { request, id, value } => {
                let result = match value {
                    WorkerValue::Inline(v) => self.store.insert(id, Bytes::from(v)),
                    WorkerValue::Shared { path, len } => self.store.insert_segment(id, path, len),
                };
                let result = result.map_err(|e| match e {
                    StoreError::Full { .. } => PutError::StoreFull(e.to_string()),
                    other => PutError::Failed(other.to_string()),
                });
                worker.reply(ToWorker::PutDone { request, result });
            }
        }
    }
}
