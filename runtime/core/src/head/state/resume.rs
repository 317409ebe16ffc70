//! A driver back from a head restart: the objects it still needs, made again from what
//! it kept (values, or the tasks that make them); a worker back from one: what it
//! holds.

use super::*;
use crate::protocol::ResumeState;

impl HeadState {
    /// `peer`, a driver that reconnected to go on with its job, says what it holds.
    /// Values first, then tasks in the order they were submitted, so that every
    /// argument is known before the task taking it; the objects it holds only for
    /// those tasks are let go last, when the tasks pin them.
    pub(super) fn resumed(&mut self, peer: PeerId, state: ResumeState, freed: &mut Freed) {
        let Some(job) = self.peers.driver_job(peer) else {
            // A worker back from the restart (its node came back) keeps nothing of
            // its own to declare: only what it holds counts.
            if self.peers.job(peer).is_some() && self.peers.node(peer).is_none() {
                for id in state.holds {
                    self.objects.add_holder(peer, id);
                }
            } else {
                tracing::warn!(?peer, "a resume from a peer that is not a driver; ignored");
            }
            return;
        };
        let (values, tasks) = (state.values.len(), state.tasks.len());
        for v in state.values {
            self.put(peer, v.id, ObjectValue::Inline(v.value));
        }
        for (id, err) in state.errors {
            self.put(peer, id, ObjectValue::Error(Box::new(err)));
        }
        for (spec, attempt) in state.tasks {
            if spec.job != job || spec.kind != TaskKind::Function {
                tracing::warn!(?peer, "a resumed task of another job or kind; ignored");
                continue;
            }
            self.resume_task(peer, spec, attempt);
        }
        for id in state.holds {
            self.objects.add_holder(peer, id);
        }
        for id in state.unheld {
            self.objects.remove_holder(peer, id, freed);
        }
        tracing::info!(job = ?job, values, tasks, "driver resumed its job");
    }

    /// Runs a task again that the driver submitted to an earlier head and has no
    /// result of: it may have been running when that head died, so this is a retry,
    /// counted against its `max_retries`.
    pub(super) fn resume_task(&mut self, peer: PeerId, spec: Arc<TaskSpec>, attempt: u32) {
        // A node back with its work may have it running, or its result.
        let Some((spec, attempt)) = self.claim_task(peer, spec, attempt) else {
            return;
        };
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
}
