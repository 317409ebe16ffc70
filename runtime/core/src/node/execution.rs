//! Running assignments: resolving arguments, leases of a worker for one job and shape,
//! followers sent behind a short task, and the outcome reported to the head.

use super::worker_pool::{ActorBinding, RunEnd, RunResult, Worker, WorkerCall};
use super::NodeInner;
use crate::ids::{ObjectId, TaskId};
use crate::protocol::{
    ArgSource, RunKind, StoredValue, TaskArg, TaskAssignment, TaskError, TaskKind, TaskOutcome,
    ToHead, WorkerValue, INLINE_OBJECT_MAX,
};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// A worker taken for function calls of one job and shape, run back to back: the
/// first call, then followers (see `task_queue`), until none is left.
struct Lease {
    worker: Arc<Worker>,
    /// The first call: followers must have its job, binary and shape.
    like: TaskAssignment,
}

/// Which try of which task ended, how long its worker ran it, and which worker.
struct Ended {
    task_id: TaskId,
    attempt: u32,
    run_time: Duration,
    worker_pid: u32,
}

/// Tasks shorter than this on average get a follower on their worker (see
/// `task_queue`): for them the node's round trip between two tasks is a large part
/// of the work. Longer ones would only make the follower wait. The same bound as
/// the head's deepest `dispatch_factor`.
const FOLLOW_BELOW_MICROS: u64 = 2_000;

/// The arguments of `a` if every one came with it (nothing to fetch).
pub(super) fn inline_args(a: &TaskAssignment) -> Option<Vec<WorkerValue>> {
    a.spec
        .args
        .iter()
        .zip(&a.sources)
        .map(|(arg, source)| match (arg, source) {
            (TaskArg::Value(v), _) | (TaskArg::Ref(_), ArgSource::Inline(v)) => {
                Some(WorkerValue::Inline(v.clone()))
            }
            _ => None,
        })
        .collect()
}

impl NodeInner {
    pub(super) fn start(self: &Arc<Self>, tasks: Vec<TaskAssignment>) {
        for task in tasks {
            let follower = self.follower_for(task.spec.task_id, &task);
            let node = self.clone();
            tokio::spawn(async move { node.execute(task, follower).await });
        }
    }

    /// A waiting task to send behind `running` (a call like `like`) on its worker,
    /// while tasks are short: a function call of the same job, binary and shape with
    /// nothing to fetch.
    fn follower_for(&self, running: TaskId, like: &TaskAssignment) -> Option<TaskAssignment> {
        use std::sync::atomic::Ordering::Relaxed;
        let avg = self.avg_run_micros.load(Relaxed);
        if like.spec.kind != TaskKind::Function || avg == 0 || avg >= FOLLOW_BELOW_MICROS {
            return None;
        }
        self.queue
            .take_follower(running, like.spec.job, &like.spec.resources, |t| {
                t.spec.kind == TaskKind::Function
                    && t.binary == like.binary
                    && inline_args(t).is_some()
            })
    }

    async fn execute(self: Arc<Self>, a: TaskAssignment, follower: Option<TaskAssignment>) {
        let task_id = a.spec.task_id;
        let attempt = a.attempt;
        let mut run_time = Duration::ZERO;
        let mut lease = None;
        let mut actor_pid = 0;
        let (outcome, actor_started) = self
            .clone()
            .run(a, follower, &mut run_time, &mut lease, &mut actor_pid)
            .await;
        // The worker goes back to the pool before `finished` starts the next tasks, or
        // they would find none idle and start a process (and load its models) for
        // nothing.
        if let Some(lease) = &lease {
            self.pool.release(&lease.worker);
        }
        // A live actor keeps its creation's resources until it dies (`actor_died`).
        let ended = Ended {
            task_id,
            attempt,
            run_time,
            worker_pid: lease.as_ref().map_or(actor_pid, |l| l.worker.pid()),
        };
        self.finished(ended, outcome, !actor_started, lease.as_ref());
    }

