//! The actor table: every actor by id, name and handle object, with the calls
//! waiting to be sent to it.
//!
//! Invariants: a name maps to at most one actor, and that actor is not dead; an
//! actor is listed while its handle object is (a dead actor whose handle is gone
//! leaves the table); `held` is non-empty only while `Alive`; waiting calls are kept
//! in submission order (`seq`), which is the order each caller's calls start in.

use crate::ids::{ActorId, JobId, NodeId, ObjectId, PeerId, TaskId};
use crate::protocol::{ActorCreation, TaskError, TaskSpec};
use crate::resources::ResourceSet;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::VecDeque;
use std::sync::Arc;

/// Where an actor is in its life.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ActorState {
    /// Its creation task is waiting, queued or running (first time or a restart).
    Creating,
    /// Its process lives on this node.
    Alive(NodeId),
    /// Dead for good, with the cause every call on it reports.
    Dead(String),
}

/// A call not yet sent to the actor's node.
#[derive(Debug, Clone, Copy)]
struct PendingCall {
    /// Order of submission; retried calls go back in at their place.
    seq: u64,
    task: TaskId,
    caller: PeerId,
    /// Its arguments are ready.
    ready: bool,
}

/// One actor.
pub(super) struct ActorEntry {
    /// The creation task as submitted: re-run for each restart.
    creation: Arc<TaskSpec>,
    opts: ActorCreation,
    state: ActorState,
    restarts: u32,
    /// What it holds on its node while alive.
    held: ResourceSet,
    calls: VecDeque<PendingCall>,
    /// Why it must not be restarted (killed, handles gone, job ended).
    kill: Option<String>,
    /// The node and worker process of its last successful creation.
    last_home: Option<(NodeId, u32)>,
}

impl ActorEntry {
    /// Its handle object: the creation task's return object.
    pub(super) fn handle(&self) -> ObjectId {
        self.creation.return_id
    }

    /// The creation task as submitted.
    pub(super) fn creation(&self) -> &Arc<TaskSpec> {
        &self.creation
    }

    /// Its options (class, name, restarts allowed, detached).
    pub(super) fn opts(&self) -> &ActorCreation {
        &self.opts
    }

    /// Where it is in its life.
    pub(super) fn state(&self) -> &ActorState {
        &self.state
    }

    /// Whether it is dead for good.
    pub(super) fn is_dead(&self) -> bool {
        matches!(self.state, ActorState::Dead(_))
    }

    /// Times it was re-created.
    pub(super) fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The node and worker process of its last successful creation.
    pub(super) fn last_home(&self) -> Option<(NodeId, u32)> {
        self.last_home
    }

    /// Why it must not be restarted, if it must not.
    pub(super) fn kill_reason(&self) -> Option<&str> {
        self.kill.as_deref()
    }

    /// The error its calls fail with once it died of `cause`.
    pub(super) fn died_error(&self, cause: &str) -> TaskError {
        TaskError::ActorDied {
            actor: self.opts.actor,
            class: self.opts.class.clone(),
            cause: cause.to_string(),
        }
    }

    /// Whether `max_restarts` allows another restart.
    pub(super) fn may_restart(&self) -> bool {
        self.opts.max_restarts < 0 || self.restarts < self.opts.max_restarts as u32
    }

    /// Whether `max_task_retries` allows running a call again after `attempt`.
    pub(super) fn may_retry(&self, attempt: u32) -> bool {
        self.opts.max_task_retries < 0 || attempt < self.opts.max_task_retries as u32
    }
}

/// An actor that just died for good: what the head must undo.
pub(super) struct DeadActor {
    /// The node its process was alive on.
    pub(super) was_alive: Option<NodeId>,
    /// What it held there.
    pub(super) held: ResourceSet,
    /// The error its calls fail with.
    pub(super) error: TaskError,
    /// Calls that were waiting to be sent.
    pub(super) calls: Vec<TaskId>,
    /// Its creation task.
    pub(super) creation: Arc<TaskSpec>,
    /// Whether it was detached.
    pub(super) detached: bool,
}

