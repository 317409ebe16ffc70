//! Actors: creation, names, calls dispatched in their callers' order, death and restarts.
//!
//! An actor is created by a task of kind `CreateActor`, placed like any task; its
//! resources stay charged to its node while it lives. Its calls never enter the
//! scheduling queue: each waits in the actor's [`ActorEntry::calls`] until its
//! arguments are ready and no earlier call of the same caller is still waiting, then
//! goes to the actor's node, which runs its calls one at a time in arrival order.
//!
//! The creation task's return object (the *handle object*) stands for the actor:
//! every handle holds a reference to it, so the directory's counting (borrowing
//! included) says when no handle is left anywhere, and the actor then ends (unless
//! detached).

use super::*;
use crate::ids::ActorId;
use crate::protocol::{ActorCreation, ActorInfo, TaskKind};
use std::collections::VecDeque;

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
    pub(super) state: ActorState,
    restarts: u32,
    /// What it holds on its node while alive.
    held: ResourceSet,
    calls: VecDeque<PendingCall>,
    /// Why it must not be restarted (killed, handles gone, job ended).
    kill: Option<String>,
}

impl ActorEntry {
    fn handle(&self) -> ObjectId {
        self.creation.return_id
    }

    fn died_error(&self, cause: &str) -> TaskError {
        TaskError::ActorDied {
            actor: self.opts.actor,
            class: self.opts.class.clone(),
            cause: cause.to_string(),
        }
    }

    fn may_restart(&self) -> bool {
        self.opts.max_restarts < 0 || self.restarts < self.opts.max_restarts as u32
    }

    fn may_retry(&self, attempt: u32) -> bool {
        self.opts.max_task_retries < 0 || attempt < self.opts.max_task_retries as u32
    }
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
    /// Actors not dead.
    pub(super) fn live_count(&self) -> usize {
        self.actors
            .values()
            .filter(|a| !matches!(a.state, ActorState::Dead(_)))
            .count()
    }

    /// Detached actors of `job` that are not dead.
    fn detached_of(&self, job: JobId) -> usize {
        self.actors
            .values()
            .filter(|a| {
                a.opts.detached && a.creation.job == job && !matches!(a.state, ActorState::Dead(_))
            })
            .count()
    }
}

fn error_text(value: &ObjectValue) -> String {
    match value {
        ObjectValue::Error(e) => e.to_string(),
        _ => "its creation ended without an error".into(),
    }
}

impl HeadState {
    /// A `CreateActor` task was submitted: record the actor, then place its creation.
    pub(super) fn submit_actor(&mut self, spec: TaskSpec, opts: ActorCreation) {
        let spec = Arc::new(spec);
        let actor = opts.actor;
        let handle = spec.return_id;
        let taken = opts.name.as_ref().and_then(|name| {
            let holder = self.actors.names.get(name)?;
            let alive = self
                .actors
                .actors
                .get(holder)
                .is_some_and(|a| !matches!(a.state, ActorState::Dead(_)));
            alive.then(|| name.clone())
        });
        let entry = ActorEntry {
            creation: spec.clone(),
            opts: opts.clone(),
            state: ActorState::Creating,
            restarts: 0,
            held: ResourceSet::new(),
            calls: VecDeque::new(),
            kill: None,
        };
        self.actors.by_handle.insert(handle, actor);
        if opts.detached {
            // A detached actor holds its own handle: it outlives every other one.
            self.objects.retain(handle);
        }
        if let Some(name) = taken {
            // Ray refuses the creation; here the actor is born dead and says why.
            // Its arguments are pinned as `add_task` would, so that `actor_dead`'s
            // release of them (and of a detached actor's handle) balances.
            for id in spec.arg_refs().chain(spec.nested_refs.iter().copied()) {
                self.objects.retain(id);
            }
            self.actors.actors.insert(actor, entry);
            let cause = format!("the name {name:?} is already taken by a live actor");
            self.actor_dead(actor, cause);
            return;
        }
        if let Some(name) = &opts.name {
            self.actors.names.insert(name.clone(), actor);
        }
        self.actors.actors.insert(actor, entry);
        tracing::info!(?actor, class = %opts.class, name = ?opts.name, "actor submitted");
        self.add_task(spec, 0);
    }

