//! What the state API reads from the head: rows of its tables, copied out whole by the
//! head's task in answer to a [`StateQuery`], so that filtering, sorting and encoding
//! happen on the HTTP server's task and an HTTP client never holds up the head.
//!
//! The rows use Ray's vocabulary where Ray has it (task and actor states, task types,
//! error types), so the dashboard can print them as Ray's state API does.

use crate::ids::{ActorId, JobId, NodeId, ObjectId, PeerId, TaskId};
use crate::protocol::NodeStatus;
use crate::resources::ResourceSet;
use std::sync::Arc;

/// Which table to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateQuery {
    /// Every node, live and recently dead.
    Nodes,
    /// Every job, live and recently ended.
    Jobs,
    /// Live tasks and the task event log's ended ones.
    Tasks,
    /// Every actor the head lists.
    Actors,
    /// Connected drivers and workers.
    Workers,
    /// Every object the head tracks, one row per holder.
    Objects,
    /// The drivers' own metrics (`rayish::metrics`), summed as the head exports them.
    UserMetrics,
}

/// The rows a [`StateQuery`] asked for.
#[derive(Debug, Clone)]
pub enum StateRows {
    /// For [`StateQuery::Nodes`].
    Nodes(Vec<NodeRow>),
    /// For [`StateQuery::Jobs`].
    Jobs(Vec<JobRow>),
    /// For [`StateQuery::Tasks`].
    Tasks(TaskRows),
    /// For [`StateQuery::Actors`].
    Actors(Vec<ActorRow>),
    /// For [`StateQuery::Workers`].
    Workers(Vec<WorkerRow>),
    /// For [`StateQuery::Objects`].
    Objects(Vec<ObjectRow>),
    /// For [`StateQuery::UserMetrics`].
    UserMetrics(Vec<crate::metrics::UserSeries>),
}

/// One node.
#[derive(Debug, Clone)]
pub struct NodeRow {
    /// What `rayish status` shows of it.
    pub status: NodeStatus,
    /// Whether it is the head process's node.
    pub is_head: bool,
    /// When it joined, in milliseconds since the Unix epoch.
    pub start_time_ms: u64,
    /// When it was declared dead, if it was.
    pub end_time_ms: Option<u64>,
    /// Why it was declared dead.
    pub death_reason: Option<String>,
}

/// One job (a driver's run).
#[derive(Debug, Clone)]
pub struct JobRow {
    /// The job.
    pub job_id: JobId,
    /// Its driver program's name.
    pub name: String,
    /// Its driver's process id.
    pub driver_pid: u32,
    /// The submitted job it runs for (Ray's `submission_id`), if any.
    pub submission_id: Option<String>,
    /// Whether its driver is still connected.
    pub running: bool,
    /// When its driver connected, in milliseconds since the Unix epoch.
    pub start_time_ms: u64,
    /// When it ended.
    pub end_time_ms: Option<u64>,
    /// Why its driver went without saying goodbye (`None`: a clean exit, or running).
    pub lost: Option<String>,
}

/// Where a task is in its life, in Ray's names (`ray.util.state` `TaskState.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskStatus {
    /// Waiting for arguments.
    PendingArgsAvail,
    /// Waiting for a node with room.
    PendingNodeAssignment,
    /// Running on a node.
    Running,
    /// Running, waiting in `get`.
    RunningInRayGet,
    /// Over, with a value.
    Finished,
    /// Over, with an error.
    Failed,
}

impl TaskStatus {
    /// Ray's name.
    pub fn ray_name(self) -> &'static str {
        match self {
            TaskStatus::PendingArgsAvail => "PENDING_ARGS_AVAIL",
            TaskStatus::PendingNodeAssignment => "PENDING_NODE_ASSIGNMENT",
            TaskStatus::Running => "RUNNING",
            TaskStatus::RunningInRayGet => "RUNNING_IN_RAY_GET",
            TaskStatus::Finished => "FINISHED",
            TaskStatus::Failed => "FAILED",
        }
    }
}

/// What a task does, in Ray's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskType {
    /// A remote function.
    Normal,
    /// An actor's constructor.
    ActorCreation,
    /// An actor's method.
    ActorTask,
}

impl TaskType {
    /// Ray's name.
    pub fn ray_name(self) -> &'static str {
        match self {
            TaskType::Normal => "NORMAL_TASK",
            TaskType::ActorCreation => "ACTOR_CREATION_TASK",
            TaskType::ActorTask => "ACTOR_TASK",
        }
    }
}

