//! The node table: every node that joined, live or recently dead, and what it holds.
//!
//! Invariant: a live node's `used` is the sum of what its running tasks hold (less
//! the CPU of those blocked in `get`) plus what its live actors and running job
//! entrypoints hold, and `running`
//! lists exactly the tasks the head sent it that have not ended. Only the methods
//! below change either, each keeping the two in step; a dead node holds nothing.

use super::super::scheduler::{dispatch_factor, is_feasible, NodeView};
use crate::ids::{JobId, NodeId, PeerId, TaskId};
use crate::protocol::{NodeAddress, NodeLoad, NodeRegistration, NodeStatus};
use crate::resources::ResourceSet;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Dead nodes the head keeps listing (Ray's `maximum_gcs_dead_node_cached_count`).
const MAX_DEAD_NODES: usize = 1000;

/// One node.
struct NodeEntry {
    reg: NodeRegistration,
    peer: PeerId,
    alive: bool,
    used: ResourceSet,
    running: HashSet<TaskId>,
    finished: u64,
    last_heartbeat: Instant,
    load: NodeLoad,
    /// What the head may assign it: its resources times `dispatch_factor(...)`.
    capacity: ResourceSet,
    /// Moving average of its tasks' run times, in seconds; `None` before the first.
    avg_run_secs: Option<f64>,
    /// When it joined.
    joined: Instant,
    /// When it was declared dead, and why.
    died: Option<(Instant, String)>,
}

/// When a node joined and when and why it died, for the state API.
#[derive(Debug, Clone)]
pub(super) struct NodeLife {
    /// When it joined.
    pub(super) joined: Instant,
    /// When it was declared dead, and why.
    pub(super) died: Option<(Instant, String)>,
}

/// A node that just died: what it was running, for the head to re-run elsewhere.
pub(super) struct DeadNode {
    /// Its object server address, for the log.
    pub(super) address: std::net::SocketAddr,
    /// The tasks it was running.
    pub(super) running: Vec<TaskId>,
}

/// Every node the head knows, by id.
#[derive(Default)]
pub(super) struct NodeTable {
    nodes: HashMap<NodeId, NodeEntry>,
    /// Dead nodes still listed, oldest first (at most [`MAX_DEAD_NODES`]).
    dead: VecDeque<NodeId>,
    /// Bumped by every join and death.
    version: u64,
}

impl NodeTable {
    /// A node joins; refused while a live node has its id.
    pub(super) fn join(
        &mut self,
        reg: NodeRegistration,
        peer: PeerId,
        now: Instant,
    ) -> Result<(), String> {
        let id = reg.node_id;
        if self.is_live(id) {
            return Err(format!("a live node with id {id} is already registered"));
        }
        // No queueing ahead until the node's tasks are known to be short.
        let capacity = reg.resources.clone();
        self.version += 1;
        self.nodes.insert(
            id,
            NodeEntry {
                capacity,
                avg_run_secs: None,
                reg,
                peer,
                alive: true,
                used: ResourceSet::new(),
                running: HashSet::default(),
                finished: 0,
                last_heartbeat: now,
                joined: now,
                died: None,
                load: NodeLoad::default(),
            },
        );
        Ok(())
    }

    /// Dead node `reg.node_id`, listed from an earlier head, is back as itself (it
    /// lost that head and kept its work): alive again, holding nothing until its
    /// inventory is charged. Refused unless it is listed and dead.
    pub(super) fn rejoin(
        &mut self,
        reg: NodeRegistration,
        peer: PeerId,
        now: Instant,
    ) -> Result<(), String> {
        let id = reg.node_id;
        let Some(old) = self.nodes.get(&id).filter(|n| !n.alive) else {
            return Err(format!("node {id} is not a dead node of this head"));
        };
        // A fresh entry, as a join makes, that keeps when it first joined and what
        // it finished.
        let (joined, finished) = (old.joined, old.finished);
        self.dead.retain(|d| *d != id);
        self.join(reg, peer, now)?;
        if let Some(node) = self.nodes.get_mut(&id) {
            node.joined = joined;
            node.finished = finished;
        }
        Ok(())
    }

    /// Bumped by every join and death.
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// The metrics endpoints of the live nodes that serve one, in address order.
    pub(super) fn metrics_targets(&self) -> Vec<std::net::SocketAddr> {
        let mut targets: Vec<_> = self.live().filter_map(|n| n.reg.metrics_address).collect();
        targets.sort();
        targets
    }

    /// Whether `id` is a live node.
    pub(super) fn is_live(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.alive)
    }

    /// The IP a node registered with.
    pub(super) fn ip(&self, id: NodeId) -> Option<std::net::IpAddr> {
        self.nodes.get(&id).map(|n| n.reg.address.ip())
    }

    /// The connection of a live node.
    pub(super) fn live_peer(&self, id: NodeId) -> Option<PeerId> {
        self.nodes.get(&id).filter(|n| n.alive).map(|n| n.peer)
    }

    /// The connections of every live node.
    pub(super) fn live_peers(&self) -> Vec<PeerId> {
        self.live().map(|n| n.peer).collect()
    }

    fn live(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.values().filter(|n| n.alive)
    }

    /// Whether `proof` is what live node `id` gives the workers it starts for `job`.
    pub(super) fn started_worker(&self, id: NodeId, job: JobId, proof: &[u8; 32]) -> bool {
        self.nodes.get(&id).is_some_and(|n| {
            n.alive && crate::protocol::worker_proof(&n.reg.worker_key, job) == *proof
        })
    }

    /// A heartbeat from node `id` with its load.
    pub(super) fn heartbeat(&mut self, id: NodeId, now: Instant, load: NodeLoad) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.last_heartbeat = now;
            node.load = load;
        }
    }

    /// The head itself was stalled until `now`: every live node counts as heard from.
    pub(super) fn excuse_stall(&mut self, now: Instant) {
        for node in self.nodes.values_mut().filter(|n| n.alive) {
            node.last_heartbeat = node.last_heartbeat.max(now);
        }
    }

    /// Live nodes (but `except`) not heard from for longer than `timeout`.
    pub(super) fn silent(
        &self,
        now: Instant,
        timeout: Duration,
        except: NodeId,
    ) -> Vec<(NodeId, PeerId)> {
        self.live()
            .filter(|n| {
                n.reg.node_id != except && now.saturating_duration_since(n.last_heartbeat) > timeout
            })
            .map(|n| (n.reg.node_id, n.peer))
            .collect()
    }

    /// Node `id` died: it holds nothing now and is listed as dead; `None` if it was
    /// not alive. The dead nodes that no longer fit in the list are forgotten, and
    /// given back in `forgotten`.
    pub(super) fn mark_dead(
        &mut self,
        id: NodeId,
        now: Instant,
        reason: &str,
        forgotten: &mut Vec<NodeId>,
    ) -> Option<DeadNode> {
        let node = self.nodes.get_mut(&id).filter(|n| n.alive)?;
        node.alive = false;
        node.died = Some((now, reason.to_string()));
        self.version += 1;
        node.used = ResourceSet::new();
        let dead = DeadNode {
            address: node.reg.address,
            running: node.running.drain().collect(),
        };
        // Dead nodes stay listed for `rayish status`, the newest MAX_DEAD_NODES only
        // (Ray's maximum_gcs_dead_node_cached_count): a node that rejoins after each
        // pause must not grow the table forever.
        self.dead.push_back(id);
        forgotten.extend(self.trim_dead());
        Some(dead)
    }

    /// Lists `reg`, a node an earlier head of this storage saw, as dead (it is
    /// not connected to this head; one that comes back joins as a new node).
    /// Returns the dead nodes that no longer fit in the list, to be forgotten.
    pub(super) fn restore_dead(
        &mut self,
        reg: NodeRegistration,
        joined: Instant,
        died: (Instant, String),
    ) -> Vec<NodeId> {
        let id = reg.node_id;
        if self.nodes.contains_key(&id) {
            return Vec::new();
        }
        self.version += 1;
        self.nodes.insert(
            id,
            NodeEntry {
                capacity: reg.resources.clone(),
                avg_run_secs: None,
                reg,
                // No connection: a dead node is never sent anything.
                peer: PeerId(u128::MAX),
                alive: false,
                used: ResourceSet::new(),
                running: HashSet::default(),
                finished: 0,
                last_heartbeat: joined,
                joined,
                died: Some(died),
                load: NodeLoad::default(),
            },
        );
        self.dead.push_back(id);
        self.trim_dead()
    }

    /// Forgets the oldest dead nodes past [`MAX_DEAD_NODES`]; returns them.
    fn trim_dead(&mut self) -> Vec<NodeId> {
        let mut forgotten = Vec::new();
        while self.dead.len() > MAX_DEAD_NODES {
            if let Some(old) = self.dead.pop_front() {
                if self.nodes.get(&old).is_some_and(|n| !n.alive) {
                    self.nodes.remove(&old);
                    forgotten.push(old);
                }
            }
        }
        forgotten
    }

    /// Node `id`'s registration, live or dead.
    pub(super) fn registration(&self, id: NodeId) -> Option<&NodeRegistration> {
        self.nodes.get(&id).map(|n| &n.reg)
    }

    /// Whether some live node could ever run a task needing `shape`.
    pub(super) fn feasible(&self, shape: &ResourceSet) -> bool {
        is_feasible(self.live().map(|n| &n.reg.resources), shape)
    }

    /// The live nodes as the placement policy sees them.
    pub(super) fn views(&self) -> Vec<NodeView<'_>> {
        self.live()
            .map(|n| NodeView {
                id: n.reg.node_id,
                total: &n.capacity,
                used: &n.used,
            })
            .collect()
    }

    /// Where to reach those of `nodes` that are alive.
    pub(super) fn addresses(&self, nodes: &HashSet<NodeId>) -> Vec<NodeAddress> {
        nodes
            .iter()
            .filter_map(|n| self.nodes.get(n).filter(|e| e.alive))
            .map(|e| NodeAddress {
                node: e.reg.node_id,
                address: e.reg.address,
            })
            .collect()
    }

    /// Task `task` starts on node `id`, holding `demand`; the node's connection, if
    /// the node is known.
    pub(super) fn start_task(
        &mut self,
        id: NodeId,
        task: TaskId,
        demand: &ResourceSet,
    ) -> Option<PeerId> {
        let node = self.nodes.get_mut(&id)?;
        node.used.add(demand);
        node.running.insert(task);
        Some(node.peer)
    }

    /// Task `task` ended on node `id`, giving back `held`.
    pub(super) fn end_task(&mut self, id: NodeId, task: TaskId, held: &ResourceSet) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.used.subtract(held);
            node.running.remove(&task);
        }
    }

    /// A creation task became its actor: what it holds stays charged, now to the
    /// actor (given back with [`Self::release`]).
    pub(super) fn task_became_actor(&mut self, id: NodeId, task: TaskId) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.running.remove(&task);
        }
    }

    /// Something not a task (a job's entrypoint) holds `demand` on live node `id`;
    /// whether it is charged (the node is known and live).
    pub(super) fn hold(&mut self, id: NodeId, demand: &ResourceSet) -> bool {
        match self.nodes.get_mut(&id).filter(|n| n.alive) {
            Some(node) => {
                node.used.add(demand);
                true
            }
            None => false,
        }
    }

    /// Something not a running task (an actor, an entrypoint) gives back `held` on
    /// node `id`.
    pub(super) fn release(&mut self, id: NodeId, held: &ResourceSet) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.used.subtract(held);
        }
    }

    /// A task on node `id` blocked in `get` (lends `cpu` to others) or came back.
    pub(super) fn lend(&mut self, id: NodeId, cpu: &ResourceSet, blocked: bool) {
        if let Some(node) = self.nodes.get_mut(&id) {
            if blocked {
                node.used.subtract(cpu);
            } else {
                node.used.add(cpu);
            }
        }
    }

    /// A task on node `id` reported its end after `run_micros`: the node's average
    /// run time, and so how far ahead the head may queue on it, follows.
    pub(super) fn note_run_time(&mut self, id: NodeId, run_micros: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let secs = run_micros as f64 / 1e6;
        let avg = match node.avg_run_secs {
            Some(avg) => 0.8 * avg + 0.2 * secs,
            None => secs,
        };
        node.avg_run_secs = Some(avg);
        node.capacity = node.reg.resources.scaled(dispatch_factor(avg));
    }

    /// Node `id` finished a task (counted for `rayish status`).
    pub(super) fn count_finished(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.finished += 1;
        }
    }

    /// Every listed node as `rayish status` shows it, live first, by address.
    pub(super) fn statuses(&self) -> Vec<NodeStatus> {
        let mut nodes: Vec<NodeStatus> = self
            .nodes
            .values()
            .map(|n| NodeStatus {
                node_id: n.reg.node_id,
                address: n.reg.address,
                hostname: n.reg.hostname.clone(),
                alive: n.alive,
                total: n.reg.resources.clone(),
                available: if n.alive {
                    n.reg.resources.minus(&n.used)
                } else {
                    ResourceSet::new()
                },
                running_tasks: n.running.len() as u64,
                finished_tasks: n.finished,
                load: n.load,
                incarnation: n.reg.incarnation,
            })
            .collect();
        nodes.sort_by_key(|n| (!n.alive, n.address));
        nodes
    }

    /// When node `id` joined and died.
    pub(super) fn life(&self, id: &NodeId) -> Option<NodeLife> {
        self.nodes.get(id).map(|n| NodeLife {
            joined: n.joined,
            died: n.died.clone(),
        })
    }
}
