//! The head's state machine: membership, jobs, tasks, the object directory and scheduling.
//!
//! One task owns this state and handles one [`HeadEvent`] at a time, so the tables
//! need no locks and every change is ordered. Network handling lives in
//! [`super::service`]; this module only reads events and queues messages to peers.
//!
//! The tables and the dispatch of messages are here; what the head does with them is
//! split by concern: [`membership`], [`tasks`], [`objects`], [`placement`], [`status`].

mod actors;
mod membership;
mod objects;
mod placement;
mod status;
mod tasks;
#[cfg(test)]
mod tests;

use super::clock::{Clock, SystemClock};
use super::directory::{Freed, ObjectDirectory, ObjectValue};
use super::scheduler::{dispatch_factor, is_feasible, pick_node, NodeView, SchedulingQueue};
use crate::ids::{BinaryHash, JobId, NodeId, ObjectId, PeerId, TaskId};
use crate::protocol::{
    ArgSource, AutoscalerReport, ClusterStatus, FromHead, NodeAddress, NodeLoad, NodeRegistration,
    NodeStatus, ObjectLocation, PeerRole, StoredValue, TaskArg, TaskAssignment, TaskError,
    TaskKind, TaskOutcome, TaskSpec, ToHead, Welcome,
};
use crate::resources::{ResourceSet, CPU};
use crate::transport::MessageSender;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Something that happened, for the head to act on.
pub enum HeadEvent {
    /// A peer finished its handshake.
    Connected {
        /// Id given to the connection.
        peer: PeerId,
        /// What it said it is.
        role: PeerRole,
        /// Where to send it messages.
        sender: MessageSender<FromHead>,
        /// Whether the head's binary store lacks a driver's binary.
        needs_binary: bool,
        /// The answer to send it.
        reply: oneshot::Sender<Welcome>,
    },
    /// A peer sent a message.
    Message(PeerId, ToHead),
    /// A peer's connection ended.
    Disconnected(PeerId, String),
    /// Time passed: check for nodes that stopped sending heartbeats.
    Tick,
}

enum PeerKind {
    Node(NodeId),
    Driver(JobId),
    Worker { job: JobId },
    Client,
}

struct Peer {
    kind: PeerKind,
    sender: MessageSender<FromHead>,
}

struct NodeEntry {
    reg: NodeRegistration,
    peer: PeerId,
    alive: bool,
    used: ResourceSet,
    running: HashSet<TaskId>,
    finished: u64,
    last_heartbeat: Instant,
    load: NodeLoad,
    /// What the head may assign it: its resources times `dispatch_factor(...)`.
    capacity: ResourceSet,
    /// Moving average of its tasks' run times, in seconds; `None` before the first.
    avg_run_secs: Option<f64>,
}

impl NodeEntry {
    fn note_run_time(&mut self, micros: u64) {
        let secs = micros as f64 / 1e6;
        let avg = match self.avg_run_secs {
            Some(avg) => 0.8 * avg + 0.2 * secs,
            None => secs,
        };
        self.avg_run_secs = Some(avg);
        self.capacity = self.reg.resources.scaled(dispatch_factor(avg));
    }
}

struct JobEntry {
    binary: BinaryHash,
    driver: PeerId,
    /// The job accepts tasks and workers: its driver is connected, or it has detached
    /// actors left.
    alive: bool,
    /// Its driver has exited (the job lives on only through detached actors).
    driver_gone: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    WaitingForArgs,
    Queued,
    Infeasible,
    Running(NodeId),
}

struct TaskEntry {
    spec: Arc<TaskSpec>,
    attempt: u32,
    state: TaskState,
    /// Arguments not yet ready.
    missing_args: usize,
    /// What the task holds on its node now (less its CPU while blocked in `get`).
    held: ResourceSet,
    blocked: bool,
    /// Times a node could not fetch an argument of this task.
    fetch_failures: u32,
    /// For actor calls: submission order and caller, to keep each caller's order.
    call: Option<(u64, PeerId)>,
}

impl TaskEntry {
    /// A task waiting for `missing_args` arguments, holding nothing yet.
    fn new(spec: Arc<TaskSpec>, attempt: u32, missing_args: usize) -> Self {
        TaskEntry {
            spec,
            attempt,
            state: TaskState::WaitingForArgs,
            missing_args,
            held: ResourceSet::new(),
            blocked: false,
            fetch_failures: 0,
            call: None,
        }
    }
}

