//! The user API: `init`, remote calls, `put`, `get`, `wait`.
//!
//! This is the top of the data path: it turns Rust values into encoded arguments and
//! task specs, hands them to the core worker, and turns encoded results back into
//! values. Everything below it works on bytes and ids.

mod actor;
mod blob;
mod codec;
pub(crate) mod context;
pub mod metrics;
mod object_ref;
mod worker;

pub use actor::{get_actor, kill, ActorClass, ActorHandle, ActorOptions};
use blob::decode_shared;
pub use blob::Blob;
pub use object_ref::{Arg, ObjectRef};

use codec::{encode_value, encode_value_into, encoded_len};
use rayish_core::core_worker::{collect_nested, GetError};
use rayish_core::ids::{ActorId, ObjectId, TaskId};
use rayish_core::protocol::{
    ActorCreation, TaskArg, TaskError, TaskKind, TaskSpec, INLINE_OBJECT_MAX,
};
use rayish_core::resources::{ResourceSet, CPU, GPU};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use thiserror::Error;

/// Errors of the user API.
///
/// Non-exhaustive: later versions may add causes, so a `match` needs a `_` arm.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The task failed (panic, error, worker death) or its object was lost.
    #[error(transparent)]
    Task(TaskError),
    /// `get` or `wait` ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The cluster is down or unreachable.
    #[error("the cluster is unreachable: {0}")]
    ClusterDown(String),
    /// The object could not be fetched from any holder.
    #[error("object {object} could not be fetched: {reason}")]
    Unavailable {
        /// The object.
        object: ObjectId,
        /// The last failure.
        reason: String,
    },
    /// `get_actor` found no live actor of that name (Ray's `ValueError` from
    /// `ray.get_actor`).
    #[error("no actor named {name:?}: {reason}")]
    ActorNotFound {
        /// The name looked up.
        name: String,
        /// Why (no such name, or its actor is dead).
        reason: String,
    },
    /// A `put` did not fit in the node's object store, and spilling it to disk failed
    /// (Ray's `ObjectStoreFullError`). Nothing stored before is lost.
    #[error("{0}")]
    ObjectStoreFull(String),
    /// `init` failed.
    #[error("rayish::init failed: {0}")]
    Init(String),
    /// A value could not be encoded or decoded as the expected type.
    #[error("value encoding: {0}")]
    Codec(String),
}

impl From<GetError> for Error {
    fn from(e: GetError) -> Self {
        match e {
            GetError::Task(t) => Error::Task(t),
            GetError::Timeout(d) => Error::Timeout(d),
            GetError::ClusterDown(r) => Error::ClusterDown(r),
            GetError::StoreFull(r) => Error::ObjectStoreFull(r),
            GetError::Encode(r) => Error::Codec(r),
            GetError::Unavailable { id, reason } => Error::Unavailable { object: id, reason },
            GetError::ActorNotFound { name, reason } => Error::ActorNotFound { name, reason },
        }
    }
}

/// Results of the user API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

mod init;
pub(crate) use init::register_exit_hook;
pub use init::{init, serve_if_worker, shutdown, Config};

/// The node this code runs on: `Some(id)` inside a task, `None` in a driver (Ray's
/// `get_runtime_context().get_node_id()`).
pub fn current_node_id() -> Option<String> {
    std::env::var("RAYISH_NODE_ID")
        .ok()
        .and_then(|v| v.parse::<u128>().ok())
        .map(|n| rayish_core::ids::NodeId(n).to_string())
}

/// Options of one remote call (Ray's `.options(...)`).
#[derive(Debug, Clone)]
pub struct TaskOptions {
    resources: ResourceSet,
    max_retries: u32,
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            resources: ResourceSet::new().with(CPU, 1.0),
            max_retries: 3,
        }
    }
}

impl TaskOptions {
    /// Default options: 1 CPU, 3 retries (as Ray).
    pub fn new() -> Self {
        Self::default()
    }

    /// CPUs the task holds while it runs (may be fractional or zero).
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.resources.set(CPU, n);
        self
    }

    /// GPUs the task holds while it runs.
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.resources.set(GPU, n);
        self
    }

    /// A custom resource the task holds while it runs.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.set(name, amount);
        self
    }

    /// How many times the task is re-run if its worker or node dies (default 3).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }
}

/// Encodes `value`, returning its bytes and the references it contains.
fn encode_with_refs<T: Serialize + ?Sized>(value: &T) -> Result<(Vec<u8>, Vec<ObjectId>)> {
    let (bytes, nested) = collect_nested(|| encode_value(value));
    Ok((bytes.map_err(Error::Codec)?, nested))
}

/// Stores `value` in the cluster and returns a reference to it.
pub fn put<T: Serialize>(value: &T) -> Result<ObjectRef<T>> {
    // Sized first, then encoded straight into the store: a large value is copied once.
    let (len, nested) = collect_nested(|| encoded_len(value));
    let len = usize::try_from(len.map_err(Error::Codec)?).map_err(|_| {
        Error::Codec("the value is larger than this machine's address space".into())
    })?;
    let cw = context::current()?;
    let id = ObjectId::random();
    // Declared before this process's handles to them can drop.
    cw.nest(id, nested);
    cw.put_with(id, len, |buf| encode_value_into(value, buf))?;
    Ok(ObjectRef::created(id))
}