/// Every actor the head knows, by id, name and handle object.
#[derive(Default)]
pub(super) struct ActorTable {
    actors: HashMap<ActorId, ActorEntry>,
    names: HashMap<String, ActorId>,
    by_handle: HashMap<ObjectId, ActorId>,
    /// Submission counter for call order.
    next_seq: u64,
}

impl ActorTable {
    /// Every listed actor.
    pub(super) fn iter(&self) -> impl Iterator<Item = &ActorEntry> {
        self.actors.values()
    }

    /// The actor, if listed.
    pub(super) fn get(&self, actor: &ActorId) -> Option<&ActorEntry> {
        self.actors.get(actor)
    }

    /// Whether a live actor holds `name`.
    pub(super) fn name_taken(&self, name: &str) -> bool {
        self.names
            .get(name)
            .and_then(|holder| self.actors.get(holder))
            .is_some_and(|a| !a.is_dead())
    }

    /// Lists a new actor, being created; it takes its name unless `take_name` is false.
    pub(super) fn add(&mut self, creation: Arc<TaskSpec>, opts: ActorCreation, take_name: bool) {
        let actor = opts.actor;
        self.by_handle.insert(creation.return_id, actor);
        if let (true, Some(name)) = (take_name, &opts.name) {
            self.names.insert(name.clone(), actor);
        }
        let entry = ActorEntry {
            creation,
            opts,
            state: ActorState::Creating,
            restarts: 0,
            held: ResourceSet::new(),
            calls: VecDeque::new(),
            kill: None,
            last_home: None,
        };
        self.actors.insert(actor, entry);
    }

    /// Lists a detached actor an earlier head of this storage knew, with the restarts
    /// it had: being created (or taken back from its node) again.
    pub(super) fn restore(&mut self, creation: Arc<TaskSpec>, opts: ActorCreation, restarts: u32) {
        let actor = opts.actor;
        self.add(creation, opts, true);
        if let Some(a) = self.actors.get_mut(&actor) {
            a.restarts = restarts;
        }
    }

    /// The next order number: of a call that joins a line, or of one taken back
    /// running (so that a retry of it goes back in before later calls).
    pub(super) fn next_call_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// A call `task` from `caller` joins the actor's line: its order number.
    pub(super) fn enqueue_call(&mut self, actor: ActorId, task: TaskId, caller: PeerId) -> u64 {
        let seq = self.next_call_seq();
        if let Some(a) = self.actors.get_mut(&actor) {
            a.calls.push_back(PendingCall {
                seq,
                task,
                caller,
                ready: false,
            });
        }
        seq
    }

    /// Call `task`'s arguments are ready.
    pub(super) fn call_ready(&mut self, actor: ActorId, task: TaskId) {
        if let Some(c) = self
            .actors
            .get_mut(&actor)
            .and_then(|a| a.calls.iter_mut().find(|c| c.task == task))
        {
            c.ready = true;
        }
    }

    /// Takes off the actor's line every call that may go now: ready, and no earlier
    /// call of the same caller still waiting.
    pub(super) fn take_dispatchable(&mut self, actor: ActorId) -> Vec<TaskId> {
        let Some(a) = self.actors.get_mut(&actor) else {
            return Vec::new();
        };
        let mut held_back: HashSet<PeerId> = HashSet::default();
        let mut send = Vec::new();
        a.calls.retain(|c| {
            if held_back.contains(&c.caller) {
                return true;
            }
            if c.ready {
                send.push(c.task);
                false
            } else {
                held_back.insert(c.caller);
                true
            }
        });
        send
    }

    /// Call number `seq` ended before it was sent: it leaves the line.
    pub(super) fn forget_call(&mut self, actor: ActorId, seq: u64) {
        if let Some(a) = self.actors.get_mut(&actor) {
            a.calls.retain(|c| c.seq != seq);
        }
    }

    /// A call that was sent goes back in line, ready, at its place by submission
    /// order, so retried calls keep their order.
    pub(super) fn requeue_call(&mut self, actor: ActorId, seq: u64, task: TaskId, caller: PeerId) {
        if let Some(a) = self.actors.get_mut(&actor) {
            let at = a.calls.partition_point(|c| c.seq < seq);
            a.calls.insert(
                at,
                PendingCall {
                    seq,
                    task,
                    caller,
                    ready: true,
                },
            );
        }
    }

