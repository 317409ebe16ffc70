//! What nodes brought back to a restarted head: the nodes alive under the earlier
//! head that may still come back with their work, and, of what the returning ones
//! reported (tasks assigned to them, task ends, stored objects), what no driver has
//! claimed yet.
//!
//! Invariant: a task or object is here until a driver claims it (it then enters the
//! task or object table) or the claim window ends (it is then let go on its node),
//! never in both places; while a node that may come back has not reported (its
//! inventory, then every task end it held for the head, up to `NodeCaughtUp`),
//! resumed tasks are parked rather than run, so nothing a node ran or still runs is
//! run twice. A
//! driver's actor taken back from the storage is held (its handle object pinned)
//! until the window ends, so its holders can declare it first.

use crate::ids::{ActorId, JobId, NodeId, ObjectId, PeerId, TaskId};
use crate::protocol::{AssignedTask, TaskKind, TaskOutcome, TaskSpec};
use crate::resources::ResourceSet;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;
use std::time::Instant;

/// A task a returning node still holds, not yet claimed.
#[derive(Debug, Clone)]
pub(super) struct HeldTask {
    /// Where it runs.
    pub(super) node: NodeId,
    /// Its job.
    pub(super) job: JobId,
    /// The attempt the node runs.
    pub(super) attempt: u32,
    /// What it holds there (charged to the node): no CPU while it is blocked.
    pub(super) resources: ResourceSet,
    /// It waits in `get`, its CPU lent to others.
    pub(super) blocked: bool,
}

/// What a claim of a resumed task found.
pub(super) enum Claim {
    /// Its result is stored on these nodes: nothing to run.
    Stored { nodes: HashSet<NodeId>, size: u64 },
    /// Its end was reported by `node` (attempt `attempt`).
    Ended {
        node: NodeId,
        attempt: u32,
        outcome: TaskOutcome,
    },
    /// A node still runs it (resources charged there).
    Running(HeldTask),
    /// A node that may come back has not reported yet: wait for it.
    Wait,
    /// Nobody has it: run it again.
    Nothing,
}

/// A resumed task waiting for the expected nodes: the driver that resumed it, the
/// task, and the attempt it would run as.
pub(super) type ParkedTask = (PeerId, Arc<TaskSpec>, u32);

/// What is let go at the end of the claim window.
#[derive(Default)]
pub(super) struct Unclaimed {
    /// Tasks still held, by node.
    pub(super) tasks: Vec<(TaskId, HeldTask)>,
    /// Objects, with the nodes holding them.
    pub(super) objects: Vec<(ObjectId, Vec<NodeId>)>,
    /// Actors' handle objects held for their drivers, to release.
    pub(super) handles: Vec<ObjectId>,
    /// Jobs whose drivers did not come back, to end.
    pub(super) driverless: Vec<JobId>,
}

/// See the module documentation.
#[derive(Default)]
pub(super) struct ReclaimTable {
    /// Alive under the earlier head, not back yet.
    expected: HashSet<NodeId>,
    /// Back (connected again), their inventory and what they held for the head not
    /// all in yet.
    returning: HashSet<NodeId>,
    /// Returning nodes whose inventory is in (what they held is still coming).
    reported: HashSet<NodeId>,
    /// Until when expected nodes may come back.
    nodes_until: Option<Instant>,
    /// Until when what they brought waits for its drivers.
    claims_until: Option<Instant>,
    running: HashMap<TaskId, HeldTask>,
    ended: HashMap<TaskId, (NodeId, u32, TaskOutcome)>,
    objects: HashMap<ObjectId, (u64, HashSet<NodeId>)>,
    /// Resumed tasks waiting for the expected nodes, in arrival order.
    parked: Vec<ParkedTask>,
    /// Objects a resumed peer holds that no returning node has reported yet: taken
    /// once none is awaited.
    parked_holds: Vec<(PeerId, ObjectId)>,
    /// The callers and actors of the parked actor calls: a caller's later calls to
    /// that actor wait behind them.
    parked_calls: HashSet<(PeerId, ActorId)>,
    /// Actors waiting for the node they lived on.
    actors: HashMap<ActorId, NodeId>,
    /// Actors whose node did not bring them back (being created again), until the
    /// window ends: their calls may have run in the process lost.
    lost_actors: HashSet<ActorId>,
    /// Handle objects of drivers' actors, held for their drivers (and workers) to
    /// claim by declaring them: released when the window ends.
    handles: Vec<ObjectId>,
    /// Jobs living on for their actors until their drivers come back: ended when
    /// the window ends if they have not.
    driverless: HashSet<JobId>,
}

