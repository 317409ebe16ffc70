//! The cluster snapshot `rayish status` shows, and the autoscaler's report in it.

use super::NodeLoad;
use crate::ids::NodeId;
use crate::resources::ResourceSet;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A snapshot of the cluster for `rayish status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Every node that has joined, dead ones included.
    pub nodes: Vec<NodeStatus>,
    /// Tasks waiting for arguments or resources.
    pub pending_tasks: u64,
    /// Tasks running now.
    pub running_tasks: u64,
    /// Tasks finished since the head started.
    pub finished_tasks: u64,
    /// Resource shapes of tasks waiting for resources, with counts.
    pub pending_demand: Vec<(ResourceSet, u64)>,
    /// Resource shapes no node can ever satisfy, with counts.
    pub infeasible_demand: Vec<(ResourceSet, u64)>,
    /// Objects the head tracks.
    pub objects: u64,
    /// Drivers connected now.
    pub drivers: u64,
    /// Actors alive or being (re-)created now.
    pub actors: u64,
    /// The autoscaler's last report, if the head runs one.
    pub autoscaler: Option<AutoscalerReport>,
    /// The head's starts on its storage, if it keeps one.
    pub head_starts: Option<HeadStarts>,
}

/// When the head started, and how often it was started on this storage before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeadStarts {
    /// Starts on this storage, this one included.
    pub count: u64,
    /// When the first began (ms since the Unix epoch).
    pub first_ms: u64,
    /// When this one began.
    pub last_ms: u64,
}

impl HeadStarts {
    /// Restarts: starts after the first.
    pub fn restarts(&self) -> u64 {
        self.count.saturating_sub(1)
    }
}

/// What the autoscaler is doing, as it last reported.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AutoscalerReport {
    /// Fewest and most workers it keeps.
    pub min_workers: u32,
    /// Most workers.
    pub max_workers: u32,
    /// Seconds a worker may be idle before it is stopped.
    pub idle_timeout_secs: f64,
    /// Each machine of the pool and what it is doing.
    pub machines: Vec<PoolMachine>,
    /// Its latest decisions and their reasons, newest last.
    pub recent: Vec<String>,
}

/// One machine of the autoscaler's pool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolMachine {
    /// Host name or address, as in the cluster file.
    pub host: String,
    /// `idle` (no node), `launching`, `running`, `stopping` or `failed`.
    pub state: String,
    /// Why it is in that state, or for how long a running worker has been idle.
    pub detail: String,
}

/// One node in a [`ClusterStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub node_id: NodeId,
    /// Its object server address.
    pub address: SocketAddr,
    /// Host name.
    pub hostname: String,
    /// Whether it is alive.
    pub alive: bool,
    /// Everything it offers.
    pub total: ResourceSet,
    /// What is free now.
    pub available: ResourceSet,
    /// Tasks running there.
    pub running_tasks: u64,
    /// Tasks it has finished.
    pub finished_tasks: u64,
    /// Its last reported load.
    pub load: NodeLoad,
    /// Which join of its node process it is, from 1 (see
    /// [`super::NodeRegistration::incarnation`]).
    pub incarnation: u32,
}