    /// Its creation succeeded: it lives on `node`, holding `held`.
    pub(super) fn mark_alive(&mut self, actor: ActorId, node: NodeId, held: ResourceSet, pid: u32) {
        if let Some(a) = self.actors.get_mut(&actor) {
            a.held = held;
            a.last_home = Some((node, pid));
            a.state = ActorState::Alive(node);
        }
    }

    /// Its process is gone: what it held, and on which node, if it was alive.
    pub(super) fn process_gone(&mut self, actor: ActorId) -> Option<(NodeId, ResourceSet)> {
        let a = self.actors.get_mut(&actor)?;
        let ActorState::Alive(node) = a.state else {
            return None;
        };
        Some((node, std::mem::take(&mut a.held)))
    }

    /// It is re-created: its creation task and the restart's number.
    pub(super) fn begin_restart(&mut self, actor: ActorId) -> Option<(Arc<TaskSpec>, u32)> {
        let a = self.actors.get_mut(&actor)?;
        a.restarts += 1;
        a.state = ActorState::Creating;
        Some((Arc::clone(&a.creation), a.restarts))
    }

    /// It must never be restarted, for `reason` (the first reason given stays).
    pub(super) fn forbid_restart(&mut self, actor: ActorId, reason: &str) {
        if let Some(a) = self.actors.get_mut(&actor) {
            a.kill.get_or_insert_with(|| reason.to_string());
        }
    }

    /// It is dead for good of `cause`: its name is free, its waiting calls taken;
    /// `None` if it was unknown or already dead.
    pub(super) fn mark_dead(&mut self, actor: ActorId, cause: String) -> Option<DeadActor> {
        let a = self.actors.get_mut(&actor).filter(|a| !a.is_dead())?;
        let was_alive = match a.state {
            ActorState::Alive(node) => Some(node),
            _ => None,
        };
        let dead = DeadActor {
            was_alive,
            held: std::mem::take(&mut a.held),
            error: a.died_error(&cause),
            calls: a.calls.drain(..).map(|c| c.task).collect(),
            creation: Arc::clone(&a.creation),
            detached: a.opts.detached,
        };
        a.state = ActorState::Dead(cause);
        if let Some(name) = &a.opts.name {
            if self.names.get(name) == Some(&actor) {
                self.names.remove(name);
            }
        }
        Some(dead)
    }

    /// The actor standing for handle object `handle`.
    pub(super) fn of_handle(&self, handle: &ObjectId) -> Option<ActorId> {
        self.by_handle.get(handle).copied()
    }

    /// The actor of handle object `handle` leaves the table (its handle is gone).
    pub(super) fn remove(&mut self, handle: &ObjectId) {
        if let Some(actor) = self.by_handle.remove(handle) {
            self.actors.remove(&actor);
        }
    }

    /// The live actor named `name`.
    pub(super) fn live_named(&self, name: &str) -> Option<(ActorId, &ActorEntry)> {
        let actor = *self.names.get(name)?;
        let a = self.actors.get(&actor).filter(|a| !a.is_dead())?;
        Some((actor, a))
    }

    /// Actors of `job` that are not detached.
    pub(super) fn attached_of(&self, job: JobId) -> Vec<ActorId> {
        self.actors
            .iter()
            .filter(|(_, a)| a.creation.job == job && !a.opts.detached)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether `job` has a detached actor not dead.
    pub(super) fn has_detached(&self, job: JobId) -> bool {
        self.actors
            .values()
            .any(|a| a.opts.detached && a.creation.job == job && !a.is_dead())
    }

    /// Actors alive on `node`.
    pub(super) fn alive_on(&self, node: NodeId) -> Vec<ActorId> {
        self.actors
            .iter()
            .filter(|(_, a)| a.state == ActorState::Alive(node))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Actors not dead.
    pub(super) fn live_count(&self) -> usize {
        self.actors.values().filter(|a| !a.is_dead()).count()
    }
}
