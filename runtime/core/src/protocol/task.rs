//! A task as submitted, assigned and finished: the plain data the head keeps per task.

use super::payload;
use super::TaskError;
use crate::ids::{ActorId, BinaryHash, JobId, NodeId, ObjectId, TaskId};
use crate::resources::ResourceSet;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

/// One argument of a task as submitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TaskArg {
    /// The encoded value itself.
    Value(#[serde(with = "payload")] Vec<u8>),
    /// A reference, resolved on the node that runs the task.
    Ref(ObjectId),
}

/// Everything needed to run (and re-run) one remote call: plain data, so it can be
/// retried, reconstructed from lineage, shown and counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The call's id; retries keep it.
    pub task_id: TaskId,
    /// The job whose code holds the function.
    pub job: JobId,
    /// Registered name of the remote function (shared: a program calls the same few
    /// functions millions of times, and a driver keeps each pending call's spec).
    pub function: std::sync::Arc<str>,
    /// The arguments, in order.
    pub args: Vec<TaskArg>,
    /// References held inside inline argument values, kept alive while the task is pending.
    pub nested_refs: Vec<ObjectId>,
    /// The object the result is stored as.
    pub return_id: ObjectId,
    /// Resources the task holds while it runs.
    pub resources: ResourceSet,
    /// How many times the task is re-run after its worker or node dies. For actor
    /// calls the actor's `max_task_retries` applies instead.
    pub max_retries: u32,
    /// A plain function call, an actor's creation, or a call of an actor's method.
    pub kind: TaskKind,
    /// The task that submitted it, for the state API; [`TaskId::DRIVER`] if the
    /// driver did. (Not an `Option`: that would double its 16 bytes, in every spec.)
    pub parent: TaskId,
}

/// What a task does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskKind {
    /// Calls a remote function in any idle worker of the job.
    Function,
    /// Runs an actor's constructor in a worker dedicated to the actor for its life;
    /// the task's resources stay held until the actor dies. Its return object stands
    /// for the actor: every handle holds it, and when it is freed the actor ends.
    /// Boxed: inline it would make every spec, of every plain call too, 56 bytes
    /// larger (a driver and the head each keep a million of them in the scale bench).
    CreateActor(Box<ActorCreation>),
    /// Calls a method of a live actor, in the order its caller made the calls.
    ActorCall(ActorId),
}

/// The options an actor was created with (Ray's `.options(...)` on an actor class).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorCreation {
    /// The actor.
    pub actor: ActorId,
    /// Registered name of its class (the constructor's name without `::new`).
    pub class: String,
    /// A cluster-wide name to find it by with `get_actor`.
    pub name: Option<String>,
    /// Outlives the job that created it, until killed or the cluster stops.
    pub detached: bool,
    /// Times it is re-created after its process or node dies; `-1`: without limit.
    pub max_restarts: i32,
    /// Times a call is re-sent after the actor died while running it; `-1`: without limit.
    pub max_task_retries: i32,
}

impl TaskSpec {
    /// The actor this task creates or calls, if any.
    pub fn actor(&self) -> Option<ActorId> {
        match &self.kind {
            TaskKind::Function => None,
            TaskKind::CreateActor(c) => Some(c.actor),
            TaskKind::ActorCall(a) => Some(*a),
        }
    }

    /// Ids of the objects the task reads: its reference arguments.
    pub fn arg_refs(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.args.iter().filter_map(|a| match a {
            TaskArg::Ref(id) => Some(*id),
            TaskArg::Value(_) => None,
        })
    }
}

/// Where the node that runs a task finds a reference argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ArgSource {
    /// Not a reference: the value is in the spec.
    InSpec,
    /// Small object, value included.
    Inline(#[serde(with = "payload")] Vec<u8>),
    /// Large object held by these nodes.
    At(Vec<NodeAddress>),
}

/// A node id and the address of its object server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    /// The node.
    pub node: NodeId,
    /// Its object server.
    pub address: SocketAddr,
}

/// The head asks a node to run a task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskAssignment {
    /// The task.
    pub spec: Arc<TaskSpec>,
    /// Which try this is, from 0.
    pub attempt: u32,
    /// Where each argument is, one entry per `spec.args`.
    pub sources: Vec<ArgSource>,
    /// The job's binary.
    pub binary: BinaryHash,
}

/// How a task ended, as its node reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// Success; the value is inline or stored on the reporting node.
    Stored(StoredValue),
    /// The function failed (panic or error return); retrying would not help.
    Failed(TaskError),
    /// The worker process died; the head may retry.
    WorkerDied(String),
    /// A reference argument could not be fetched from any holder (one may have just
    /// died); the head re-runs the task once it knows where the argument is.
    ArgumentUnavailable {
        /// The argument.
        object: ObjectId,
        /// The last fetch error.
        reason: String,
    },
}

/// A finished object's value as reported to the head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StoredValue {
    /// Small: the value itself.
    Inline(#[serde(with = "payload")] Vec<u8>),
    /// Large: held in the reporting node's store.
    OnNode {
        /// Size in bytes.
        size: u64,
    },
}