impl ReclaimTable {
    /// After a restart: `nodes` may come back until `nodes_until`, and what they
    /// bring waits for its drivers until `claims_until`.
    pub(super) fn expect(
        &mut self,
        nodes: impl IntoIterator<Item = NodeId>,
        nodes_until: Instant,
        claims_until: Instant,
    ) {
        self.expected.extend(nodes);
        self.nodes_until = Some(nodes_until);
        self.claims_until = Some(claims_until);
    }

    /// Whether `node` may still come back (it is expected, or back without its
    /// inventory yet).
    pub(super) fn awaits(&self, node: NodeId) -> bool {
        self.expected.contains(&node) || self.returning.contains(&node)
    }

    /// The handle object of a driver's actor, taken back from the storage: held
    /// until the claim window ends (opened now if no node is expected), while `job`
    /// waits for its driver.
    pub(super) fn hold_handle(&mut self, handle: ObjectId, job: JobId, until: Instant) {
        self.claims_until.get_or_insert(until);
        self.handles.push(handle);
        self.driverless.insert(job);
    }

    /// Whether `job` lives on for its actors until the window ends, waiting for
    /// its driver.
    pub(super) fn awaits_driver(&self, job: JobId) -> bool {
        self.driverless.contains(&job)
    }

    /// Actor `actor` lived on `node`, which may come back with it.
    pub(super) fn await_actor(&mut self, actor: ActorId, node: NodeId) {
        self.actors.insert(actor, node);
    }

    /// Whether `actor` waited for `node`, which has it: taken.
    pub(super) fn take_actor(&mut self, actor: ActorId, node: NodeId) -> bool {
        if self.actors.get(&actor) == Some(&node) {
            self.actors.remove(&actor);
            true
        } else {
            false
        }
    }

    /// The actors still waiting once no node is awaited any more: their nodes did
    /// not bring them back.
    pub(super) fn actors_not_back(&mut self) -> Vec<ActorId> {
        if !self.expected.is_empty() || !self.returning.is_empty() {
            return Vec::new();
        }
        let lost: Vec<ActorId> = self.actors.drain().map(|(a, _)| a).collect();
        self.lost_actors.extend(lost.iter().copied());
        lost
    }

    /// Whether `actor`'s process may have been lost with its node (its node is
    /// still awaited, or did not bring it back): a call on it that no node reports
    /// may have run there.
    pub(super) fn lost_with_node(&self, actor: ActorId) -> bool {
        self.actors.contains_key(&actor) || self.lost_actors.contains(&actor)
    }

    /// Whether node `id` may come back with its work now.
    pub(super) fn may_return(&self, id: NodeId, now: Instant) -> bool {
        self.expected.contains(&id) && self.nodes_until.is_some_and(|t| now <= t)
    }

    /// Node `id` connected again; its inventory comes next.
    pub(super) fn returned(&mut self, id: NodeId) {
        if self.expected.remove(&id) {
            self.returning.insert(id);
        }
    }

    /// Whether `id` connected again and its inventory is awaited.
    pub(super) fn is_returning(&self, id: NodeId) -> bool {
        self.returning.contains(&id) && !self.reported.contains(&id)
    }

    /// Node `id` sent all it held after its inventory: whether it was returning.
    pub(super) fn caught_up(&mut self, id: NodeId) -> bool {
        self.reported.remove(&id);
        self.returning.remove(&id)
    }

    /// Node `id`'s inventory: the tasks it holds (the caller charges them to the
    /// node) and its objects.
    pub(super) fn inventory(
        &mut self,
        id: NodeId,
        tasks: Vec<AssignedTask>,
        objects: Vec<(ObjectId, u64)>,
    ) {
        self.reported.insert(id);
        for t in tasks {
            self.running.insert(
                t.task_id,
                HeldTask {
                    node: id,
                    job: t.job,
                    attempt: t.attempt,
                    resources: t.resources,
                    blocked: t.blocked,
                },
            );
        }
        for (object, size) in objects {
            self.objects
                .entry(object)
                .or_insert_with(|| (size, HashSet::default()))
                .1
                .insert(id);
        }
    }

    /// Whether resumed tasks must wait: a node that may still come back with them
    /// has not reported.
    pub(super) fn waiting(&self, now: Instant) -> bool {
        (!self.expected.is_empty() || !self.returning.is_empty())
            && self.nodes_until.is_some_and(|t| now <= t)
    }

    /// Whether the claim window is open (a task end or object from a node may be
    /// claimed by a driver yet).
    pub(super) fn open(&self, now: Instant) -> bool {
        self.claims_until.is_some_and(|t| now <= t)
    }