    /// An `ActorCall` task was submitted: queue it behind the caller's earlier calls.
    pub(super) fn submit_call(&mut self, caller: PeerId, spec: TaskSpec, actor: ActorId) {
        let return_id = spec.return_id;
        let dead = match self.actors.actors.get(&actor) {
            None => Some(TaskError::ActorDied {
                actor,
                class: String::new(),
                cause: "no such actor: it ended and every handle to it is gone".into(),
            }),
            Some(a) => match &a.state {
                ActorState::Dead(cause) => Some(a.died_error(cause)),
                _ => None,
            },
        };
        if let Some(err) = dead {
            let mut freed = Freed::default();
            self.objects
                .create(return_id, ObjectValue::Error(Box::new(err)), None);
            self.object_ready(return_id);
            self.objects.free_if_unreferenced(return_id, &mut freed);
            self.apply_freed(freed);
            return;
        }
        let seq = self.actors.next_seq;
        self.actors.next_seq += 1;
        if let Some(a) = self.actors.actors.get_mut(&actor) {
            a.calls.push_back(PendingCall {
                seq,
                task: spec.task_id,
                caller,
                ready: false,
            });
        }
        let task_id = spec.task_id;
        self.add_task(Arc::new(spec), 0);
        if let Some(task) = self.tasks.get_mut(&task_id) {
            task.call = Some((seq, caller));
        }
    }

    /// A call's arguments are ready.
    pub(super) fn call_ready(&mut self, actor: ActorId, task_id: TaskId) {
        if let Some(task) = self.tasks.get_mut(&task_id) {
            task.state = TaskState::Queued;
        }
        let Some(a) = self.actors.actors.get_mut(&actor) else {
            return;
        };
        if let Some(c) = a.calls.iter_mut().find(|c| c.task == task_id) {
            c.ready = true;
        }
        self.dispatch_calls(actor);
    }

