//! The head's state machine: membership, jobs, tasks, the object directory and scheduling.
//!
//! One task owns this state and handles one [`HeadEvent`] at a time, so the tables
//! need no locks and every change is ordered. Network handling lives in
//! [`super::service`]; this module only reads events and queues messages to peers.
//!
//! Each table owns its file and its fields, and keeps its own invariant through its
//! methods: [`peer_table`], [`node_table`], [`job_table`], [`task_table`],
//! [`actor_table`], with the objects in [`object_table`] and the
//! scheduling queue in [`super::scheduler`]. What the head does across tables is
//! split by concern into `impl HeadState` blocks: [`membership`], [`tasks`],
//! [`objects`], [`placement`], [`actors`], [`status`], [`agent_relay`],
//! [`durable`] for what outlives the head's process, [`resume`] for a driver
//! back from a head restart and [`reclaim`] for a node back from one (with
//! [`reclaim_table`]); they change a table only
//! through its methods.

mod actor_table;
mod actors;
mod agent_relay;
mod durable;
mod job_table;
mod membership;
mod metrics;
mod node_table;
mod object_table;
mod objects;
mod output;
mod peer_table;
mod placement;
mod reclaim;
mod reclaim_table;
mod relay_table;
mod resume;
mod status;
mod task_events;
mod task_table;
mod tasks;
#[cfg(test)]
mod tests;
mod views;

pub use task_events::DEFAULT_CAPACITY as DEFAULT_TASK_EVENTS;

use super::clock::{Clock, SystemClock};
use super::scheduler::{pick_node, SchedulingQueue};
use crate::ids::{JobId, NodeId, ObjectId, PeerId, TaskId};
use crate::protocol::{
    ArgSource, AutoscalerReport, ClusterStatus, FromHead, NodeRegistration, ObjectLocation,
    PeerRole, StoredValue, TaskArg, TaskAssignment, TaskError, TaskKind, TaskOutcome, TaskSpec,
    ToHead, Welcome,
};
use crate::resources::ResourceSet;
use crate::transport::MessageSender;
use actor_table::{ActorState, ActorTable};
use actors::is_detached_creation;
use job_table::JobTable;
use node_table::NodeTable;
use object_table::{Freed, ObjectTable, ObjectValue};
use peer_table::{PeerKind, PeerProcess, PeerTable};
use reclaim_table::ReclaimTable;
use relay_table::RelayTable;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use task_table::{TaskEntry, TaskState, TaskTable};
use tokio::sync::oneshot;

/// The reason a peer that said goodbye is disconnected for.
const GOODBYE: &str = "the process exited";

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
    /// A metrics scrape asks the head to add its samples to a set.
    Metrics(
        crate::metrics::MetricSet,
        oneshot::Sender<crate::metrics::MetricSet>,
    ),
    /// The state API asks for a copy of a table's rows.
    State(
        super::view::StateQuery,
        oneshot::Sender<super::view::StateRows>,
    ),
    /// The dashboard asks a node about its machine (see [`agent_relay`]).
    AskNode(
        NodeId,
        crate::protocol::AgentRequest,
        oneshot::Sender<crate::protocol::AgentReply>,
    ),
    /// The job supervisor saw this job's driver process end (a stopped job's
    /// process group was killed): its connection is lost now, not when it times out.
    DriverProcessEnded(JobId, String),
    /// A submitted job's entrypoint started on the head's node: its entrypoint
    /// resources are held there, out of the tasks' reach, until it ends (Ray's job
    /// supervisor actor holds them the same way).
    HoldForEntrypoint(String, ResourceSet),
    /// That entrypoint ended: what it held is free for tasks again.
    ReleaseEntrypoint(String),
}

/// Settings of the head.
#[derive(Debug, Clone)]
pub struct HeadSettings {
    /// The head process's own node id.
    pub head_node: NodeId,
    /// A node silent for this long is declared dead.
    pub node_timeout: Duration,
    /// Where to keep the live nodes' metrics endpoints for Prometheus (see
    /// [`crate::metrics::SERVICE_DISCOVERY_FILE`]), if anywhere.
    pub metrics_targets_file: Option<std::path::PathBuf>,
    /// How many ended tasks the state API can list (Ray's
    /// `RAY_task_events_max_num_task_in_gcs`; the oldest are dropped first).
    pub task_events_capacity: usize,
    /// The head's starts on its storage, if it keeps one (for `rayish status`).
    pub head_starts: Option<crate::protocol::HeadStarts>,
    /// The head's storage, if it keeps one: what it remembers across restarts
    /// (see [`durable`]).
    pub storage: Option<crate::storage::Storage>,
    /// How long peers wait for a silent head (`--head-reconnect-timeout`): after a
    /// restart, what returning nodes bring waits this long for its drivers.
    pub head_reconnect_timeout: Duration,
}