    /// A resumed task, to run once the expected nodes are in.
    pub(super) fn park(&mut self, peer: PeerId, spec: Arc<TaskSpec>, attempt: u32) {
        if let TaskKind::ActorCall(actor) = spec.kind {
            self.parked_calls.insert((peer, actor));
        }
        self.parked.push((peer, spec, attempt));
    }

    /// `peer` holds `object`, which a node that may still come back may have.
    pub(super) fn park_hold(&mut self, peer: PeerId, object: ObjectId) {
        self.parked_holds.push((peer, object));
    }

    /// The parked holds, once [`Self::unpark`] has let the parked tasks go.
    pub(super) fn take_parked_holds(&mut self) -> Vec<(PeerId, ObjectId)> {
        std::mem::take(&mut self.parked_holds)
    }

    /// `object`, if a returning node holds it unclaimed: its size and holders,
    /// now claimed.
    pub(super) fn take_object(&mut self, object: &ObjectId) -> Option<(u64, HashSet<NodeId>)> {
        self.objects.remove(object)
    }

    /// Whether a call of `caller` to `actor` is parked.
    pub(super) fn parks_call(&self, caller: PeerId, actor: ActorId) -> bool {
        !self.parked_calls.is_empty() && self.parked_calls.contains(&(caller, actor))
    }

    /// The parked tasks, if no node is awaited any more (past the window, those
    /// that did not come back are given up: returned second).
    pub(super) fn unpark(&mut self, now: Instant) -> Option<(Vec<ParkedTask>, Vec<NodeId>)> {
        if self.waiting(now) {
            return None;
        }
        let reported = std::mem::take(&mut self.reported);
        let given_up: Vec<NodeId> = self
            .expected
            .drain()
            .chain(self.returning.drain().filter(|n| !reported.contains(n)))
            .collect();
        self.parked_calls.clear();
        Some((std::mem::take(&mut self.parked), given_up))
    }

    /// What a driver resuming task `task` (returning `object`) finds.
    pub(super) fn claim(&mut self, task: TaskId, object: ObjectId, now: Instant) -> Claim {
        if let Some((size, nodes)) = self.objects.remove(&object) {
            // A task still listed as running stored its result before its end was
            // reported: it stays listed, so its end, when it comes, frees what it
            // holds (and is otherwise ignored: the task is not in the head's table).
            self.ended.remove(&task);
            return Claim::Stored { nodes, size };
        }
        if let Some((node, attempt, outcome)) = self.ended.remove(&task) {
            return Claim::Ended {
                node,
                attempt,
                outcome,
            };
        }
        if let Some(held) = self.running.remove(&task) {
            return Claim::Running(held);
        }
        if self.waiting(now) {
            Claim::Wait
        } else {
            Claim::Nothing
        }
    }

    /// Node `node` reported the end of `task`, which is not in the head's table: the
    /// resources it held there, if it was held here; the end is kept for a claim
    /// while the window is open.
    pub(super) fn task_ended(
        &mut self,
        node: NodeId,
        task: TaskId,
        attempt: u32,
        outcome: TaskOutcome,
        now: Instant,
    ) -> Option<ResourceSet> {
        let held = self.running.remove(&task).filter(|h| h.node == node);
        if self.open(now) {
            self.ended.insert(task, (node, attempt, outcome));
        }
        held.map(|h| h.resources)
    }

    /// Whether `object` is among what returning nodes hold, unclaimed.
    pub(super) fn holds(&self, object: &ObjectId) -> bool {
        self.objects.contains_key(object)
    }

    /// Node `id` died: what it brought is gone with it.
    pub(super) fn node_gone(&mut self, id: NodeId) {
        self.expected.remove(&id);
        self.returning.remove(&id);
        self.reported.remove(&id);
        self.running.retain(|_, h| h.node != id);
        self.ended.retain(|_, (n, _, _)| *n != id);
        self.objects.retain(|_, (_, nodes)| {
            nodes.remove(&id);
            !nodes.is_empty()
        });
    }

