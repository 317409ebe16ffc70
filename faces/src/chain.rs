//! Chain of Responsibility: an image passes through handlers, each with one job, each
//! passing it on or stopping it with a reason.
//!
//! A chain is plain data (a list of [`Stage`]s: a handler name and its JSON config), so
//! that it can travel in a remote task and be rebuilt on any node. Handlers are found by
//! name in a registry that the built-in stages and user handlers join the same way
//! ([`crate::register_handler!`]); a user's handler goes anywhere in the chain without
//! touching the others.

use crate::job::{FaceJob, Status};
use crate::settings::Settings;
use serde::{Deserialize, Serialize};

/// Why a handler stopped an image.
#[derive(Clone, Debug, PartialEq)]
pub enum Stop {
    /// No face in it.
    NoFace,
    /// Deliberately left out (e.g. by a size filter).
    Skipped(String),
    /// An error, with its reason.
    Failed(String),
    /// Not read here: the input is not this node's to read (see
    /// [`FaceJob::listed`]); the driver reads it instead.
    NotRead(String),
}

/// One link of the chain.
pub trait Handler {
    /// Does this handler's one job on `job`, or stops it.
    fn handle(&self, job: &mut FaceJob) -> Result<(), Stop>;
}

/// A handler's name and config: what travels to the node that runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// The name it is registered under.
    pub name: String,
    /// Its settings as JSON text (each handler defines its own shape). Text, not a
    /// `serde_json::Value`, because task arguments travel as bincode.
    pub config: String,
}

impl Stage {
    /// A stage from a name and any serializable config.
    pub fn new<C: Serialize>(name: &str, config: &C) -> Self {
        Stage {
            name: name.to_string(),
            config: serde_json::to_string(config).unwrap_or_else(|_| "null".into()),
        }
    }
}

/// Builds a handler from its JSON config.
pub type BuildHandler = fn(&str) -> Result<Box<dyn Handler>, String>;

/// A registered handler kind; submitted with [`crate::register_handler!`].
pub struct HandlerRegistration {
    /// The name stages refer to.
    pub name: &'static str,
    /// Its constructor.
    pub build: BuildHandler,
}

inventory::collect!(HandlerRegistration);

/// Registers a handler type under a name. The type must implement [`Handler`] and
/// `serde::Deserialize` (its config). Works in the user's own crate: worker processes
/// run the user's binary, so they know the handler too.
#[macro_export]
macro_rules! register_handler {
    ($name:expr, $ty:ty) => {
        $crate::__private::inventory::submit! {
            $crate::chain::HandlerRegistration {
                name: $name,
                build: |config| {
                    let handler: $ty = $crate::__private::serde_json::from_str(config)
                        .map_err(|e| format!("bad config for handler {}: {e}", $name))?;
                    Ok(Box::new(handler) as Box<dyn $crate::chain::Handler>)
                },
            }
        }
    };
}

/// Errors building a chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// No handler by that name in this binary.
    #[error("no handler named {0:?} is registered in this program (register it with faces::register_handler!)")]
    UnknownHandler(String),
    /// Its config did not parse.
    #[error("{0}")]
    BadConfig(String),
}

/// The stage names of the built-in chain, in order.
pub const BUILT_IN: [&str; 5] = ["read", "decode", "detect", "landmarks", "encode"];

/// An ordered list of stages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    /// The stages, first to last.
    pub stages: Vec<Stage>,
}

impl Chain {
    /// face_recognition's pipeline: read → decode → detect → landmarks → encode, with
    /// `cnn_fallback` after detect when `settings.fallback_cnn`.
    pub fn standard(settings: &Settings) -> Self {
        let chain = Chain {
            stages: BUILT_IN.iter().map(|n| Stage::new(n, settings)).collect(),
        };
        if settings.fallback_cnn {
            chain.insert_before("landmarks", Stage::new("cnn_fallback", settings))
        } else {
            chain
        }
    }

    /// Inserts `stage` before the stage named `before`; at the end if there is none.
    pub fn insert_before(mut self, before: &str, stage: Stage) -> Self {
        let at = self
            .stages
            .iter()
            .position(|s| s.name == before)
            .unwrap_or(self.stages.len());
        self.stages.insert(at, stage);
        self
    }

    /// Splits the chain after the stage named `name`: (up to and including it, the
    /// rest). Without such a stage, the first part is empty.
    pub fn split_after(&self, name: &str) -> (Chain, Chain) {
        let at = self
            .stages
            .iter()
            .position(|s| s.name == name)
            .map_or(0, |i| i + 1);
        (
            Chain {
                stages: self.stages[..at].to_vec(),
            },
            Chain {
                stages: self.stages[at..].to_vec(),
            },
        )
    }

    /// Builds the handlers of every stage.
    pub fn build(&self) -> Result<Vec<Box<dyn Handler>>, ChainError> {
        self.stages.iter().map(build_stage).collect()
    }
}

/// Builds the handler of one stage from the registry.
pub fn build_stage(stage: &Stage) -> Result<Box<dyn Handler>, ChainError> {
    let reg = inventory::iter::<HandlerRegistration>
        .into_iter()
        .find(|r| r.name == stage.name)
        .ok_or_else(|| ChainError::UnknownHandler(stage.name.clone()))?;
    (reg.build)(&stage.config).map_err(ChainError::BadConfig)
}

/// Applies one handler to a job unless an earlier one stopped it, recording a stop.
pub fn apply(handler: &dyn Handler, job: &mut FaceJob) {
    if job.is_stopped() {
        return;
    }
    if let Err(stop) = handler.handle(job) {
        job.status = match stop {
            Stop::NoFace => Status::NoFace,
            Stop::Skipped(r) => Status::Skipped(r),
            Stop::Failed(r) => Status::Failed(r),
            Stop::NotRead(r) => Status::NotRead(r),
        };
        // A stopped image carries no pixels further.
        job.bytes = Vec::new();
        job.image = None;
    }
}