/// Stores an already encoded value holding `nested` references as a new object.
fn put_encoded<T>(bytes: Vec<u8>, nested: Vec<ObjectId>) -> Result<ObjectRef<T>> {
    let cw = context::current()?;
    let id = ObjectId::random();
    // Declared before this process's handles to them can drop.
    cw.nest(id, nested);
    cw.put(id, bytes)?;
    Ok(ObjectRef::created(id))
}

/// Waits for the object and returns its value.
pub fn get<T: DeserializeOwned>(r: &ObjectRef<T>) -> Result<T> {
    get_with_timeout(r, None)
}

/// Like [`get`], giving up after `timeout` with [`Error::Timeout`].
pub fn get_timeout<T: DeserializeOwned>(r: &ObjectRef<T>, timeout: Duration) -> Result<T> {
    get_with_timeout(r, Some(timeout))
}

fn get_with_timeout<T: DeserializeOwned>(r: &ObjectRef<T>, timeout: Option<Duration>) -> Result<T> {
    let cw = context::current()?;
    let bytes = cw.get(r.id(), timeout)?;
    decode_shared(&bytes).map_err(Error::Codec)
}

/// Gets every object, in order; the first error ends it.
pub fn get_all<T: DeserializeOwned>(refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
    // Wait for all at once (one subscription each, batched wake-ups), then read.
    let cw = context::current()?;
    let ids: Vec<ObjectId> = refs.iter().map(|r| r.id()).collect();
    cw.wait(&ids, ids.len(), None)?;
    refs.iter().map(get).collect()
}