    /// A task ended here: frees its share (unless an actor now holds it) or passes it
    /// to its follower, which then gets a follower of its own; starts what fits;
    /// reports the task.
    fn finished(
        self: &Arc<Self>,
        ended: Ended,
        outcome: TaskOutcome,
        free: bool,
        lease: Option<&Arc<Lease>>,
    ) {
        let Ended {
            task_id,
            attempt,
            run_time,
            worker_pid,
        } = ended;
        let run_micros = run_time.as_micros() as u64;
        if free {
            use std::sync::atomic::Ordering::Relaxed;
            let avg = self.avg_run_micros.load(Relaxed);
            let avg = if avg == 0 {
                run_micros
            } else {
                (avg * 4 + run_micros) / 5
            };
            self.avg_run_micros.store(avg.max(1), Relaxed);
            let (next, promoted) = self.queue.finish_promoting(task_id);
            if let (Some(running), Some(lease)) = (promoted, lease) {
                if let Some(f) = self.follower_for(running, &lease.like) {
                    self.send_follower(lease, f);
                }
            }
            self.start(next);
        }
        self.head.send(ToHead::TaskFinished {
            task_id,
            attempt,
            outcome,
            run_micros,
            worker_pid,
        });
    }

    /// A follower that will not run behind its leader waits in the queue again.
    fn give_back(self: &Arc<Self>, follower: Option<TaskAssignment>) {
        if let Some(f) = follower {
            let start = self.queue.give_back(f);
            self.start(start);
        }
    }

    /// Sends follower `f` to the lease's worker, behind what it runs, and awaits its
    /// end on a task of its own: it may come back while the task before it still runs.
    fn send_follower(self: &Arc<Self>, lease: &Arc<Lease>, f: TaskAssignment) {
        let Some(args) = inline_args(&f) else {
            return self.give_back(Some(f));
        };
        let call = WorkerCall {
            spec: f.spec.clone(),
            attempt: f.attempt,
            args,
            return_id: f.spec.return_id,
        };
        let end = self
            .pool
            .send_call(&lease.worker, call, RunKind::Function, true);
        let node = self.clone();
        let lease = lease.clone();
        tokio::spawn(async move {
            match end.await {
                RunEnd::Ran(result, took) => {
                    let function = f.spec.function.to_string();
                    let outcome = node.outcome_of(result, f.spec.return_id, function);
                    node.pool.release(&lease.worker);
                    let ended = Ended {
                        task_id: f.spec.task_id,
                        attempt: f.attempt,
                        run_time: took,
                        worker_pid: lease.worker.pid(),
                    };
                    node.finished(ended, outcome, true, Some(&lease));
                }
                RunEnd::Declined => {
                    tracing::info!(task = ?f.spec.task_id, "a follower came back unrun (the task before it blocked, or its worker died); queued again");
                    node.pool.release(&lease.worker);
                    node.give_back(Some(f));
                }
            }
        });
    }

    /// Runs an assignment (a function call or an actor's creation); `run_time` gets
    /// the worker's share (start-up and argument fetching excluded: the head uses it
    /// to judge how short tasks are). The flag says an actor now lives here.
    async fn run(
        self: Arc<Self>,
        a: TaskAssignment,
        follower: Option<TaskAssignment>,
        run_time: &mut Duration,
        lease: &mut Option<Arc<Lease>>,
        actor_pid: &mut u32,
    ) -> (TaskOutcome, bool) {
        let binary = match self.binary(&a.binary).await {
            Ok(path) => {
                if let dashmap::Entry::Vacant(e) = self.job_binaries.entry(a.spec.job) {
                    self.cfg.binaries.pin(&a.binary);
                    e.insert(a.binary.clone());
                }
                path
            }
            Err(e) => {
                self.give_back(follower);
                let reason = format!("cannot get the job's binary: {e}");
                return (TaskOutcome::WorkerDied(reason), false);
            }
        };
        let args = match self.resolve_args(&a).await {
            Ok(args) => args,
            Err(outcome) => {
                self.give_back(follower);
                return (outcome, false);
            }
        };
        let function = a.spec.function.to_string();
        let return_id = a.spec.return_id;
        let call = WorkerCall {
            spec: a.spec.clone(),
            attempt: a.attempt,
            args,
            return_id,
        };
        let (result, took, actor) = match &a.spec.kind {
            TaskKind::CreateActor(c) => {
                let binding = ActorBinding {
                    actor: c.actor,
                    detached: c.detached,
                };
                let (result, took, worker) = self
                    .pool
                    .start_actor(a.spec.job, &binary, binding, call)
                    .await;
                (result, took, worker.map(|w| (c.actor, w)))
            }
            _ => {
                let worker = match self.pool.worker_for(a.spec.job, &binary).await {
                    Ok(w) => w,
                    Err(e) => {
                        self.give_back(follower);
                        return (TaskOutcome::WorkerDied(e), false);
                    }
                };
                let this = Arc::new(Lease {
                    worker,
                    // Only its job, binary and shape are read: no argument copies.
                    like: TaskAssignment {
                        spec: a.spec.clone(),
                        attempt: a.attempt,
                        sources: Vec::new(),
                        binary: a.binary.clone(),
                    },
                });
                let end = self
                    .pool
                    .send_call(&this.worker, call, RunKind::Function, false);
                if let Some(f) = follower {
                    self.send_follower(&this, f);
                }
                *lease = Some(this);
                let (result, took) = end.await.into_result();
                (result, took, None)
            }
        };
        *run_time = took;
        let started = actor.is_some();
        if let Some((actor, worker)) = actor {
            *actor_pid = worker.pid();
            self.clone().host_actor(actor, worker, a.spec.task_id);
        }
        (self.outcome_of(result, return_id, function), started)
    }

