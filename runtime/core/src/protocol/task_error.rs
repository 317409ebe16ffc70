//! What `get` returns instead of a value when the task that makes it failed.

use crate::ids::{ActorId, ObjectId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// An error that stands in for a task's value: what `get` returns instead.
///
/// Non-exhaustive: later versions may add causes, so a `match` needs a `_` arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The function panicked.
    #[error("task {function} panicked on node {node}: {message}")]
    Panicked {
        /// Registered function name.
        function: String,
        /// The panic message.
        message: String,
        /// Where it ran (node id and address).
        node: String,
    },
    /// The function returned an error.
    #[error("task {function} failed on node {node}: {message}")]
    Failed {
        /// Registered function name.
        function: String,
        /// The error, formatted with its causes.
        message: String,
        /// Where it ran.
        node: String,
    },
    /// The worker process died on every try.
    #[error(
        "task {function} lost its worker {attempts} time(s), retries exhausted; last: {reason}"
    )]
    WorkerDied {
        /// Registered function name.
        function: String,
        /// Tries made.
        attempts: u32,
        /// What happened to the last worker (signal, exit code, node death).
        reason: String,
    },
    /// The object's only copies were on nodes that died and it could not be recomputed.
    #[error(
        "object {object} is lost (no reachable node holds it) and cannot be recomputed: {reason}"
    )]
    ObjectLost {
        /// The object.
        object: ObjectId,
        /// Why recomputation was impossible.
        reason: String,
    },
    /// The actor is dead (killed, out of restarts, its creator gone, or its
    /// constructor failed); every call on it, pending or new, ends with this.
    #[error("actor {actor} ({class}) died: {cause}")]
    ActorDied {
        /// The actor.
        actor: ActorId,
        /// Its class.
        class: String,
        /// Why it died.
        cause: String,
    },
    /// The binary has no remote function of that name.
    #[error("no remote function named {function:?} in the job's binary")]
    UnknownFunction {
        /// The name asked for.
        function: String,
    },
    /// An argument or result could not be decoded.
    #[error("task {function}: {message}")]
    Codec {
        /// Registered function name.
        function: String,
        /// What failed.
        message: String,
    },
}