/// Why a task failed.
#[derive(Debug, Clone)]
pub struct TaskFailure {
    /// Ray's error type (`TASK_EXECUTION_EXCEPTION`, `WORKER_DIED`, ...).
    pub error_type: &'static str,
    /// The error as `get` shows it.
    pub message: String,
}

/// One attempt of a task.
#[derive(Debug, Clone)]
pub struct TaskRow {
    /// The task.
    pub task_id: TaskId,
    /// Which try, from 0.
    pub attempt: u32,
    /// The remote function's or method's registered name.
    pub name: Arc<str>,
    /// Its job.
    pub job: JobId,
    /// What it does.
    pub kind: TaskType,
    /// The actor it creates or calls.
    pub actor: Option<ActorId>,
    /// The task that submitted it ([`TaskId::DRIVER`]: the driver).
    pub parent: TaskId,
    /// Where it is in its life.
    pub state: TaskStatus,
    /// Where it runs or ran.
    pub node: Option<NodeId>,
    /// The worker process that ran it, once known.
    pub worker_pid: Option<u32>,
    /// Why it failed.
    pub failure: Option<Box<TaskFailure>>,
    /// What it asks for (kept for live tasks only; boxed, as the log keeps none).
    pub resources: Option<Box<ResourceSet>>,
    /// Submitted, in milliseconds since the Unix epoch.
    pub creation_time_ms: u64,
    /// Sent to its node.
    pub start_time_ms: Option<u64>,
    /// Over.
    pub end_time_ms: Option<u64>,
}

/// The task rows, with what the bounded event log has dropped.
#[derive(Debug, Clone, Default)]
pub struct TaskRows {
    /// Live tasks, then ended ones, newest first.
    pub rows: Vec<TaskRow>,
    /// Ended tasks dropped from the log since the head started (oldest go first).
    pub dropped: u64,
    /// How many ended tasks the log keeps.
    pub capacity: usize,
}

/// Where an actor is in its life, in Ray's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActorStatus {
    /// Its creation waits for arguments or a node.
    PendingCreation,
    /// Its constructor ran; it takes calls.
    Alive,
    /// Being re-created after its process or node died.
    Restarting,
    /// Over for good.
    Dead,
}

impl ActorStatus {
    /// Ray's name.
    pub fn ray_name(self) -> &'static str {
        match self {
            ActorStatus::PendingCreation => "PENDING_CREATION",
            ActorStatus::Alive => "ALIVE",
            ActorStatus::Restarting => "RESTARTING",
            ActorStatus::Dead => "DEAD",
        }
    }
}

/// One actor.
#[derive(Debug, Clone)]
pub struct ActorRow {
    /// The actor.
    pub actor_id: ActorId,
    /// Its class's registered name.
    pub class_name: String,
    /// Where it is in its life.
    pub state: ActorStatus,
    /// The job that created it.
    pub job: JobId,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// The node it lives on (or lived on last).
    pub node: Option<NodeId>,
    /// Its worker process, once it ran its constructor.
    pub pid: Option<u32>,
    /// Whether it outlives its job.
    pub detached: bool,
    /// Times it was re-created.
    pub num_restarts: u32,
    /// What its creation holds.
    pub resources: ResourceSet,
    /// Why it died.
    pub death_cause: Option<String>,
}

/// One connected driver or worker process.
#[derive(Debug, Clone)]
pub struct WorkerRow {
    /// Its connection.
    pub peer: PeerId,
    /// A driver (`true`) or a worker.
    pub is_driver: bool,
    /// Its job.
    pub job: JobId,
    /// The node that started it (workers only).
    pub node: Option<NodeId>,
    /// Its process id.
    pub pid: u32,
    /// When it connected, in milliseconds since the Unix epoch.
    pub start_time_ms: u64,
}

/// One object as one process holds it.
#[derive(Debug, Clone)]
pub struct ObjectRow {
    /// The object.
    pub object_id: ObjectId,
    /// Its size in bytes, once known.
    pub size: Option<u64>,
    /// Whether its value is there (its task finished).
    pub ready: bool,
    /// Whether its value is an error.
    pub failed: bool,
    /// The process holding a reference (none: pinned by pending tasks only).
    pub holder: Option<PeerId>,
    /// The nodes holding its value in their stores.
    pub nodes: Vec<NodeId>,
    /// References from pending tasks and containing objects.
    pub pins: u64,
}
