//! The control stream's messages to and from the head.

use super::payload;
use super::{
    AgentReply, AgentRequest, AutoscalerReport, ClusterStatus, Hello, NodeAddress, TaskAssignment,
    TaskError, TaskOutcome, TaskSpec, TransferRequest, Welcome,
};
use crate::ids::{ActorId, JobId, NodeId, ObjectId, TaskId};
use serde::{Deserialize, Serialize};

/// Messages to the head on the control stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToHead {
    /// New tasks; the sender holds a reference to each return object. Shared: a
    /// driver keeps each in its lineage, and the head in its task table.
    SubmitTasks(Vec<std::sync::Arc<TaskSpec>>),
    /// A `put` of a small object; the sender holds a reference to it.
    PutInline {
        /// The new object.
        id: ObjectId,
        /// Its encoded value.
        #[serde(with = "payload")]
        value: Vec<u8>,
    },
    /// A `put` of a large object, already pushed to `node`; the sender holds a reference.
    PutStored {
        /// The new object.
        id: ObjectId,
        /// Where it was pushed.
        node: NodeId,
        /// Its size in bytes.
        size: u64,
    },
    /// `outer` holds references to `inner`: keep them alive while `outer` lives.
    /// Sent by whoever encodes `outer`, before it drops its own handles.
    Nest {
        /// The containing object.
        outer: ObjectId,
        /// The references inside it.
        inner: Vec<ObjectId>,
    },
    /// The sender now holds these references.
    AddRefs(Vec<ObjectId>),
    /// The sender no longer holds these references.
    RemoveRefs(Vec<ObjectId>),
    /// Tell the sender when these objects are ready (once each).
    Subscribe(Vec<ObjectId>),
    /// A worker blocked in `get` inside this task: free its CPU for others.
    TaskBlocked(TaskId),
    /// The worker resumed: take the CPU back.
    TaskUnblocked(TaskId),
    /// From nodes: still alive, and how full.
    Heartbeat(NodeLoad),
    /// From nodes: a task ended.
    TaskFinished {
        /// The task.
        task_id: TaskId,
        /// The try that ended.
        attempt: u32,
        /// How.
        outcome: TaskOutcome,
        /// How long its worker took, in microseconds (start-up and argument fetch not
        /// included).
        run_micros: u64,
        /// The process that ran it (0: none did, e.g. an actor whose process was gone).
        worker_pid: u32,
    },
    /// From nodes: a copy of this object now lives here (after a pull).
    ObjectCopied(ObjectId),
    /// From nodes: the copy asked for by [`FromHead::CopyObject`] could not be made.
    ObjectCopyFailed {
        /// The object.
        id: ObjectId,
        /// Why, for the log.
        reason: String,
    },
    /// Ask for a [`ClusterStatus`].
    StatusRequest,
    /// From the autoscaler: what it is doing and why, shown by `rayish status`.
    AutoscalerReport(Box<AutoscalerReport>),
    /// Find the live actor named `name`; answered with [`FromHead::ActorFound`], and
    /// the asker then holds a reference to its handle object.
    GetActor {
        /// Echoed in the answer.
        request: u64,
        /// The name.
        name: String,
    },
    /// End an actor: its process is killed; with `no_restart` false it may be
    /// re-created as after a crash.
    KillActor {
        /// The actor.
        actor: ActorId,
        /// Never re-create it.
        no_restart: bool,
    },
    /// Answer [`FromHead::Synced`] with this number once everything sent before it
    /// is handled. A worker sends it before reporting a task whose run sent messages
    /// (puts, submits, nests): the node's report travels on another stream, and must
    /// not overtake them, or a reader of the result could find its objects unknown.
    Sync(u64),
    /// From nodes: an actor's process died (or was killed).
    ActorDied {
        /// The actor.
        actor: ActorId,
        /// How the process ended.
        reason: String,
    },
    /// The sender is exiting: treat it as disconnected now (its job ends, what it
    /// holds is released) rather than when its connection times out.
    Goodbye,
    /// From drivers and workers: the values of their own metrics (`rayish::metrics`)
    /// now, replacing what they reported before.
    UserMetrics(Vec<UserMetric>),
    /// From nodes: lines their workers printed (Ray's log monitor), for the drivers of
    /// their jobs that asked for them.
    WorkerOutput(Vec<WorkerOutput>),
    /// From drivers: send me my job's workers' output (Ray's `log_to_driver`).
    SubscribeOutput,
    /// From nodes: the answer to [`FromHead::AgentRequest`] `id`.
    AgentReply {
        /// The request's id.
        id: u64,
        /// The answer.
        reply: AgentReply,
    },
    /// From a driver that reconnected to a restarted head (its first message): what
    /// it holds, so the head can re-make the objects it still needs.
    Resume(Box<ResumeState>),
    /// From a node back from losing its head, with the same id (its first message;
    /// see [`super::NodeRegistration::resumes`]): what it still runs and holds.
    NodeResumed(Box<NodeInventory>),
    /// From a node back from losing its head, after its inventory, the task ends
    /// sent again and everything held while the head was away: what it reported is
    /// complete, so resumed tasks may be claimed against it.
    NodeCaughtUp,
}

