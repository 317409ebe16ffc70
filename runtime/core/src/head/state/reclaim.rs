//! Nodes back from a head restart with their work: a node alive under the earlier
//! head that reconnects with the same id within the node timeout is taken back, with
//! the tasks it still runs and the objects it holds ([`reclaim_table`]); a resumed
//! driver's task is then claimed (its result found, or found running) rather than run
//! again. What no driver claims within the reconnect timeout is let go.

use super::reclaim_table::{Claim, HeldTask};
use super::*;
use crate::ids::ActorId;
use crate::protocol::NodeInventory;
use crate::resources::CPU;

/// A resumed task that no returning node has a result of or runs: it must run
/// (again).
pub(super) struct Rerun {
    /// The task.
    pub(super) spec: Arc<TaskSpec>,
    /// The attempt it runs as.
    pub(super) attempt: u32,
    /// A returning node reported that its worker died running it.
    pub(super) died_running: bool,
}

impl HeadState {
    /// After a restart: the nodes alive under the earlier head may come back.
    pub(super) fn expect_nodes(&mut self, nodes: Vec<NodeId>) {
        if nodes.is_empty() {
            return;
        }
        let now = self.clock.now();
        self.reclaim.expect(
            nodes,
            now + self.settings.node_timeout,
            now + self.settings.head_reconnect_timeout,
        );
    }

    /// A node that lost the earlier head asks to come back with its work: taken
    /// back if this head expects it, else refused (it then joins as a new node).
    pub(super) fn node_returns(
        &mut self,
        reg: NodeRegistration,
        peer: PeerId,
    ) -> Result<(), String> {
        let id = reg.node_id;
        let now = self.clock.now();
        if !self.reclaim.may_return(id, now) {
            return Err(format!(
                "node {id} cannot be taken back with its work (this head does not expect it, \
                 or it came back later than the node timeout); join as a new node"
            ));
        }
        self.nodes.rejoin(reg, peer, now)?;
        self.reclaim.returned(id);
        tracing::info!(node = ?id, "node came back with its work");
        self.remember_node(id);
        Ok(())
    }

    /// A returning node's inventory: its tasks are charged to it and wait for their
    /// drivers' claims with its objects; resumed tasks waiting for it may go on.
    pub(super) fn node_inventory(&mut self, peer: PeerId, mut inventory: NodeInventory) {
        let Some(node) = self.peers.node(peer) else {
            return;
        };
        if !self.reclaim.is_returning(node) {
            tracing::warn!(node = ?node, "an inventory from a node that did not come back; ignored");
            return;
        }
        let (tasks, objects) = (inventory.tasks.len(), inventory.objects.len());
        for t in &mut inventory.tasks {
            if t.blocked {
                // It waits in `get` (for tasks it submitted, maybe): its CPU stays
                // lent, or its children could never get one.
                let cpu = t.resources.part(CPU);
                t.resources.subtract(&cpu);
            }
            self.nodes.start_task(node, t.task_id, &t.resources);
        }
        for (actor, pid) in inventory.actors {
            self.actor_came_back(node, actor, pid);
        }
        self.reclaim
            .inventory(node, inventory.tasks, inventory.objects);
        tracing::info!(node = ?node, tasks, objects, "a returning node's inventory");
    }

    /// A returning node sent everything it held for this head (the task ends among
    /// it are in the reclaim table now): resumed tasks waiting for it may go on.
    /// Not sooner: a task that ended while the head was away is in no inventory,
    /// and its end must be known before its claim, or it would run twice.
    pub(super) fn node_caught_up(&mut self, peer: PeerId) {
        let Some(node) = self.peers.node(peer) else {
            return;
        };
        if self.reclaim.caught_up(node) {
            self.release_parked();
        }
    }