    /// Sends the actor's node every call that may go now: ready, and no earlier call
    /// of the same caller still waiting.
    pub(super) fn dispatch_calls(&mut self, actor: ActorId) {
        let Some(a) = self.actors.actors.get_mut(&actor) else {
            return;
        };
        let ActorState::Alive(node) = a.state else {
            return;
        };
        if !self.nodes.get(&node).is_some_and(|n| n.alive) {
            // Its node died; `node_died` restarts it and the calls wait for that.
            return;
        }
        let Some(a) = self.actors.actors.get_mut(&actor) else {
            return;
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
        for task in send {
            tracing::debug!(?task, ?actor, ?node, "actor call dispatched");
            self.assign(task, node);
        }
    }

    /// A call ended before it was sent: it leaves its actor's line.
    pub(super) fn forget_call(&mut self, actor: ActorId, seq: u64) {
        if let Some(a) = self.actors.actors.get_mut(&actor) {
            a.calls.retain(|c| c.seq != seq);
        }
    }

    /// A creation task reported success: the actor lives on `node`.
    pub(super) fn actor_started(&mut self, task_id: TaskId, node_id: NodeId) {
        let Some(task) = self.tasks.remove(&task_id) else {
            return;
        };
        let Some(actor) = task.spec.actor() else {
            return;
        };
        if let Some(node) = self.nodes.get_mut(&node_id) {
            // The resources stay in `node.used`, now held by the actor, not the task.
            node.running.remove(&task_id);
        }
        let node_peer = self.nodes.get(&node_id).map(|n| n.peer);
        let Some(a) = self.actors.actors.get_mut(&actor) else {
            return;
        };
        a.held = task.held;
        a.state = ActorState::Alive(node_id);
        let kill = a.kill.is_some();
        let handle = a.handle();
        tracing::info!(?actor, node = ?node_id, restarts = a.restarts, "actor alive");
        if kill {
            // Killed while it was being created: end it now that it exists.
            if let Some(peer) = node_peer {
                self.send(peer, FromHead::KillActor(actor));
            }
            return;
        }
        if self
            .objects
            .get(&handle)
            .is_some_and(|e| matches!(e.value, ObjectValue::Pending))
        {
            let mut freed = Freed::default();
            self.objects
                .create(handle, ObjectValue::Inline(Vec::new()), None);
            self.object_ready(handle);
            self.objects.free_if_unreferenced(handle, &mut freed);
            self.apply_freed(freed);
        }
        self.dispatch_calls(actor);
    }

    /// A creation task ended for good without an actor (its constructor failed, an
    /// argument was an error, its job ended): `value` holds the error.
    pub(super) fn actor_creation_failed(&mut self, task: TaskEntry, value: &ObjectValue) {
        if let TaskState::Running(node) = task.state {
            if let Some(n) = self.nodes.get_mut(&node) {
                n.running.remove(&task.spec.task_id);
                n.used.subtract(&task.held);
            }
        }
        if let Some(actor) = task.spec.actor() {
            let cause = match self.actors.actors.get(&actor).and_then(|a| a.kill.clone()) {
                Some(kill) => kill,
                None => format!("its creation failed: {}", error_text(value)),
            };
            self.actor_dead(actor, cause);
        }
    }

    /// The actor's process is gone (it died, was killed, or its node died), or its
    /// creation lost its worker: re-create it if allowed, else it is dead.
    pub(super) fn actor_lost(&mut self, actor: ActorId, reason: String) {
        let Some(a) = self.actors.actors.get_mut(&actor) else {
            return;
        };
        if let ActorState::Alive(node) = a.state {
            let held = std::mem::take(&mut a.held);
            if let Some(n) = self.nodes.get_mut(&node) {
                n.used.subtract(&held);
            }
        }
        if matches!(a.state, ActorState::Dead(_)) {
            return;
        }
        let job_alive = self.jobs.get(&a.creation.job).is_some_and(|j| j.alive);
        let cause = if let Some(kill) = a.kill.clone() {
            Some(kill)
        } else if !job_alive {
            Some(format!("its job ended ({reason})"))
        } else if !a.may_restart() {
            Some(format!(
                "its process died and no restart is left (max_restarts={}): {reason}",
                a.opts.max_restarts
            ))
        } else {
            None
        };
        if let Some(cause) = cause {
            self.actor_dead(actor, cause);
            return;
        }
        a.restarts += 1;
        a.state = ActorState::Creating;
        let spec = a.creation.clone();
        let attempt = a.restarts;
        tracing::warn!(
            ?actor,
            restarts = attempt,
            max_restarts = a.opts.max_restarts,
            "actor died ({reason}); re-creating it"
        );
        let task_id = spec.task_id;
        // The creation's arguments are still pinned (until the actor is dead for good).
        self.tasks.insert(task_id, TaskEntry::new(spec, attempt, 0));
        self.requeue(task_id);
    }

    /// The actor is dead for good: fail its waiting calls, release its name, its
    /// resources and the creation's argument pins.
    pub(super) fn actor_dead(&mut self, actor: ActorId, cause: String) {
        let Some(a) = self.actors.actors.get_mut(&actor) else {
            return;
        };
        if matches!(a.state, ActorState::Dead(_)) {
            return;
        }
        tracing::info!(?actor, class = %a.opts.class, "actor dead: {cause}");
        let was_alive = match a.state {
            ActorState::Alive(node) => Some(node),
            _ => None,
        };
        let held = std::mem::take(&mut a.held);
        a.state = ActorState::Dead(cause.clone());
        let err = a.died_error(&cause);
        let calls: Vec<TaskId> = a.calls.drain(..).map(|c| c.task).collect();
        let creation = a.creation.clone();
        let name = a.opts.name.clone();
        let detached = a.opts.detached;
        let job = creation.job;
        let handle = a.handle();
        if let Some(node) = was_alive {
            if let Some(n) = self.nodes.get_mut(&node) {
                n.used.subtract(&held);
                // Its process may still run (job ended, handles dropped): end it.
                let peer = n.peer;
                if n.alive {
                    self.send(peer, FromHead::KillActor(actor));
                }
            }
        }
        // A restart in progress ends here.
        if let Some(task) = self.tasks.remove(&creation.task_id) {
            self.queue.retain(|t| t != creation.task_id);
            if let TaskState::Running(node) = task.state {
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.running.remove(&creation.task_id);
                    n.used.subtract(&task.held);
                }
            }
        }
        for task in calls {
            self.complete_task(task, ObjectValue::Error(Box::new(err.clone())));
        }
        if let Some(name) = name {
            if self.actors.names.get(&name) == Some(&actor) {
                self.actors.names.remove(&name);
            }
        }
        let mut freed = Freed::default();
        for id in creation
            .arg_refs()
            .chain(creation.nested_refs.iter().copied())
        {
            self.objects.release(id, &mut freed);
        }
        if self
            .objects
            .get(&handle)
            .is_some_and(|e| matches!(e.value, ObjectValue::Pending))
        {
            self.objects
                .create(handle, ObjectValue::Error(Box::new(err)), None);
            self.object_ready(handle);
            self.objects.free_if_unreferenced(handle, &mut freed);
        }
        if detached {
            self.objects.release(handle, &mut freed);
        }
        if self.objects.get(&handle).is_none() {
            self.actors.by_handle.remove(&handle);
            self.actors.actors.remove(&actor);
        }
        self.apply_freed(freed);
        if detached {
            self.end_job_if_finished(job);
        }
    }