/// What a node back from losing its head still has (Ray's raylets report their
/// resources and leases to a restarted GCS the same way). Every task the head
/// assigned it is either here or reported ended by a `TaskFinished` sent after this
/// and before [`ToHead::NodeCaughtUp`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeInventory {
    /// Function tasks assigned to it and not reported ended: queued there, fetching
    /// their arguments, or running.
    pub tasks: Vec<AssignedTask>,
    /// The objects in its store, with their sizes.
    pub objects: Vec<(ObjectId, u64)>,
    /// The actors alive in its workers, with their worker's process id.
    pub actors: Vec<(ActorId, u32)>,
}

/// A task a node holds, as its inventory reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssignedTask {
    /// The task.
    pub task_id: TaskId,
    /// Its job.
    pub job: JobId,
    /// Which attempt the node runs.
    pub attempt: u32,
    /// What it holds while it runs.
    pub resources: crate::resources::ResourceSet,
    /// It waits in `get` (its CPU is lent to others meanwhile).
    pub blocked: bool,
}

/// An object's value a reconnecting driver declares again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumedValue {
    /// The object.
    pub id: ObjectId,
    /// Its encoded value.
    #[serde(with = "payload")]
    pub value: Vec<u8>,
}

/// What a reconnecting driver tells a restarted head (Ray's owners re-report their
/// objects to a restarted GCS). A head keeps no record per task or object: the driver
/// keeps, for the objects it made and still needs, either their value or the task
/// that makes them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResumeState {
    /// Values of objects it made (its puts, results it received), declared again
    /// as ready.
    pub values: Vec<ResumedValue>,
    /// Objects it made that it knows to be errors (a task's failure).
    pub errors: Vec<(ObjectId, TaskError)>,
    /// Tasks whose results it may still need and has not received, in the order it
    /// submitted them (an argument's task before its user's), each with its attempt
    /// number: they may have been running, so each runs again as a retry, or fails
    /// if its `max_retries` is used up.
    pub tasks: Vec<(std::sync::Arc<TaskSpec>, u32)>,
    /// Other objects it holds references to.
    pub holds: Vec<ObjectId>,
    /// Of the objects declared above, those it holds no handle to: kept only for
    /// the tasks that take them as arguments.
    pub unheld: Vec<ObjectId>,
}

/// Lines one worker printed on one stream, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerOutput {
    /// The worker's job.
    pub job: JobId,
    /// The worker's process id.
    pub pid: u32,
    /// Its node's IP: filled in by the head from the node's registration (what a
    /// node says here is ignored).
    pub ip: Option<std::net::IpAddr>,
    /// What it was running: the function, or the actor's class.
    pub label: String,
    /// From its stderr rather than its stdout.
    pub stderr: bool,
    /// The lines, without their line ends.
    pub lines: Vec<String>,
}

/// One metric of a process's own (`rayish::metrics`), as it reports it to the head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserMetric {
    /// Its name (exported with Ray's `ray_` prefix).
    pub name: String,
    /// Its description.
    pub description: String,
    /// Counter or gauge.
    pub kind: UserMetricKind,
    /// Each tag set's value: a counter's total since the process started, a gauge's
    /// last value (empty for a histogram).
    pub series: Vec<(Vec<(String, String)>, f64)>,
    /// A histogram's bucket upper bounds, increasing (empty otherwise).
    pub boundaries: Vec<f64>,
    /// A histogram's series.
    pub histograms: Vec<HistogramSeries>,
}