/// The head's tables and the logic that changes them.
pub struct HeadState {
    settings: HeadSettings,
    clock: Arc<dyn Clock>,
    peers: PeerTable,
    nodes: NodeTable,
    jobs: JobTable,
    tasks: TaskTable,
    objects: ObjectTable,
    queue: SchedulingQueue,
    /// The live-state `ray_tasks` series exported so far (state, function, retry):
    /// kept at 0 once their tasks are gone, as Ray's are, so graphs fall to zero
    /// rather than stop. Bounded by the functions the cluster ever ran.
    task_series: HashSet<(&'static str, String, bool)>,
    /// The metrics drivers and workers keep of their own.
    user_metrics: crate::metrics::UserMetricTable<PeerId>,
    /// How long tasks ran on their workers, as their nodes report.
    task_run_seconds: prometheus_client::metrics::histogram::Histogram,
    actors: ActorTable,
    /// Turns taken among equally good nodes.
    turn: usize,
    /// The autoscaler's last report, for `rayish status`.
    autoscaler: Option<AutoscalerReport>,
    /// When heartbeats were last checked (to tell the head's own stalls apart).
    last_tick: Instant,
    /// Ended tasks, for the state API.
    task_events: task_events::TaskEventLog,
    /// A moment of the clock and the wall time then, in milliseconds since the Unix
    /// epoch: how the state API's times are told.
    wall_anchor: (Instant, u64),
    /// The dashboard's questions to nodes awaiting answers.
    agent_relay: agent_relay::AgentRelay,
    /// What running job entrypoints hold on the head's node, by submission id.
    entrypoints: HashMap<String, ResourceSet>,
    /// After a restart: the nodes that may come back with their work, and what
    /// those that did brought (see [`reclaim`]).
    reclaim: ReclaimTable,
    /// Objects some node could not fetch from holders the head still hears from, and
    /// the copies made for it elsewhere (see [`relay_table`]).
    relays: RelayTable,
}

impl HeadState {
    /// The tables an earlier head left in the storage, if any, on the real clock.
    pub fn new(settings: HeadSettings) -> Self {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    /// The tables an earlier head left in the storage, if any, reading the time
    /// from `clock`.
    pub fn with_clock(settings: HeadSettings, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now();
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut state = Self {
            task_events: task_events::TaskEventLog::new(settings.task_events_capacity),
            wall_anchor: (now, wall_ms),
            settings,
            clock,
            peers: PeerTable::default(),
            nodes: NodeTable::default(),
            jobs: JobTable::default(),
            tasks: TaskTable::default(),
            objects: ObjectTable::default(),
            queue: SchedulingQueue::default(),
            task_series: HashSet::default(),
            user_metrics: Default::default(),
            task_run_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1e-4, 4.0, 12),
            ),
            actors: ActorTable::default(),
            turn: 0,
            autoscaler: None,
            last_tick: now,
            agent_relay: Default::default(),
            entrypoints: HashMap::default(),
            reclaim: ReclaimTable::default(),
            relays: RelayTable::default(),
        };
        state.restore_nodes();
        state.restore_jobs();
        state.restore_actors();
        state
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
            HeadEvent::Metrics(mut set, reply) => {
                // `metrics` remembers the series it exported.
                self.metrics(&mut set);
                let _ = reply.send(set);
            }
            HeadEvent::State(query, reply) => {
                let _ = reply.send(self.view(query));
            }
            HeadEvent::AskNode(node, request, reply) => self.ask_node(node, request, reply),
            HeadEvent::DriverProcessEnded(job, reason) => {
                // Only the driver still connected as this job's: a late report about a
                // driver already gone (or a reconnect) changes nothing.
                if let Some(peer) = self.jobs.driver(job) {
                    if self.jobs.is_alive(job) && !self.jobs.driver_gone(job) {
                        self.disconnect(peer, &reason);
                    }
                }
            }
            HeadEvent::HoldForEntrypoint(submission_id, demand) => {
                if self.nodes.hold(self.settings.head_node, &demand) {
                    self.entrypoints.insert(submission_id, demand);
                }
            }
            HeadEvent::ReleaseEntrypoint(submission_id) => {
                let node = self.settings.head_node;
                if let Some(held) = self.entrypoints.remove(&submission_id) {
                    if self.nodes.is_live(node) {
                        self.nodes.release(node, &held);
                        self.schedule();
                    }
                }
            }
        }
    }

    /// Changes whenever a node joins or dies (so callers redo what depends on the
    /// membership, such as the metrics targets file, only then).
    pub fn membership_version(&self) -> u64 {
        self.nodes.version()
    }

    /// Where every live node serves its metrics.
    pub fn metrics_targets(&self) -> Vec<std::net::SocketAddr> {
        self.nodes.metrics_targets()
    }

    fn send(&self, peer: PeerId, msg: FromHead) {
        self.peers.send(peer, msg);
    }

    /// A `put` from `peer`: objects are made by processes of a job, and written once.
    fn put(&mut self, peer: PeerId, id: ObjectId, value: ObjectValue) {
        if self.peers.job(peer).is_none() {
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
        let job = self.peers.job(peer);
        job.is_some() && self.tasks.get(&task).map(|t| t.spec().job) == job
    }

    fn message(&mut self, peer: PeerId, msg: ToHead) {
        let mut freed = Freed::default();
        match msg {
            ToHead::SubmitTasks(specs) => {
                let Some(job) = self.peers.job(peer) else {
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
                if let Some(node) = self.peers.node(peer) {
                    self.nodes.heartbeat(node, self.clock.now(), load);
                }
            }
            ToHead::TaskFinished {
                task_id,
                attempt,
                outcome,
                run_micros,
                worker_pid,
            } => {
                if let Some(node) = self.peers.node(peer) {
                    self.task_run_seconds.observe(run_micros as f64 / 1e6);
                    self.nodes.note_run_time(node, run_micros);
                    self.task_finished(node, task_id, attempt, outcome, worker_pid);
                }
            }
            ToHead::ObjectCopied(id) => {
                if let Some(node) = self.peers.node(peer) {
                    if !self.relays.is_empty() {
                        self.relays.copied(&id, node);
                    }
                    // A copy a returning node made before the restart waits for its
                    // claim like the node's other objects.
                    if !self.objects.add_copy(&id, node) && !self.reclaim.holds(&id) {
                        // Freed meanwhile: the copy is garbage.
                        self.send(peer, FromHead::DeleteObjects(vec![id]));
                    }
                }
            }
            ToHead::ObjectCopyFailed { id, reason } => {
                if let Some(node) = self.peers.node(peer) {
                    tracing::warn!(object = ?id, node = ?node, "could not copy an object for a node cut off from its holders: {reason}");
                    self.relays.copy_failed(&id, node);
                }
            }
            ToHead::Goodbye => {
                // Answer first: the peer waits for this before it exits.
                self.send(peer, FromHead::Farewell);
                self.disconnect(peer, GOODBYE);
                return;
            }
            ToHead::StatusRequest => {
                let status = self.status();
                self.send(peer, FromHead::Status(Box::new(status)));
            }
            ToHead::AutoscalerReport(report) => self.autoscaler = Some(*report),
            ToHead::Sync(n) => self.send(peer, FromHead::Synced(n)),
            ToHead::UserMetrics(metrics) => self.user_metrics_reported(peer, metrics),
            ToHead::WorkerOutput(runs) => {
                if let Some(node) = self.peers.node(peer) {
                    self.worker_output(node, runs);
                }
            }
            ToHead::SubscribeOutput => self.subscribe_output(peer),
            ToHead::AgentReply { id, reply } => self.agent_replied(peer, id, reply),
            ToHead::Resume(state) => self.resumed(peer, *state, &mut freed),
            ToHead::NodeResumed(inventory) => self.node_inventory(peer, *inventory),
            ToHead::NodeCaughtUp => self.node_caught_up(peer),
            ToHead::GetActor { request, name } => {
                let result = self.find_actor(peer, &name);
                self.send(peer, FromHead::ActorFound { request, result });
            }
            ToHead::KillActor { actor, no_restart } => {
                if self.peers.job(peer).is_some() {
                    self.kill_actor(actor, no_restart);
                }
            }
            ToHead::ActorDied { actor, reason } => {
                if let Some(node) = self.peers.node(peer) {
                    self.actor_process_died(node, actor, reason);
                }
            }
        }
        self.apply_freed(freed);
        // No scheduling here: `handle_batch` schedules once per batch of messages.
    }
}
