//! Identifiers of the things a cluster tracks: objects, tasks, nodes, jobs, processes and binaries.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub u128);

        impl $name {
            /// A fresh random identifier; 128 random bits make collisions negligible.
            pub fn random() -> Self {
                Self(rand::random())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:032x}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // The first 12 hex digits are enough to tell ids apart in logs.
                write!(f, concat!($prefix, "-{:012x}"), self.0 >> 80)
            }
        }
    };
}

id_type!(
    /// An object in the cluster: a task's return value or a `put` value.
    ObjectId,
    "obj"
);
id_type!(
    /// One remote function call. Retries of the call keep the same id.
    TaskId,
    "task"
);
impl TaskId {
    /// Stands for the driver as the parent of the tasks it submits (no task is 0).
    pub const DRIVER: TaskId = TaskId(0);
}

id_type!(
    /// A node process (raylet in Ray's terms): runs workers and holds objects.
    NodeId,
    "node"
);
id_type!(
    /// One driver program's run on the cluster.
    JobId,
    "job"
);
id_type!(
    /// A stateful actor: one worker process holding a user's value, whose methods are
    /// called in order. Restarts keep the id.
    ActorId,
    "actor"
);
id_type!(
    /// A process connected to the head (driver, worker, node or CLI client).
    PeerId,
    "peer"
);

/// The SHA-256 of a driver's executable, in hex: names the code a job runs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub struct BinaryHash(pub String);

impl BinaryHash {
    /// Whether this looks like a hex SHA-256; anything else is refused before it is used as a file name.
    pub fn is_well_formed(&self) -> bool {
        self.0.len() == 64 && self.0.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

impl fmt::Display for BinaryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