/// One tag set of a user histogram: its tags, the count of observations in each
/// bucket since the process started (one more than the bounds: the last is +Inf),
/// and their sum.
pub type HistogramSeries = (Vec<(String, String)>, Vec<u64>, f64);

/// What a [`UserMetric`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserMetricKind {
    /// Only goes up; summed over processes, and kept when a process ends.
    Counter,
    /// A value now; the latest report wins.
    Gauge,
    /// Observations counted in buckets; summed over processes like a counter.
    Histogram,
}

/// First frame of every stream a client opens: says what the stream is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StreamOpen {
    /// A control stream to the head.
    Control(Hello),
    /// A transfer stream.
    Transfer(TransferRequest),
}

/// Messages from the head on the control stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromHead {
    /// First message: the answer to [`Hello`].
    Welcome(Welcome),
    /// To a node: run this task.
    Execute(Box<TaskAssignment>),
    /// To a node: drop these objects from your store.
    DeleteObjects(Vec<ObjectId>),
    /// To a node: pull a copy of this object from one of `holders`, for a node that
    /// cannot reach them; answered by [`ToHead::ObjectCopied`] or
    /// [`ToHead::ObjectCopyFailed`].
    CopyObject {
        /// The object.
        id: ObjectId,
        /// Where it is.
        holders: Vec<NodeAddress>,
    },
    /// To a subscriber: this object is ready.
    ObjectReady {
        /// The object.
        id: ObjectId,
        /// Where to get it.
        location: ObjectLocation,
    },
    /// Answer to [`ToHead::StatusRequest`].
    Status(Box<ClusterStatus>),
    /// Something the driver's user should see (e.g. an infeasible task).
    Warning(String),
    /// To nodes: the job's driver is gone; stop its workers (detached actors excepted).
    JobEnded(JobId),
    /// To a node: kill this actor's process.
    KillActor(ActorId),
    /// Answer to [`ToHead::Sync`].
    Synced(u64),
    /// Answer to [`ToHead::GetActor`].
    ActorFound {
        /// The request.
        request: u64,
        /// The actor, or why there is none.
        result: Result<ActorInfo, String>,
    },
    /// Answer to [`ToHead::Goodbye`]: everything sent before it was handled.
    Farewell,
    /// To a node the head declared dead (it was silent for the node timeout, e.g.
    /// paused): its tasks were re-run elsewhere and its objects counted lost, so it
    /// must drop them and join again as a new node. The head closes the stream after.
    NodeDead(String),
    /// To a driver that subscribed: what its job's workers printed.
    WorkerOutput(Vec<WorkerOutput>),
    /// To a node: a question for the dashboard, answered by [`ToHead::AgentReply`]
    /// with the same id.
    AgentRequest {
        /// Names the answer.
        id: u64,
        /// The question.
        request: AgentRequest,
    },
}

/// A live actor as [`FromHead::ActorFound`] describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActorInfo {
    /// The actor.
    pub actor: ActorId,
    /// Its class's registered name.
    pub class: String,
    /// The object every handle to it holds.
    pub handle: ObjectId,
}

/// Where a ready object can be read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ObjectLocation {
    /// Small object: its value.
    Inline(#[serde(with = "payload")] Vec<u8>),
    /// Large object: nodes holding copies.
    Nodes(Vec<NodeAddress>),
    /// The object is an error. Boxed: errors are rare, and inline one would make
    /// every location (kept in every ready slot of a driver) 80 bytes, not 32.
    Error(Box<TaskError>),
}

/// What a node reports with each heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Objects in its store.
    pub store_objects: u64,
    /// Bytes in its store.
    pub store_bytes: u64,
    /// Bytes of freed shared segments its store keeps for reuse.
    pub store_free_bytes: u64,
    /// Values its store has written into reused segments, since it started.
    pub store_reused: u64,
    /// Worker processes alive.
    pub workers: u64,
}