/// Settings of the head.
#[derive(Debug, Clone)]
pub struct HeadSettings {
    /// The head process's own node id.
    pub head_node: NodeId,
    /// A node silent for this long is declared dead.
    pub node_timeout: Duration,
}

/// The head's tables and the logic that changes them.
pub struct HeadState {
    settings: HeadSettings,
    clock: Arc<dyn Clock>,
    peers: HashMap<PeerId, Peer>,
    nodes: HashMap<NodeId, NodeEntry>,
    jobs: HashMap<JobId, JobEntry>,
    tasks: HashMap<TaskId, TaskEntry>,
    objects: ObjectDirectory,
    queue: SchedulingQueue,
    /// Tasks waiting for each not-yet-ready object.
    dependents: HashMap<ObjectId, Vec<TaskId>>,
    finished_tasks: u64,
    turn: usize,
    /// Tasks to re-queue at a given time (after an argument fetch failed).
    delayed: Vec<(Instant, TaskId)>,
    actors: actors::ActorTable,
    /// The autoscaler's last report, for `rayish status`.
    autoscaler: Option<AutoscalerReport>,
    /// When heartbeats were last checked (to tell the head's own stalls apart).
    last_tick: Instant,
    /// Dead nodes still listed, oldest first (at most [`MAX_DEAD_NODES`]).
    dead_nodes: std::collections::VecDeque<NodeId>,
}

/// Dead nodes the head keeps listing (Ray's `maximum_gcs_dead_node_cached_count`).
const MAX_DEAD_NODES: usize = 1000;