    /// A call's worker died (or its actor was not on the node): retry it at its place
    /// in line while `max_task_retries` allows, else it fails with `ActorDied`.
    pub(super) fn call_failed(&mut self, task_id: TaskId, actor: ActorId, reason: String) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let Some(a) = self.actors.actors.get_mut(&actor) else {
            return;
        };
        let err = match (&a.state, &a.kill) {
            (ActorState::Dead(cause), _) | (_, Some(cause)) => Some(a.died_error(cause)),
            _ if !a.may_retry(task.attempt) => Some(a.died_error(&format!(
                "its process died while this call ran or waited to run \
                 (max_task_retries={}): {reason}",
                a.opts.max_task_retries
            ))),
            _ => None,
        };
        if let Some(err) = err {
            self.complete_task(task_id, ObjectValue::Error(Box::new(err)));
            return;
        }
        task.attempt += 1;
        task.state = TaskState::Queued;
        let Some((seq, caller)) = task.call else {
            return;
        };
        tracing::debug!(
            ?task_id,
            ?actor,
            attempt = task.attempt,
            "actor call re-queued: {reason}"
        );
        // Back at its place by submission order, so retried calls keep their order.
        let at = a.calls.partition_point(|c| c.seq < seq);
        a.calls.insert(
            at,
            PendingCall {
                seq,
                task: task_id,
                caller,
                ready: true,
            },
        );
        self.dispatch_calls(actor);
    }

    /// A node reported that an actor's process ended.
    pub(super) fn actor_process_died(&mut self, node: NodeId, actor: ActorId, reason: String) {
        let here = self
            .actors
            .actors
            .get(&actor)
            .is_some_and(|a| a.state == ActorState::Alive(node));
        if here {
            self.actor_lost(actor, reason);
        }
    }

    /// `kill(handle)`: end the actor; with `no_restart` it is never re-created.
    pub(super) fn kill_actor(&mut self, actor: ActorId, no_restart: bool) {
        let Some(a) = self.actors.actors.get_mut(&actor) else {
            return;
        };
        if no_restart && a.kill.is_none() {
            a.kill = Some("it was killed with rayish::kill".into());
        }
        match a.state.clone() {
            ActorState::Alive(node) => {
                if let Some(peer) = self.nodes.get(&node).map(|n| n.peer) {
                    self.send(peer, FromHead::KillActor(actor));
                }
            }
            ActorState::Creating if no_restart => {
                let task = a.creation.task_id;
                let running = self
                    .tasks
                    .get(&task)
                    .is_some_and(|t| matches!(t.state, TaskState::Running(_)));
                // A creation still running ends when it reports (`actor_started`).
                if !running {
                    self.actor_dead(actor, "it was killed with rayish::kill".into());
                }
            }
            _ => {}
        }
    }

    /// Objects were freed: an actor whose handle object went has no handle left
    /// anywhere, and ends (a detached one holds its own, so never gets here).
    pub(super) fn handles_freed(&mut self, objects: &[ObjectId]) {
        for id in objects {
            let Some(actor) = self.actors.by_handle.get(id).copied() else {
                continue;
            };
            let dead = self
                .actors
                .actors
                .get(&actor)
                .is_none_or(|a| matches!(a.state, ActorState::Dead(_)));
            if dead {
                self.actors.by_handle.remove(id);
                self.actors.actors.remove(&actor);
                continue;
            }
            if let Some(a) = self.actors.actors.get_mut(&actor) {
                a.kill
                    .get_or_insert_with(|| "every handle to it was dropped".into());
            }
            self.kill_actor(actor, true);
        }
    }

    /// `get_actor(name)`: the live actor of that name; the asker now holds its handle.
    pub(super) fn find_actor(&mut self, peer: PeerId, name: &str) -> Result<ActorInfo, String> {
        let actor = self
            .actors
            .names
            .get(name)
            .copied()
            .ok_or_else(|| format!("no live actor is named {name:?}"))?;
        let a = self
            .actors
            .actors
            .get(&actor)
            .filter(|a| !matches!(a.state, ActorState::Dead(_)))
            .ok_or_else(|| format!("no live actor is named {name:?}"))?;
        let info = ActorInfo {
            actor,
            class: a.opts.class.clone(),
            handle: a.handle(),
        };
        self.objects.add_holder(peer, info.handle);
        Ok(info)
    }

    /// The job's driver exited: its actors end, except detached ones.
    pub(super) fn end_job_actors(&mut self, job: JobId) {
        let ending: Vec<ActorId> = self
            .actors
            .actors
            .iter()
            .filter(|(_, a)| a.creation.job == job && !a.opts.detached)
            .map(|(id, _)| *id)
            .collect();
        for actor in ending {
            self.actor_dead(actor, "the driver that created it exited".into());
        }
    }

    /// Whether `job` still has detached actors, which keep it alive after its driver.
    pub(super) fn job_has_detached_actors(&self, job: JobId) -> bool {
        self.actors.detached_of(job) > 0
    }

    /// Whether `task` is a detached actor's creation (which survives its job's end).
    pub(super) fn is_detached_creation(&self, spec: &TaskSpec) -> bool {
        matches!(&spec.kind, TaskKind::CreateActor(c) if c.detached)
    }

    /// Actors alive on `node`, for when the node dies.
    pub(super) fn actors_on(&self, node: NodeId) -> Vec<ActorId> {
        self.actors
            .actors
            .iter()
            .filter(|(_, a)| a.state == ActorState::Alive(node))
            .map(|(id, _)| *id)
            .collect()
    }
}