    /// Resumes the tasks that waited for the returning nodes, once none is awaited.
    pub(super) fn release_parked(&mut self) {
        let Some((parked, given_up)) = self.reclaim.unpark(self.clock.now()) else {
            return;
        };
        for node in given_up {
            tracing::warn!(node = ?node, "a node alive before the restart did not come back in time");
        }
        for actor in self.reclaim.actors_not_back() {
            self.actor_lost(
                actor,
                "its node did not come back after the head restarted".to_string(),
            );
        }
        let mut freed = Freed::default();
        let now = self.clock.now();
        // Held objects first: parked tasks may take them as arguments.
        for (peer, id) in self.reclaim.take_parked_holds() {
            if self.peers.job(peer).is_some() {
                self.claim_held(peer, id, now);
            }
        }
        for (peer, spec, attempt) in parked {
            let pins: Vec<ObjectId> = spec
                .arg_refs()
                .chain(spec.nested_refs.iter().copied())
                .collect();
            if self.peers.job(peer) == Some(spec.job) {
                self.resume_task(peer, spec, attempt, now);
            } else {
                // Its driver left while it waited: nobody wants it; its pending
                // result goes.
                let return_id = spec.return_id;
                let err = TaskError::WorkerDied {
                    function: spec.function.to_string(),
                    attempts: attempt,
                    reason: "its driver left while it waited for the nodes".into(),
                };
                self.objects
                    .create(return_id, ObjectValue::Error(Box::new(err)), None);
                self.objects.free_if_unreferenced(return_id, &mut freed);
            }
            // Pinned again by the task now, if it runs or is running.
            for id in pins {
                self.objects.release(id, &mut freed);
            }
        }
        self.apply_freed(freed);
    }

    /// A returning node still hosts `actor` in process `pid`: a detached actor this
    /// head waits for is alive there again, with its state; any other is ended.
    fn actor_came_back(&mut self, node: NodeId, actor: ActorId, pid: u32) {
        if !self.reclaim.take_actor(actor, node) {
            tracing::info!(?actor, node = ?node, "ending an actor this head does not know");
            if let Some(peer) = self.nodes.live_peer(node) {
                self.send(peer, FromHead::KillActor(actor));
            }
            return;
        }
        let Some(a) = self.actors.get(&actor) else {
            return;
        };
        let held = a.creation().resources.clone();
        self.nodes.hold(node, &held);
        self.actors.mark_alive(actor, node, held, pid);
        tracing::info!(?actor, node = ?node, "an actor came back with its node");
        self.remember_actor(actor);
        self.dispatch_calls(actor);
    }

    /// A resumed task waits for the nodes that may still come back with it: known
    /// (pending) meanwhile, so the driver can wait for it, and its arguments pinned,
    /// so what the driver holds only for it stays.
    pub(super) fn park_resumed(&mut self, peer: PeerId, spec: Arc<TaskSpec>, attempt: u32) {
        self.objects
            .create(spec.return_id, ObjectValue::Pending, Some(peer));
        for id in spec.arg_refs().chain(spec.nested_refs.iter().copied()) {
            self.objects.retain(id);
        }
        self.reclaim.park(peer, spec, attempt);
    }

    /// A resumed task: what the returning nodes have of it, if anything. `None`
    /// once it is taken care of; else it must run again.
    pub(super) fn claim_task(
        &mut self,
        peer: PeerId,
        spec: Arc<TaskSpec>,
        attempt: u32,
        now: Instant,
    ) -> Option<Rerun> {
        let return_id = spec.return_id;
        let rerun = |spec, attempt, died_running| {
            Some(Rerun {
                spec,
                attempt,
                died_running,
            })
        };
        match self.reclaim.claim(spec.task_id, return_id, now) {
            Claim::Nothing => rerun(spec, attempt, false),
            Claim::Wait => {
                self.park_resumed(peer, spec, attempt);
                None
            }
            Claim::Stored { nodes, size } => {
                self.objects
                    .create(return_id, ObjectValue::OnNodes { nodes, size }, Some(peer));
                self.keep_lineage(&return_id, spec);
                self.object_ready(return_id);
                None
            }
            Claim::Ended {
                node,
                attempt: ran,
                outcome,
            } => {
                let value = match outcome {
                    TaskOutcome::Stored(StoredValue::Inline(v)) => ObjectValue::Inline(v),
                    TaskOutcome::Stored(StoredValue::OnNode { size }) => ObjectValue::OnNodes {
                        nodes: HashSet::from_iter([node]),
                        size,
                    },
                    TaskOutcome::Failed(err) => ObjectValue::Error(Box::new(err)),
                    // Lost after all: run again as the attempt after the one that
                    // died (an unavailable argument uses no retry).
                    TaskOutcome::WorkerDied(_) => return rerun(spec, attempt.max(ran + 1), true),
                    TaskOutcome::ArgumentUnavailable { .. } => return rerun(spec, attempt, false),
                };
                let stored = matches!(value, ObjectValue::OnNodes { .. });
                self.objects.create(return_id, value, Some(peer));
                if stored {
                    self.keep_lineage(&return_id, spec);
                }
                self.object_ready(return_id);
                None
            }
            Claim::Running(held) => {
                self.adopt_running(peer, spec, held);
                None
            }
        }
    }

