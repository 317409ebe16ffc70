//! The peer table: every connection that finished its handshake, what it is, and how
//! to reach it.
//!
//! Invariant: a peer is listed from its accepted handshake until its connection
//! ends; what it may do (submit, put, report as a node) is decided by its kind here,
//! never by what its messages claim.

use crate::ids::{JobId, NodeId, PeerId};
use crate::protocol::FromHead;
use crate::transport::MessageSender;
use rustc_hash::FxHashMap as HashMap;
use std::time::Instant;

/// What a connected peer is.
pub(super) enum PeerKind {
    /// A node, with its id.
    Node(NodeId),
    /// The driver of a job.
    Driver(JobId),
    /// A worker of a job.
    Worker {
        /// Its job.
        job: JobId,
        /// The node that started it.
        node: NodeId,
    },
    /// `rayish status` or the autoscaler.
    Client,
}

struct Peer {
    kind: PeerKind,
    sender: MessageSender<FromHead>,
    process: PeerProcess,
}

/// The process behind a driver's or worker's connection, for the state API.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerProcess {
    /// Its process id, as it said (0 for nodes and clients).
    pub(super) pid: u32,
    /// When its handshake was accepted.
    pub(super) since: Instant,
}

/// Every connected peer, by id.
#[derive(Default)]
pub(super) struct PeerTable {
    peers: HashMap<PeerId, Peer>,
}

impl PeerTable {
    /// `peer` is connected as `kind`, reached through `sender`.
    pub(super) fn insert(
        &mut self,
        peer: PeerId,
        kind: PeerKind,
        sender: MessageSender<FromHead>,
        process: PeerProcess,
    ) {
        self.peers.insert(
            peer,
            Peer {
                kind,
                sender,
                process,
            },
        );
    }

    /// Every connected peer with its process.
    pub(super) fn iter(&self) -> impl Iterator<Item = (PeerId, &PeerKind, PeerProcess)> {
        self.peers.iter().map(|(id, p)| (*id, &p.kind, p.process))
    }

    /// `peer`'s connection ended: what it was, if it was listed.
    pub(super) fn remove(&mut self, peer: PeerId) -> Option<PeerKind> {
        self.peers.remove(&peer).map(|p| p.kind)
    }

    /// Queues `msg` to `peer` if it is connected.
    pub(super) fn send(&self, peer: PeerId, msg: FromHead) {
        if let Some(p) = self.peers.get(&peer) {
            p.sender.send(msg);
        }
    }

    /// The job of a driver or worker.
    pub(super) fn job(&self, peer: PeerId) -> Option<JobId> {
        match self.peers.get(&peer)?.kind {
            PeerKind::Driver(job) | PeerKind::Worker { job, .. } => Some(job),
            _ => None,
        }
    }

    /// The node id of a node.
    pub(super) fn node(&self, peer: PeerId) -> Option<NodeId> {
        match self.peers.get(&peer)?.kind {
            PeerKind::Node(node) => Some(node),
            _ => None,
        }
    }
}
