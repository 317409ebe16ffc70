//! The worker socket: a node and each worker process it started.

use super::payload;
use super::{NodeAddress, TaskError};
use crate::ids::{ObjectId, TaskId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a node did not store a value a worker put.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Error)]
pub enum PutError {
    /// The store is full and the value could not be spilled.
    #[error("{0}")]
    StoreFull(String),
    /// Anything else (a bad segment, the node going away).
    #[error("{0}")]
    Failed(String),
}

/// An encoded value handed between a node and a worker it started: small ones inside
/// the message, large ones as a shared-memory segment both map ([`crate::object_store::shm`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerValue {
    /// The bytes themselves.
    Inline(#[serde(with = "payload")] Vec<u8>),
    /// A file in the node's shared-memory directory (or its spill directory).
    Shared {
        /// The file.
        path: std::path::PathBuf,
        /// Its size in bytes.
        len: u64,
    },
}

/// Node to worker process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run this task with these resolved argument values.
    Run {
        /// The task.
        task_id: TaskId,
        /// Registered function name.
        function: String,
        /// Argument values, in order.
        args: Vec<WorkerValue>,
        /// Where to store the result.
        return_id: ObjectId,
        /// A function, an actor's constructor, or a method of the actor this worker holds.
        kind: RunKind,
    },
    /// Answer to [`FromWorker::GetObject`].
    Object {
        /// The request.
        request: u64,
        /// The value or why it could not be had.
        value: Result<WorkerValue, String>,
    },
    /// Answer to [`FromWorker::LendSegment`].
    Lent {
        /// The request.
        request: u64,
        /// The segment to fill, sized as asked; `None`: make a new one.
        path: Option<std::path::PathBuf>,
    },
    /// Answer to [`FromWorker::PutObject`].
    PutDone {
        /// The request.
        request: u64,
        /// Ok, or why the store refused.
        result: Result<(), PutError>,
    },
}

/// What a worker runs for a [`ToWorker::Run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunKind {
    /// A remote function.
    Function,
    /// An actor's constructor; the worker keeps the value it returns.
    CreateActor,
    /// A method of the actor the worker holds.
    ActorMethod,
}

/// Worker process to node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    /// The worker's own metrics (`rayish::metrics`) now, replacing its last report;
    /// sent before a task's end when the task recorded any.
    Metrics(Vec<crate::protocol::UserMetric>),
    /// First message: the worker is up and connected to the head.
    Ready {
        /// The worker's process id.
        pid: u32,
    },
    /// The task ended.
    Finished {
        /// The task.
        task_id: TaskId,
        /// Encoded value or error.
        result: Result<WorkerValue, TaskError>,
    },
    /// Fetch a large object into this node and hand it over.
    GetObject {
        /// Request number, echoed in the answer.
        request: u64,
        /// The object.
        id: ObjectId,
        /// Nodes that hold it.
        holders: Vec<NodeAddress>,
    },
    /// The running task blocked in `get` (true) or resumed (false): lend its CPU.
    Blocked {
        /// The task.
        task_id: TaskId,
        /// Blocked or resumed.
        blocked: bool,
    },
    /// Lend a free shared segment to write a large value of `len` bytes into, before a
    /// `PutObject` (saves the kernel zeroing a new file's pages).
    LendSegment {
        /// Request number, echoed in the answer.
        request: u64,
        /// The object the value will be.
        id: ObjectId,
        /// Its encoded size.
        len: u64,
    },
    /// Store a large object made by `put` inside a task.
    PutObject {
        /// Request number, echoed in the answer.
        request: u64,
        /// The object.
        id: ObjectId,
        /// Its encoded value.
        value: WorkerValue,
    },
    /// A function call sent behind the running task is given back unrun: that task
    /// blocked in `get`, and what it waits for may be this very call.
    Declined {
        /// The call given back.
        task_id: TaskId,
    },
}