    /// A task a returning node still runs enters the task table as running there,
    /// with its arguments pinned, as if this head had assigned it.
    fn adopt_running(&mut self, peer: PeerId, spec: Arc<TaskSpec>, held: HeldTask) {
        let (task_id, return_id) = (spec.task_id, spec.return_id);
        self.objects
            .create(return_id, ObjectValue::Pending, Some(peer));
        for id in spec.arg_refs().chain(spec.nested_refs.iter().copied()) {
            self.objects.retain(id);
        }
        let call = match spec.kind {
            TaskKind::ActorCall(_) => Some(self.actors.next_call_seq()),
            _ => None,
        };
        let now_ms = self.clock_ms();
        self.tasks.insert(spec, held.attempt, now_ms);
        // Charged to the node when its inventory came.
        self.tasks.start(task_id, held.node, held.resources, now_ms);
        if held.blocked {
            self.tasks.mark_blocked(task_id);
        }
        if let Some(seq) = call {
            // A retry of it goes back in line before the caller's later calls.
            self.tasks.set_call(task_id, seq, peer);
        }
    }

    /// A node reported the end of a task this head has no entry for: one it held
    /// when it came back, not claimed yet (its resources are freed; the end is kept
    /// for the claim), or a stale one.
    pub(super) fn unclaimed_task_ended(
        &mut self,
        node: NodeId,
        task_id: TaskId,
        attempt: u32,
        outcome: TaskOutcome,
    ) {
        let now = self.clock.now();
        if let Some(held) = self
            .reclaim
            .task_ended(node, task_id, attempt, outcome, now)
        {
            self.nodes.end_task(node, task_id, &held);
        }
    }

    /// Past the claim window: tasks no driver claimed are stopped (their jobs ended
    /// with their drivers) and objects nobody claimed are deleted on their nodes.
    pub(super) fn expire_reclaim(&mut self) {
        let Some(left) = self.reclaim.expire(self.clock.now()) else {
            return;
        };
        let mut jobs: HashMap<NodeId, HashSet<JobId>> = HashMap::default();
        for (task_id, held) in &left.tasks {
            if self.nodes.is_live(held.node) {
                self.nodes.end_task(held.node, *task_id, &held.resources);
            }
            if !self.jobs.is_alive(held.job) {
                jobs.entry(held.node).or_default().insert(held.job);
            }
        }
        let mut objects: HashMap<NodeId, Vec<ObjectId>> = HashMap::default();
        for (id, nodes) in left.objects {
            if self.objects.contains(&id) {
                continue;
            }
            for n in nodes {
                objects.entry(n).or_default().push(id);
            }
        }
        if !left.tasks.is_empty() || !objects.is_empty() {
            tracing::info!(
                tasks = left.tasks.len(),
                objects = objects.values().map(Vec::len).sum::<usize>(),
                "letting go of what returning nodes brought and no driver claimed"
            );
        }
        for (node, jobs) in jobs {
            if let Some(peer) = self.nodes.live_peer(node) {
                for job in jobs {
                    self.send(peer, FromHead::JobEnded(job));
                }
            }
        }
        for (node, ids) in objects {
            if let Some(peer) = self.nodes.live_peer(node) {
                self.send(peer, FromHead::DeleteObjects(ids));
            }
        }
        // Drivers' actors: those whose driver did not come back end with its job,
        // and those nobody declared a handle to end as unreferenced actors do.
        for job in left.driverless {
            if self.jobs.driver_gone(job) && self.jobs.is_alive(job) {
                tracing::info!(job = ?job, "the driver of a job with actors did not come back");
                self.job_ended(job);
            }
        }
        let mut freed = Freed::default();
        for handle in left.handles {
            self.objects.release(handle, &mut freed);
        }
        self.apply_freed(freed);
    }
}