    /// Past the claim window: everything no driver claimed, to let go. `None`
    /// before the window ends (or if there was none).
    pub(super) fn expire(&mut self, now: Instant) -> Option<Unclaimed> {
        let until = self.claims_until?;
        if now <= until {
            return None;
        }
        self.claims_until = None;
        self.ended.clear();
        self.lost_actors.clear();
        Some(Unclaimed {
            tasks: self.running.drain().collect(),
            objects: self
                .objects
                .drain()
                .map(|(id, (_, nodes))| (id, nodes.into_iter().collect()))
                .collect(),
            handles: std::mem::take(&mut self.handles),
            driverless: self.driverless.drain().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn task(id: TaskId, attempt: u32) -> AssignedTask {
        AssignedTask {
            task_id: id,
            job: JobId(1),
            attempt,
            resources: ResourceSet::new(),
            blocked: false,
        }
    }

    /// A table after a restart at `now`: `nodes` may come back for 5 s, what they
    /// bring waits 60 s for its drivers.
    fn expecting(nodes: &[NodeId], now: Instant) -> ReclaimTable {
        let mut t = ReclaimTable::default();
        t.expect(
            nodes.iter().copied(),
            now + Duration::from_secs(5),
            now + Duration::from_secs(60),
        );
        t
    }

    #[test]
    fn resumed_tasks_wait_for_the_expected_nodes_then_find_what_they_brought() {
        let now = Instant::now();
        let (a, b) = (NodeId::random(), NodeId::random());
        let mut t = expecting(&[a, b], now);
        assert!(t.may_return(a, now));
        assert!(!t.may_return(a, now + Duration::from_secs(6)));
        let (running, stored, unknown) = (TaskId(1), TaskId(2), TaskId(3));
        let stored_obj = ObjectId(20);
        assert!(matches!(t.claim(unknown, ObjectId(30), now), Claim::Wait));
        t.returned(a);
        assert!(t.waiting(now), "a's inventory is not in yet");
        t.inventory(a, vec![task(running, 1)], vec![(stored_obj, 4096)]);
        assert!(t.waiting(now), "what a held for the head is still coming");
        assert!(t.caught_up(a));
        assert!(t.waiting(now), "b has not come back");
        assert!(t.unpark(now).is_none());
        t.returned(b);
        t.inventory(b, Vec::new(), vec![(stored_obj, 4096)]);
        assert!(t.waiting(now), "what b held for the head is still coming");
        assert!(t.caught_up(b));
        assert!(!t.caught_up(b), "once");
        assert!(!t.waiting(now));
        let (parked, given_up) = t.unpark(now).expect("nothing awaited");
        assert!(parked.is_empty() && given_up.is_empty());
        match t.claim(running, ObjectId(10), now) {
            Claim::Running(h) => assert_eq!((h.node, h.attempt), (a, 1)),
            _ => panic!("the running task is found on its node"),
        }
        match t.claim(stored, stored_obj, now) {
            Claim::Stored { nodes, size } => {
                assert_eq!(size, 4096);
                assert_eq!(nodes, HashSet::from_iter([a, b]));
            }
            _ => panic!("the stored result is found on both nodes"),
        }
        assert!(matches!(
            t.claim(unknown, ObjectId(30), now),
            Claim::Nothing
        ));
    }

    #[test]
    fn an_end_reported_before_the_claim_is_kept_and_frees_what_the_task_held() {
        let now = Instant::now();
        let a = NodeId::random();
        let mut t = expecting(&[a], now);
        t.returned(a);
        let mut held = task(TaskId(1), 2);
        held.resources = ResourceSet::new().with("CPU", 1.0);
        t.inventory(a, vec![held], Vec::new());
        let freed = t.task_ended(a, TaskId(1), 2, TaskOutcome::WorkerDied("x".into()), now);
        assert_eq!(freed, Some(ResourceSet::new().with("CPU", 1.0)));
        match t.claim(TaskId(1), ObjectId(10), now) {
            Claim::Ended { node, attempt, .. } => assert_eq!((node, attempt), (a, 2)),
            _ => panic!("the reported end is found"),
        }
        // Past the window, an end is not kept, and what is left is let go once.
        let later = now + Duration::from_secs(61);
        t.inventory(a, vec![task(TaskId(5), 0)], vec![(ObjectId(50), 1)]);
        assert_eq!(
            t.task_ended(a, TaskId(6), 0, TaskOutcome::WorkerDied("x".into()), later),
            None
        );
        let left = t.expire(later).expect("the window ended");
        assert_eq!(left.tasks.len(), 1);
        assert_eq!(left.objects, vec![(ObjectId(50), vec![a])]);
        assert!(t.expire(later).is_none());
    }

    #[test]
    fn a_dead_node_takes_what_it_brought_with_it() {
        let now = Instant::now();
        let (a, b) = (NodeId::random(), NodeId::random());
        let mut t = expecting(&[a, b], now);
        t.returned(a);
        t.inventory(a, vec![task(TaskId(1), 0)], vec![(ObjectId(7), 9)]);
        t.node_gone(a);
        t.node_gone(b);
        assert!(!t.waiting(now), "no node is awaited any more");
        assert!(!t.holds(&ObjectId(7)));
        assert!(matches!(
            t.claim(TaskId(1), ObjectId(8), now),
            Claim::Nothing
        ));
    }
}