/// `(ready, not_ready)`, as [`wait`] returns them.
pub type WaitResult<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Waits until `num_returns` of `refs` are ready or `timeout` passes (forever if
/// `None`); returns `(ready, not_ready)`, each in the order given (Ray's `ray.wait`).
pub fn wait<T>(
    refs: &[ObjectRef<T>],
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<WaitResult<T>> {
    let cw = context::current()?;
    let ids: Vec<ObjectId> = refs.iter().map(|r| r.id()).collect();
    let flags = cw.wait(&ids, num_returns, timeout)?;
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for (r, is_ready) in refs.iter().zip(flags) {
        if is_ready && ready.len() < num_returns {
            ready.push(r.clone());
        } else {
            not_ready.push(r.clone());
        }
    }
    Ok((ready, not_ready))
}

/// The machinery `#[remote]` expands to. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use super::codec::{decode_value, encode_value};
    use super::*;
    pub use crate::registry::{
        ActorConstructor, ActorInstance, ActorMethod, Encoded, InvokeError, RemoteFunction,
    };
    pub use bytes::Bytes;
    pub use inventory;
    pub use serde;

    /// An argument, encoded for a task spec.
    pub struct EncodedArg {
        arg: TaskArg,
        nested: Vec<ObjectId>,
        // Keeps a reference argument alive until the task is submitted.
        _keep: Option<Box<dyn std::any::Any>>,
    }

    /// Encodes one argument of a remote call.
    pub fn encode_arg<T: Serialize + 'static>(arg: Arg<T>) -> Result<EncodedArg> {
        match arg {
            Arg::Value(v) => {
                let (bytes, nested) = encode_with_refs(&v)?;
                if bytes.len() <= INLINE_OBJECT_MAX {
                    return Ok(EncodedArg {
                        arg: TaskArg::Value(bytes),
                        nested,
                        _keep: Some(Box::new(v)),
                    });
                }
                // Like Ray: a large argument becomes an object of its own, stored once
                // and pulled by the node that runs the task, not copied into the spec.
                let r: ObjectRef<T> = put_encoded(bytes, nested)?;
                Ok(EncodedArg {
                    arg: TaskArg::Ref(r.id()),
                    nested: Vec::new(),
                    _keep: Some(Box::new(r)),
                })
            }
            Arg::Ref(r) => Ok(EncodedArg {
                arg: TaskArg::Ref(r.id()),
                nested: Vec::new(),
                _keep: Some(Box::new(r)),
            }),
        }
    }

    /// Submits a call of the remote function `name`.
    pub fn submit<R>(
        name: &str,
        args: Vec<Result<EncodedArg>>,
        options: TaskOptions,
    ) -> ObjectRef<R> {
        let return_id = ObjectId::random();
        submit_spec(
            name,
            args,
            options.resources,
            options.max_retries,
            TaskKind::Function,
            return_id,
        );
        ObjectRef::created(return_id)
    }

    /// Creates an actor of class `class` (its constructor is `{class}::new`).
    pub fn create_actor(
        class: &'static str,
        args: Vec<Result<EncodedArg>>,
        options: ActorOptions,
    ) -> ActorHandle {
        let actor = ActorId::random();
        let handle = ObjectId::random();
        let creation = ActorCreation {
            actor,
            class: class.to_string(),
            name: options.name,
            detached: options.detached,
            max_restarts: options.max_restarts,
            max_task_retries: options.max_task_retries,
        };
        submit_spec(
            &format!("{class}::new"),
            args,
            options.resources,
            0,
            TaskKind::CreateActor(Box::new(creation)),
            handle,
        );
        ActorHandle::new(actor, ObjectRef::created(handle))
    }

    /// Calls the method registered as `method` on the actor.
    pub fn call_actor<R>(
        handle: &ActorHandle,
        method: &str,
        args: Vec<Result<EncodedArg>>,
    ) -> ObjectRef<R> {
        let return_id = ObjectId::random();
        // Calls run in the actor's process and hold nothing of their own; retries
        // follow the actor's `max_task_retries`.
        submit_spec(
            method,
            args,
            ResourceSet::new(),
            0,
            TaskKind::ActorCall(handle.id()),
            return_id,
        );
        ObjectRef::created(return_id)
    }

    /// `name` shared: the specs of a million calls of one function hold one copy of
    /// its name (a driver keeps every pending call's spec). The names are the
    /// program's own functions and methods; past [`NAMES_KEPT`] they are not shared.
    fn shared_name(name: &str) -> std::sync::Arc<str> {
        thread_local! {
            static NAMES: std::cell::RefCell<std::collections::HashMap<Box<str>, std::sync::Arc<str>>> =
                std::cell::RefCell::default();
        }
        NAMES.with(|names| {
            let mut names = names.borrow_mut();
            if let Some(shared) = names.get(name) {
                return shared.clone();
            }
            let shared: std::sync::Arc<str> = std::sync::Arc::from(name);
            if names.len() < NAMES_KEPT {
                names.insert(Box::from(name), shared.clone());
            }
            shared
        })
    }

    /// Most function names [`shared_name`] keeps per thread.
    const NAMES_KEPT: usize = 4096;

    /// Builds a task spec and submits it; a call that cannot be submitted fails on
    /// `get`, as in Ray.
    fn submit_spec(
        name: &str,
        args: Vec<Result<EncodedArg>>,
        resources: ResourceSet,
        max_retries: u32,
        kind: TaskKind,
        return_id: ObjectId,
    ) {
        let result = (|| -> Result<()> {
            let cw = context::current()?;
            let mut task_args = Vec::with_capacity(args.len());
            let mut nested_refs = Vec::new();
            let mut keep = Vec::new();
            for a in args {
                let a = a?;
                task_args.push(a.arg);
                nested_refs.extend(a.nested);
                keep.push(a._keep);
            }
            let spec = TaskSpec {
                task_id: TaskId::random(),
                job: cw.job(),
                function: shared_name(name),
                args: task_args,
                nested_refs,
                return_id,
                resources,
                max_retries,
                kind,
                parent: rayish_core::core_worker::current_task_id().unwrap_or(TaskId::DRIVER),
            };
            cw.submit(spec);
            // The argument handles may drop now: the head pinned them on submission.
            drop(keep);
            Ok(())
        })();
        if let Err(e) = result {
            let err = TaskError::Codec {
                function: name.to_string(),
                message: e.to_string(),
            };
            match context::try_current() {
                Some(cw) => cw.fail_locally(return_id, err),
                // No cluster at all: `get` on the reference reports why.
                None => tracing::error!("cannot submit {name}: {e}"),
            }
        }
    }

    /// Checks the number of arguments a worker received.
    pub fn check_arity(args: &[Bytes], n: usize) -> Result<(), InvokeError> {
        if args.len() == n {
            Ok(())
        } else {
            Err(InvokeError::Codec(format!(
                "expected {n} arguments, got {}",
                args.len()
            )))
        }
    }

    /// Decodes one argument in a worker.
    pub fn decode_arg<T: DeserializeOwned>(
        bytes: &bytes::Bytes,
        name: &str,
    ) -> Result<T, InvokeError> {
        decode_shared(bytes).map_err(|e| InvokeError::Codec(format!("argument {name}: {e}")))
    }

    /// Encodes a task's return value in a worker.
    pub fn encode_return<T: Serialize>(value: &T) -> Result<Encoded, InvokeError> {
        let (bytes, nested) = collect_nested(|| encode_value(value));
        let bytes = bytes.map_err(|e| InvokeError::Codec(format!("return value: {e}")))?;
        // Declare the references inside the result now, while `value` still holds
        // them: dropping it sends their releases on the same ordered stream.
        if let (Some(cw), Some(outer)) = (
            context::try_current(),
            rayish_core::core_worker::current_return_id(),
        ) {
            cw.nest(outer, nested.clone());
        }
        Ok(Encoded { bytes, nested })
    }

    /// Turns a task's error return into a task failure.
    pub fn fail<E: std::fmt::Display>(e: E) -> InvokeError {
        InvokeError::Failed(format!("{e:#}"))
    }
}
