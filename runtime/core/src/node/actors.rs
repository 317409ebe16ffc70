//! Hosting actors: an actor's worker, its calls in the order the head sent them, the
//! results reported as they come, and its death.

use super::execution::inline_args;
use super::worker_pool::{RunResult, Worker, WorkerCall};
use super::NodeInner;
use crate::ids::{ActorId, ObjectId, TaskId};
use crate::protocol::{RunKind, TaskAssignment, TaskOutcome, ToHead, WorkerValue};
use std::sync::Arc;

/// An actor held by one of this node's workers.
pub(super) struct LocalActor {
    pub(super) worker: Arc<Worker>,
    /// Its calls that need arguments fetched, in the order the head sent them; one
    /// task serves them in turn.
    calls: tokio::sync::mpsc::UnboundedSender<TaskAssignment>,
    /// How many of those are not yet sent to the worker.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// Calls sent to the worker, in order, for their results to be reported.
    sent: tokio::sync::mpsc::UnboundedSender<SentCall>,
    /// The creation task, whose resources the actor holds until it dies.
    creation: TaskId,
}

/// An actor call sent to its worker (or refused before), waiting to be reported.
struct SentCall {
    task_id: TaskId,
    attempt: u32,
    function: String,
    return_id: ObjectId,
    sent_at: std::time::Instant,
    run: SentRun,
}

enum SentRun {
    /// Its arguments could not be had: this is its outcome.
    Refused(TaskOutcome),
    /// On the worker: its result, when it comes.
    Running(std::pin::Pin<Box<dyn std::future::Future<Output = RunResult> + Send>>),
}

impl NodeInner {
    /// Registers an actor whose constructor has just succeeded in `worker`, and starts
    /// the task that serves its calls one at a time, in the order they arrive.
    pub(super) fn host_actor(
        self: Arc<Self>,
        actor: ActorId,
        worker: Arc<Worker>,
        creation: TaskId,
    ) {
        // Calls go to the worker as soon as their arguments are here, without waiting
        // for the one before to end (the worker runs them in order); their results are
        // reported in that same order by a second task. A call whose arguments are all
        // at hand, with none waiting before it, skips the first task (`actor_call`).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<TaskAssignment>();
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<SentCall>();
        let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        self.actors.insert(
            actor,
            LocalActor {
                worker: worker.clone(),
                calls: tx,
                waiting: waiting.clone(),
                sent: sent_tx.clone(),
                creation,
            },
        );
        let node = self.clone();
        let worker_pid = worker.pid();
        tokio::spawn(async move {
            let mut last_end = std::time::Instant::now();
            while let Some(call) = sent_rx.recv().await {
                let outcome = match call.run {
                    SentRun::Refused(outcome) => outcome,
                    SentRun::Running(result) => {
                        node.outcome_of(result.await, call.return_id, call.function)
                    }
                };
                // Time on the worker: from when it could start (sent, and the call
                // before it ended) to its end.
                let end = std::time::Instant::now();
                let started = call.sent_at.max(last_end);
                last_end = end;
                node.head.send(ToHead::TaskFinished {
                    task_id: call.task_id,
                    attempt: call.attempt,
                    outcome,
                    run_micros: end.duration_since(started).as_micros() as u64,
                    worker_pid,
                });
            }
        });
        tokio::spawn(async move {
            while let Some(a) = rx.recv().await {
                let args = self.resolve_args(&a).await;
                let sent = self.send_call(&worker, a, args);
                // Counted down only once sent, so that a call taking the short way in
                // `actor_call` never overtakes this one.
                let gone = sent_tx.send(sent).is_err();
                waiting.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                if gone {
                    break;
                }
            }
        });
    }

    /// Sends a call whose arguments are resolved (or could not be) to its actor's
    /// worker.
    fn send_call(
        &self,
        worker: &Arc<Worker>,
        a: TaskAssignment,
        args: Result<Vec<WorkerValue>, TaskOutcome>,
    ) -> SentCall {
        let run = match args {
            Err(outcome) => SentRun::Refused(outcome),
            Ok(args) => {
                let call = WorkerCall {
                    spec: a.spec.clone(),
                    attempt: a.attempt,
                    args,
                    return_id: a.spec.return_id,
                };
                SentRun::Running(Box::pin(self.pool.send_run(
                    worker,
                    call,
                    RunKind::ActorMethod,
                )))
            }
        };
        SentCall {
            task_id: a.spec.task_id,
            attempt: a.attempt,
            function: a.spec.function.to_string(),
            return_id: a.spec.return_id,
            run,
            sent_at: std::time::Instant::now(),
        }
    }

    /// Hands a call to its actor: straight to its worker if nothing waits before it
    /// and its arguments are in the spec, else to the actor's queue. A call for an
    /// actor not (or no longer) here goes back to the head as a lost worker, for it to
    /// retry or fail.
    pub(super) fn actor_call(&self, actor: ActorId, a: TaskAssignment) {
        let (task_id, attempt) = (a.spec.task_id, a.attempt);
        let refused = match self.actors.get(&actor) {
            Some(local) => {
                let at_hand = (local.waiting.load(std::sync::atomic::Ordering::Acquire) == 0)
                    .then(|| inline_args(&a))
                    .flatten();
                match at_hand {
                    Some(args) => {
                        let sent = self.send_call(&local.worker, a, Ok(args));
                        local.sent.send(sent).is_err()
                    }
                    None => {
                        local
                            .waiting
                            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        local.calls.send(a).is_err()
                    }
                }
            }
            None => true,
        };
        if refused {
            self.head.send(ToHead::TaskFinished {
                task_id,
                attempt,
                outcome: TaskOutcome::WorkerDied(format!(
                    "actor {actor} has no live process on node {}",
                    self.cfg.node_id
                )),
                run_micros: 0,
                worker_pid: 0,
            });
        }
    }

    /// An actor's process ended: release what it held and tell the head. Calls still
    /// queued for it fail as their turn comes (the worker is gone).
    pub(super) fn actor_died(self: &Arc<Self>, actor: ActorId, reason: String) {
        if let Some((_, local)) = self.actors.remove(&actor) {
            let next = self.queue.finish(local.creation);
            self.start(next);
        }
        self.head.send(ToHead::ActorDied { actor, reason });
    }
}