    /// A stored object as a worker of this node receives it: the shared segment it
    /// can map, or (without one) a copy.
    pub(super) fn worker_value(&self, id: ObjectId, value: Bytes) -> WorkerValue {
        match self.store.shared(&id) {
            Some(shared) => WorkerValue::Shared {
                path: shared.path,
                len: shared.len,
            },
            None => WorkerValue::Inline(value.to_vec()),
        }
    }

    /// The values of a task's arguments, pulled from their holders where needed.
    pub(super) async fn resolve_args(
        &self,
        a: &TaskAssignment,
    ) -> Result<Vec<WorkerValue>, TaskOutcome> {
        let mut args = Vec::with_capacity(a.spec.args.len());
        for (arg, source) in a.spec.args.iter().zip(&a.sources) {
            let value = match (arg, source) {
                (TaskArg::Value(v), _) => WorkerValue::Inline(v.clone()),
                (TaskArg::Ref(_), ArgSource::Inline(v)) => WorkerValue::Inline(v.clone()),
                (TaskArg::Ref(id), ArgSource::At(holders)) => {
                    match self.object(*id, holders).await {
                        Ok(v) => self.worker_value(*id, v),
                        // The holder may have died: let the head re-run us once it knows.
                        Err(e) => {
                            return Err(TaskOutcome::ArgumentUnavailable {
                                object: *id,
                                reason: e.to_string(),
                            })
                        }
                    }
                }
                (TaskArg::Ref(id), ArgSource::InSpec) => {
                    return Err(TaskOutcome::Failed(TaskError::ObjectLost {
                        object: *id,
                        reason: "the head sent no location for it".into(),
                    }))
                }
            };
            args.push(value);
        }
        Ok(args)
    }

    /// Turns what a worker gave back into the outcome reported to the head, keeping a
    /// large value in this node's store.
    pub(super) fn outcome_of(
        &self,
        result: RunResult,
        return_id: ObjectId,
        function: String,
    ) -> TaskOutcome {
        let (stored, size) = match result {
            Err(reason) => return TaskOutcome::WorkerDied(reason),
            Ok(Err(e)) => return TaskOutcome::Failed(e),
            Ok(Ok(WorkerValue::Inline(value))) if value.len() <= INLINE_OBJECT_MAX => {
                return TaskOutcome::Stored(StoredValue::Inline(value))
            }
            Ok(Ok(WorkerValue::Inline(value))) => {
                let size = value.len() as u64;
                (self.store.insert(return_id, Bytes::from(value)), size)
            }
            Ok(Ok(WorkerValue::Shared { path, len })) => {
                (self.store.insert_segment(return_id, path, len), len)
            }
        };
        match stored {
            Ok(()) => TaskOutcome::Stored(StoredValue::OnNode { size }),
            Err(e) => TaskOutcome::Failed(TaskError::Failed {
                function,
                message: format!("its result could not be stored: {e}"),
                node: format!("{} at {}", self.cfg.node_id, self.cfg.address),
            }),
        }
    }
}