impl HeadState {
    /// Empty tables, on the real clock.
    pub fn new(settings: HeadSettings) -> Self {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    /// Empty tables, reading the time from `clock`.
    pub fn with_clock(settings: HeadSettings, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now();
        Self {
            settings,
            clock,
            peers: HashMap::default(),
            nodes: HashMap::default(),
            jobs: HashMap::default(),
            tasks: HashMap::default(),
            objects: ObjectDirectory::default(),
            queue: SchedulingQueue::default(),
            dependents: HashMap::default(),
            finished_tasks: 0,
            turn: 0,
            delayed: Vec::new(),
            actors: actors::ActorTable::default(),
            autoscaler: None,
            last_tick: now,
            dead_nodes: std::collections::VecDeque::new(),
        }
    }

    /// Handles a batch of events that arrived together, then places what became
    /// runnable: one scheduling pass per batch rather than per message.
    pub fn handle_batch(&mut self, events: impl IntoIterator<Item = HeadEvent>) {
        for event in events {
            self.handle(event);
        }
        self.schedule();
    }

    /// Handles one event (callers must then schedule: see [`Self::handle_batch`]).
    fn handle(&mut self, event: HeadEvent) {
        match event {
            HeadEvent::Connected {
                peer,
                role,
                sender,
                needs_binary,
                reply,
            } => {
                let welcome = self.connect(peer, role, sender, needs_binary);
                let _ = reply.send(welcome);
            }
            HeadEvent::Message(peer, msg) => self.message(peer, msg),
            HeadEvent::Disconnected(peer, reason) => self.disconnect(peer, &reason),
            HeadEvent::Tick => self.check_heartbeats(),
        }
    }

    fn send(&self, peer: PeerId, msg: FromHead) {
        if let Some(p) = self.peers.get(&peer) {
            p.sender.send(msg);
        }
    }

    /// Whether some live node could ever run a task needing `shape`.
    fn feasible(&self, shape: &ResourceSet) -> bool {
        is_feasible(
            self.nodes
                .values()
                .filter(|n| n.alive)
                .map(|n| &n.reg.resources),
            shape,
        )
    }

    fn peer_job(&self, peer: PeerId) -> Option<JobId> {
        match self.peers.get(&peer)?.kind {
            PeerKind::Driver(job) | PeerKind::Worker { job } => Some(job),
            _ => None,
        }
    }

    fn peer_node(&self, peer: PeerId) -> Option<NodeId> {
        match self.peers.get(&peer)?.kind {
            PeerKind::Node(node) => Some(node),
            _ => None,
        }
    }

    /// A `put` from `peer`: objects are made by processes of a job, and written once.
    fn put(&mut self, peer: PeerId, id: ObjectId, value: ObjectValue) {
        if self.peer_job(peer).is_none() {
            tracing::warn!(
                ?peer,
                "a put from a peer that is not a driver or worker; ignored"
            );
        } else if self.objects.put_once(id, value, peer) {
            self.object_ready(id);
        } else {
            tracing::warn!(?peer, object = ?id, "a put of an object that already has a value; ignored");
        }
    }

    /// Whether `task` belongs to `peer`'s job (a worker reports its own task's blocks).
    fn runs_for_peer(&self, peer: PeerId, task: TaskId) -> bool {
        let job = self.peer_job(peer);
        job.is_some() && self.tasks.get(&task).map(|t| t.spec.job) == job
    }

    fn message(&mut self, peer: PeerId, msg: ToHead) {
        let mut freed = Freed::default();
        match msg {
            ToHead::SubmitTasks(specs) => {
                let Some(job) = self.peer_job(peer) else {
                    tracing::warn!(
                        ?peer,
                        "task submission from a peer that is not a driver or worker; ignored"
                    );
                    return;
                };
                for spec in specs {
                    if spec.job != job {
                        tracing::warn!(?peer, "task for another job; ignored");
                        continue;
                    }
                    self.submit(peer, spec);
                }
            }
            ToHead::PutInline { id, value } => self.put(peer, id, ObjectValue::Inline(value)),
            ToHead::PutStored { id, node, size } => {
                let value = ObjectValue::OnNodes {
                    nodes: HashSet::from_iter([node]),
                    size,
                };
                self.put(peer, id, value)
            }
            ToHead::Nest { outer, inner } => self.objects.nest(outer, inner),
            ToHead::AddRefs(ids) => {
                for id in ids {
                    self.objects.add_holder(peer, id);
                }
            }
            ToHead::RemoveRefs(ids) => {
                for id in ids {
                    self.objects.remove_holder(peer, id, &mut freed);
                }
            }
            ToHead::Subscribe(ids) => {
                for id in ids {
                    self.subscribe(peer, id);
                }
            }
            ToHead::TaskBlocked(task) | ToHead::TaskUnblocked(task)
                if !self.runs_for_peer(peer, task) =>
            {
                tracing::warn!(
                    ?peer,
                    ?task,
                    "block report about a task of another job; ignored"
                );
            }
            ToHead::TaskBlocked(task) => self.set_blocked(task, true),
            ToHead::TaskUnblocked(task) => self.set_blocked(task, false),
            ToHead::Heartbeat(load) => {
                if let Some(node) = self.peer_node(peer).and_then(|n| self.nodes.get_mut(&n)) {
                    node.last_heartbeat = self.clock.now();
                    node.load = load;
                }
            }
            ToHead::TaskFinished {
                task_id,
                attempt,
                outcome,
                run_micros,
            } => {
                if let Some(node) = self.peer_node(peer) {
                    if let Some(entry) = self.nodes.get_mut(&node) {
                        entry.note_run_time(run_micros);
                    }
                    self.task_finished(node, task_id, attempt, outcome);
                }
            }
            ToHead::ObjectCopied(id) => {
                if let Some(node) = self.peer_node(peer) {
                    if let Some(ObjectValue::OnNodes { nodes, .. }) =
                        self.objects.get_mut(&id).map(|e| &mut e.value)
                    {
                        nodes.insert(node);
                    } else {
                        // Freed meanwhile: the copy is garbage.
                        self.send(peer, FromHead::DeleteObjects(vec![id]));
                    }
                }
            }
            ToHead::Goodbye => {
                // Answer first: the peer waits for this before it exits.
                self.send(peer, FromHead::Farewell);
                self.disconnect(peer, "the process exited");
                return;
            }
            ToHead::StatusRequest => {
                let status = self.status();
                self.send(peer, FromHead::Status(Box::new(status)));
            }
            ToHead::AutoscalerReport(report) => self.autoscaler = Some(*report),
            ToHead::Sync(n) => self.send(peer, FromHead::Synced(n)),
            ToHead::GetActor { request, name } => {
                let result = self.find_actor(peer, &name);
                self.send(peer, FromHead::ActorFound { request, result });
            }
            ToHead::KillActor { actor, no_restart } => {
                if self.peer_job(peer).is_some() {
                    self.kill_actor(actor, no_restart);
                }
            }
            ToHead::ActorDied { actor, reason } => {
                if let Some(node) = self.peer_node(peer) {
                    self.actor_process_died(node, actor, reason);
                }
            }
        }
        self.apply_freed(freed);
        // No scheduling here: `handle_batch` schedules once per batch of messages.
    }
}
