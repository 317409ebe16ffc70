//! A driver back from a head restart, or a worker back with its node: the objects it
//! still needs, taken back from the returning nodes or made again from what it kept
//! (values, or the tasks and actor calls that make them).

use super::reclaim::Rerun;
use super::*;
use crate::ids::ActorId;
use crate::protocol::ResumeState;

impl HeadState {
    /// `peer`, a driver that reconnected to go on with its job (or a worker back
    /// with its node), says what it holds.
    /// Values first, then tasks in the order they were submitted, so that every
    /// argument is known before the task taking it; the objects it holds only for
    /// those tasks are let go last, when the tasks pin them.
    pub(super) fn resumed(&mut self, peer: PeerId, state: ResumeState, freed: &mut Freed) {
        // A driver, or a worker back with its node: both go on with what they
        // submitted (a worker's running task waits for its own tasks and calls).
        let Some(job) = self.peers.job(peer) else {
            tracing::warn!(
                ?peer,
                "a resume from a peer that is not a driver or worker; ignored"
            );
            return;
        };
        let (values, tasks) = (state.values.len(), state.tasks.len());
        for v in state.values {
            self.put(peer, v.id, ObjectValue::Inline(v.value));
        }
        for (id, err) in state.errors {
            self.put(peer, id, ObjectValue::Error(Box::new(err)));
        }
        // One instant for the whole list: whether the nodes are still awaited must
        // not change between a caller's calls, or a later one could overtake one
        // that waits.
        let now = self.clock.now();
        // Objects it holds that returning nodes keep (large puts, results), before
        // the tasks that may take them.
        for id in &state.holds {
            self.claim_held(peer, *id, now);
        }
        for (spec, attempt) in state.tasks {
            // An actor's creation is never re-submitted: the head keeps actors.
            if spec.job != job || matches!(spec.kind, TaskKind::CreateActor(_)) {
                tracing::warn!(?peer, "a resumed task of another job or kind; ignored");
                continue;
            }
            self.resume_task(peer, spec, attempt, now);
        }
        for id in state.holds {
            self.objects.add_holder(peer, id);
        }
        for id in state.unheld {
            self.objects.remove_holder(peer, id, freed);
        }
        tracing::info!(job = ?job, values, tasks, "a driver or worker resumed its job");
    }

    /// `peer` holds `id`: if this head does not know it and a returning node keeps
    /// it, it is taken back as stored there (waiting for the nodes still awaited).
    pub(super) fn claim_held(&mut self, peer: PeerId, id: ObjectId, now: Instant) {
        if self.objects.contains(&id) {
            return;
        }
        if let Some((size, nodes)) = self.reclaim.take_object(&id) {
            self.objects
                .create(id, ObjectValue::OnNodes { nodes, size }, Some(peer));
            self.object_ready(id);
        } else if self.reclaim.waiting(now) {
            self.reclaim.park_hold(peer, id);
        }
    }

    /// A task or actor call the peer submitted to an earlier head and has no result
    /// of: what the returning nodes have of it is taken (its result, or the task still
    /// running); else it runs again ([`Self::rerun_function`], [`Self::resume_call`]).
    pub(super) fn resume_task(
        &mut self,
        peer: PeerId,
        spec: Arc<TaskSpec>,
        attempt: u32,
        now: Instant,
    ) {
        if let TaskKind::ActorCall(actor) = spec.kind {
            if self.reclaim.parks_call(peer, actor) {
                // An earlier call of the same caller waits for the nodes: this one
                // must not start before it.
                self.park_resumed(peer, spec, attempt);
                return;
            }
        }
        let Some(rerun) = self.claim_task(peer, spec, attempt, now) else {
            return;
        };
        match rerun.spec.kind {
            TaskKind::ActorCall(actor) => self.resume_call(peer, rerun, actor),
            _ => self.rerun_function(peer, rerun),
        }
    }

    /// A function task no returning node has: it may have been running when the
    /// earlier head died, so this is a retry, counted against its `max_retries`.
    fn rerun_function(&mut self, peer: PeerId, rerun: Rerun) {
        let Rerun { spec, attempt, .. } = rerun;
        let return_id = spec.return_id;
        if attempt > spec.max_retries {
            let err = TaskError::WorkerDied {
                function: spec.function.to_string(),
                attempts: attempt,
                reason: "the head restarted while the task was pending or running, and it has \
                         no retries left to run again"
                    .into(),
            };
            self.objects
                .create(return_id, ObjectValue::Error(Box::new(err)), Some(peer));
            self.object_ready(return_id);
            return;
        }
        self.objects
            .create(return_id, ObjectValue::Pending, Some(peer));
        self.add_task(spec, attempt);
    }

    /// An actor call no returning node has. If the actor's process came back with
    /// its node, the call never reached it (a node reports every call it was sent
    /// until it reports the call's end), so it joins the actor's line as submitted.
    /// If the process was lost with its node, or a node reported it died under the
    /// call, the call may have run: it runs again only as a retry that the actor's
    /// `max_task_retries` allows, as when an actor dies under a call.
    fn resume_call(&mut self, peer: PeerId, rerun: Rerun, actor: ActorId) {
        let Rerun {
            spec,
            attempt,
            died_running,
        } = rerun;
        let return_id = spec.return_id;
        self.objects
            .create(return_id, ObjectValue::Pending, Some(peer));
        if !died_running && !self.reclaim.lost_with_node(actor) {
            return self.queue_call(peer, spec, actor, 0);
        }
        let refused = self
            .actors
            .get(&actor)
            .filter(|a| !a.is_dead() && !a.may_retry(attempt.saturating_sub(1)))
            .map(|a| {
                let why = if died_running {
                    "its process died under this call while the head was restarting"
                } else {
                    "its process was lost with its node while the head was restarting, \
                     and this call may have been running"
                };
                a.died_error(&format!(
                    "{why} (max_task_retries={})",
                    a.opts().max_task_retries
                ))
            });
        match refused {
            Some(err) => {
                self.objects
                    .create(return_id, ObjectValue::Error(Box::new(err)), Some(peer));
                self.object_ready(return_id);
            }
            None => self.queue_call(peer, spec, actor, attempt),
        }
    }
}
