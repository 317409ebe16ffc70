//! Actors: creation, names, calls dispatched in their callers' order, death and restarts.
//!
//! An actor is created by a task of kind `CreateActor`, placed like any task; its
//! resources stay charged to its node while it lives. Its calls never enter the
//! scheduling queue: each waits in its actor's line (in [`super::actor_table`]) until its
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

fn error_text(value: &ObjectValue) -> String {
    match value {
        ObjectValue::Error(e) => e.to_string(),
        _ => "its creation ended without an error".into(),
    }
}

/// Whether `spec` is a detached actor's creation (which survives its job's end).
pub(super) fn is_detached_creation(spec: &TaskSpec) -> bool {
    matches!(&spec.kind, TaskKind::CreateActor(c) if c.detached)
}

impl HeadState {
    /// A `CreateActor` task was submitted: record the actor, then place its creation.
    pub(super) fn submit_actor(&mut self, spec: Arc<TaskSpec>, opts: ActorCreation) {
        let actor = opts.actor;
        let handle = spec.return_id;
        let taken = opts
            .name
            .as_ref()
            .filter(|name| self.actors.name_taken(name))
            .cloned();
        self.actors
            .add(Arc::clone(&spec), opts.clone(), taken.is_none());
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
            let cause = format!("the name {name:?} is already taken by a live actor");
            self.actor_dead(actor, cause);
            return;
        }
        tracing::info!(?actor, class = %opts.class, name = ?opts.name, "actor submitted");
        self.remember_actor(actor);
        self.add_task(spec, 0);
    }

    /// An `ActorCall` task was submitted: queue it behind the caller's earlier calls
    /// (which may still wait for the nodes after a head restart: it then waits too).
    pub(super) fn submit_call(&mut self, caller: PeerId, spec: Arc<TaskSpec>, actor: ActorId) {
        if self.reclaim.parks_call(caller, actor) {
            self.park_resumed(caller, spec, 0);
            return;
        }
        self.queue_call(caller, spec, actor, 0);
    }

    /// Queues call `spec` (as attempt `attempt`) in its actor's line, or fails it if
    /// the actor is dead or unknown.
    pub(super) fn queue_call(
        &mut self,
        caller: PeerId,
        spec: Arc<TaskSpec>,
        actor: ActorId,
        attempt: u32,
    ) {
        let return_id = spec.return_id;
        let dead = match self.actors.get(&actor) {
            None => Some(TaskError::ActorDied {
                actor,
                class: String::new(),
                cause: "no such actor: it ended and every handle to it is gone".into(),
            }),
            Some(a) => match a.state() {
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
        let task_id = spec.task_id;
        let seq = self.actors.enqueue_call(actor, task_id, caller);
        self.add_task(spec, attempt);
        if self.tasks.get(&task_id).is_some() {
            self.tasks.set_call(task_id, seq, caller);
        } else {
            // It ended at once (an argument was an error): it must not hold back
            // the caller's later calls.
            self.actors.forget_call(actor, seq);
        }
    }

    /// A call's arguments are ready.
    pub(super) fn call_ready(&mut self, actor: ActorId, task_id: TaskId) {
        self.tasks.set_queued(task_id);
        self.actors.call_ready(actor, task_id);
        self.dispatch_calls(actor);
    }

    /// Sends the actor's node every call that may go now: ready, and no earlier call
    /// of the same caller still waiting.
    pub(super) fn dispatch_calls(&mut self, actor: ActorId) {
        let Some(&ActorState::Alive(node)) = self.actors.get(&actor).map(|a| a.state()) else {
            return;
        };
        if !self.nodes.is_live(node) {
            // Its node died; `node_died` restarts it and the calls wait for that.
            return;
        }
        for task in self.actors.take_dispatchable(actor) {
            tracing::debug!(?task, ?actor, ?node, "actor call dispatched");
            self.assign(task, node);
        }
    }

    /// A creation task reported success: the actor lives on `node`.
    pub(super) fn actor_started(&mut self, task_id: TaskId, node_id: NodeId) {
        let Some(task) = self.tasks.remove(task_id) else {
            return;
        };
        self.record_task_end(&task, None);
        let Some(actor) = task.spec().actor() else {
            return;
        };
        // The resources stay charged to the node, now held by the actor, not the task.
        self.nodes.task_became_actor(node_id, task_id);
        self.actors
            .mark_alive(actor, node_id, task.held().clone(), task.worker_pid());
        let Some(a) = self.actors.get(&actor) else {
            return;
        };
        let kill = a.kill_reason().is_some();
        let handle = a.handle();
        tracing::info!(?actor, node = ?node_id, restarts = a.restarts(), "actor alive");
        self.remember_actor(actor);
        if kill {
            // Killed while it was being created: end it now that it exists.
            if let Some(peer) = self.nodes.live_peer(node_id) {
                self.send(peer, FromHead::KillActor(actor));
            }
            return;
        }
        if matches!(self.objects.value(&handle), Some(ObjectValue::Pending)) {
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
        if let TaskState::Running(node) = task.state() {
            self.nodes.end_task(node, task.spec().task_id, task.held());
        }
        if let Some(actor) = task.spec().actor() {
            let cause = match self.actors.get(&actor).and_then(|a| a.kill_reason()) {
                Some(kill) => kill.to_string(),
                None => format!("its creation failed: {}", error_text(value)),
            };
            self.actor_dead(actor, cause);
        }
    }

    /// The actor's process is gone (it died, was killed, or its node died), or its
    /// creation lost its worker: re-create it if allowed, else it is dead.
    pub(super) fn actor_lost(&mut self, actor: ActorId, reason: String) {
        if let Some((node, held)) = self.actors.process_gone(actor) {
            self.nodes.release(node, &held);
        }
        let Some(a) = self.actors.get(&actor).filter(|a| !a.is_dead()) else {
            return;
        };
        let cause = if let Some(kill) = a.kill_reason() {
            Some(kill.to_string())
        } else if !self.jobs.is_alive(a.creation().job) {
            Some(format!("its job ended ({reason})"))
        } else if !a.may_restart() {
            Some(format!(
                "its process died and no restart is left (max_restarts={}): {reason}",
                a.opts().max_restarts
            ))
        } else {
            None
        };
        if let Some(cause) = cause {
            self.actor_dead(actor, cause);
            return;
        }
        let max_restarts = a.opts().max_restarts;
        let Some((spec, attempt)) = self.actors.begin_restart(actor) else {
            return;
        };
        tracing::warn!(
            ?actor,
            restarts = attempt,
            max_restarts,
            "actor died ({reason}); re-creating it"
        );
        let task_id = spec.task_id;
        self.remember_actor(actor);
        // The creation's arguments are still pinned (until the actor is dead for good).
        self.tasks.insert(spec, attempt, self.clock_ms());
        self.requeue(task_id);
    }

    /// The actor is dead for good: fail its waiting calls, release its name, its
    /// resources and the creation's argument pins.
    pub(super) fn actor_dead(&mut self, actor: ActorId, cause: String) {
        let Some(dead) = self.actors.mark_dead(actor, cause.clone()) else {
            return;
        };
        self.remember_actor(actor);
        let creation = dead.creation;
        let handle = creation.return_id;
        if let Some(a) = self.actors.get(&actor) {
            tracing::info!(?actor, class = %a.opts().class, "actor dead: {cause}");
        }
        if let Some(node) = dead.was_alive {
            self.nodes.release(node, &dead.held);
            // Its process may still run (job ended, handles dropped): end it.
            if let Some(peer) = self.nodes.live_peer(node) {
                self.send(peer, FromHead::KillActor(actor));
            }
        }
        // A restart in progress ends here.
        if let Some(task) = self.tasks.remove(creation.task_id) {
            self.queue.retain(|t| t != creation.task_id);
            if let TaskState::Running(node) = task.state() {
                self.nodes.end_task(node, creation.task_id, task.held());
            }
        }
        for task in dead.calls {
            self.complete_task(task, ObjectValue::Error(Box::new(dead.error.clone())));
        }
        let mut freed = Freed::default();
        for id in creation
            .arg_refs()
            .chain(creation.nested_refs.iter().copied())
        {
            self.objects.release(id, &mut freed);
        }
        if matches!(self.objects.value(&handle), Some(ObjectValue::Pending)) {
            self.objects
                .create(handle, ObjectValue::Error(Box::new(dead.error)), None);
            self.object_ready(handle);
            self.objects.free_if_unreferenced(handle, &mut freed);
        }
        if dead.detached {
            self.objects.release(handle, &mut freed);
        }
        if !self.objects.contains(&handle) {
            self.actors.remove(&handle);
        }
        self.apply_freed(freed);
        if dead.detached {
            self.end_job_if_finished(creation.job);
        }
    }

    /// A call's worker died (or its actor was not on the node): retry it at its place
    /// in line while `max_task_retries` allows, else it fails with `ActorDied`.
    pub(super) fn call_failed(&mut self, task_id: TaskId, actor: ActorId, reason: String) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let Some(a) = self.actors.get(&actor) else {
            return;
        };
        let err = match (a.state(), a.kill_reason()) {
            (ActorState::Dead(cause), _) => Some(a.died_error(cause)),
            (_, Some(cause)) => Some(a.died_error(cause)),
            _ if !a.may_retry(task.attempt()) => Some(a.died_error(&format!(
                "its process died while this call ran or waited to run \
                 (max_task_retries={}): {reason}",
                a.opts().max_task_retries
            ))),
            _ => None,
        };
        if let Some(err) = err {
            self.complete_task(task_id, ObjectValue::Error(Box::new(err)));
            return;
        }
        let call = task.call();
        let attempt = self.tasks.next_attempt(task_id);
        self.tasks.set_queued(task_id);
        let Some((seq, caller)) = call else {
            return;
        };
        tracing::debug!(?task_id, ?actor, attempt, "actor call re-queued: {reason}");
        self.actors.requeue_call(actor, seq, task_id, caller);
        self.dispatch_calls(actor);
    }

    /// A node reported that an actor's process ended.
    pub(super) fn actor_process_died(&mut self, node: NodeId, actor: ActorId, reason: String) {
        let here = self
            .actors
            .get(&actor)
            .is_some_and(|a| *a.state() == ActorState::Alive(node));
        if here {
            self.actor_lost(actor, reason);
        }
    }

    /// `kill(handle)`: end the actor; with `no_restart` it is never re-created.
    pub(super) fn kill_actor(&mut self, actor: ActorId, no_restart: bool) {
        if no_restart {
            self.actors
                .forbid_restart(actor, "it was killed with rayish::kill");
        }
        let Some(a) = self.actors.get(&actor) else {
            return;
        };
        match a.state().clone() {
            ActorState::Alive(node) => {
                if let Some(peer) = self.nodes.live_peer(node) {
                    self.send(peer, FromHead::KillActor(actor));
                }
            }
            ActorState::Creating if no_restart => {
                let task = a.creation().task_id;
                let running = self
                    .tasks
                    .get(&task)
                    .is_some_and(|t| matches!(t.state(), TaskState::Running(_)));
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
            let Some(actor) = self.actors.of_handle(id) else {
                continue;
            };
            if self.actors.get(&actor).is_none_or(|a| a.is_dead()) {
                self.actors.remove(id);
                continue;
            }
            self.actors
                .forbid_restart(actor, "every handle to it was dropped");
            self.kill_actor(actor, true);
        }
    }

    /// `get_actor(name)`: the live actor of that name; the asker now holds its handle.
    pub(super) fn find_actor(&mut self, peer: PeerId, name: &str) -> Result<ActorInfo, String> {
        let (actor, a) = self
            .actors
            .live_named(name)
            .ok_or_else(|| format!("no live actor is named {name:?}"))?;
        let info = ActorInfo {
            actor,
            class: a.opts().class.clone(),
            handle: a.handle(),
        };
        self.objects.add_holder(peer, info.handle);
        Ok(info)
    }

    /// The job's driver exited: its actors end, except detached ones.
    pub(super) fn end_job_actors(&mut self, job: JobId) {
        for actor in self.actors.attached_of(job) {
            self.actor_dead(actor, "the driver that created it exited".into());
        }
    }
}
