//! The first messages of a control stream: who connects, and the head's answer.

use crate::ids::{BinaryHash, JobId, NodeId, PeerId};
use crate::resources::ResourceSet;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// What a process connecting to the head is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRole {
    /// A node offering resources and an object store.
    Node(NodeRegistration),
    /// A driver program starting a job whose code is the given binary.
    Driver {
        /// The driver's executable, to be run as worker processes.
        binary: BinaryHash,
        /// A name for logs and status (the program's file name).
        name: String,
        /// Its process id, for the state API (`rayish list workers`).
        pid: u32,
        /// The submitted job it runs for (`RAYISH_JOB_SUBMISSION_ID`, which a job's
        /// entrypoint has), so the job lists its driver.
        submission_id: Option<String>,
        /// The job it ran before it lost its head: a driver reconnecting to a
        /// restarted head goes on with the same job (a [`ToHead::Resume`] follows).
        ///
        /// [`ToHead::Resume`]: super::ToHead::Resume
        resumes: Option<crate::ids::JobId>,
    },
    /// A worker process started by a node for a job.
    Worker {
        /// The node that started it.
        node: NodeId,
        /// The job whose code it runs.
        job: JobId,
        /// [`worker_proof`] of the node's [`NodeRegistration::worker_key`] and the
        /// job: only a process the node started can present it.
        proof: [u8; 32],
        /// Its process id, for the state API (`rayish list workers`).
        pid: u32,
    },
    /// A short-lived client such as `rayish status`.
    Client,
}

/// What a node tells the head about itself when it joins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRegistration {
    /// Chosen by the node, stable for its life.
    pub node_id: NodeId,
    /// Where other nodes and drivers reach its object server.
    pub address: SocketAddr,
    /// Everything it offers to tasks.
    pub resources: ResourceSet,
    /// The machine's host name, for status output.
    pub hostname: String,
    /// The node process id, for status output.
    pub pid: u32,
    /// A random secret of this node incarnation's, told only to the head (over the
    /// encrypted stream): the head accepts a worker of a job on this node only with
    /// the [`worker_proof`] of it, which the node gives the workers it starts.
    pub worker_key: [u8; 32],
    /// Where it serves Prometheus metrics (`--metrics-export-port`), if it does.
    pub metrics_address: Option<SocketAddr>,
    /// Which join of this node process this is, from 1: a node declared dead (after
    /// a pause or a partition) or that lost its head joins again as a new node, with
    /// a new id, as its next incarnation.
    pub incarnation: u32,
    /// Whether this is a node that lost its head and is back with the same id,
    /// workers, tasks and objects (to a restarted head): its inventory follows as
    /// its first message ([`super::ToHead::NodeResumed`]). A head that cannot take
    /// it back refuses it, and the node joins again as a new node.
    pub resumes: bool,
}

/// What a worker of `job` started by a node with `worker_key` presents to the head.
pub fn worker_proof(worker_key: &[u8; 32], job: JobId) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"rayish worker proof v1\0");
    h.update(worker_key);
    h.update(job.0.to_le_bytes());
    h.finalize().into()
}

/// First message on a control stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Who is connecting.
    pub role: PeerRole,
    /// The connecting binary's crate version, for diagnostics.
    pub software_version: String,
}

/// The head's answer to [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Welcome {
    /// Accepted.
    Accepted {
        /// The id the head gave this connection.
        peer: PeerId,
        /// For drivers: the job created for them.
        job: Option<JobId>,
        /// For drivers: the head lacks the binary and wants it uploaded.
        upload_binary: bool,
        /// The head's node id (the head process is also a node).
        head_node: NodeId,
    },
    /// Refused, with the reason to show the user.
    Rejected(String),
}
