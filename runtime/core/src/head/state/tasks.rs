//! The life of a task: submission, waiting for arguments, finishing, retries.

use super::*;

impl HeadState {
    pub(super) fn submit(&mut self, submitter: PeerId, spec: Arc<TaskSpec>) {
        let return_id = spec.return_id;
        self.objects
            .create(return_id, ObjectValue::Pending, Some(submitter));
        match spec.kind.clone() {
            TaskKind::Function => self.add_task(spec, 0),
            TaskKind::CreateActor(opts) => self.submit_actor(spec, *opts),
            TaskKind::ActorCall(actor) => self.submit_call(submitter, spec, actor),
        }
    }

    /// Registers a task (new, or re-made from lineage) and queues it when its args are ready.
    pub(super) fn add_task(&mut self, spec: Arc<TaskSpec>, attempt: u32) {
        let task_id = spec.task_id;
        let mut pending = Vec::new();
        let mut failed: Option<TaskError> = None;
        for id in spec.arg_refs().chain(spec.nested_refs.iter().copied()) {
            self.objects.retain(id);
        }
        for id in spec.arg_refs() {
            match self.objects.value(&id) {
                None => {
                    failed.get_or_insert(TaskError::ObjectLost {
                        object: id,
                        reason: "the argument was freed or never existed".into(),
                    });
                }
                Some(ObjectValue::Pending) => pending.push(id),
                Some(ObjectValue::Error(e)) => {
                    failed.get_or_insert((**e).clone());
                }
                Some(_) => {}
            }
        }
        let resources = spec.resources.clone();
        self.tasks.insert(spec, attempt, self.clock_ms());
        self.tasks.wait_for(task_id, &pending);
        if let Some(err) = failed {
            self.complete_task(task_id, ObjectValue::Error(Box::new(err)));
        } else if pending.is_empty() {
            self.enqueue(task_id, resources, false);
        }
    }

    pub(super) fn enqueue(&mut self, task_id: TaskId, shape: ResourceSet, front: bool) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        if let TaskKind::ActorCall(actor) = task.spec().kind {
            // Calls go to their actor's node, never through the scheduling queue.
            self.call_ready(actor, task_id);
            return;
        }
        if self.nodes.feasible(&shape) {
            self.tasks.set_queued(task_id);
            if front {
                self.queue.push_front(shape, task_id);
            } else {
                self.queue.push(shape, task_id);
            }
        } else {
            let warning = format!(
                "task {} needs {shape}, which no node in the cluster has; it stays pending until such a node joins",
                task.spec().function
            );
            let job = task.spec().job;
            self.tasks.set_infeasible(task_id);
            tracing::warn!("{warning}");
            if let Some(driver) = self.jobs.driver(job) {
                self.send(driver, FromHead::Warning(warning));
            }
        }
    }

    pub(super) fn retry_infeasible(&mut self) {
        for (id, shape) in self.tasks.infeasible() {
            if self.nodes.feasible(&shape) {
                self.enqueue(id, shape, false);
            }
        }
    }

    pub(super) fn set_blocked(&mut self, task_id: TaskId, blocked: bool) {
        // A task waiting in `get` gives its CPU to others, so that a full cluster of
        // waiting parents cannot starve their children.
        if let Some((node, cpu)) = self.tasks.set_blocked(task_id, blocked) {
            self.nodes.lend(node, &cpu, blocked);
        }
    }

    pub(super) fn task_finished(
        &mut self,
        node_id: NodeId,
        task_id: TaskId,
        attempt: u32,
        outcome: TaskOutcome,
        worker_pid: u32,
    ) {
        let Some(task) = self.tasks.get(&task_id) else {
            return self.unclaimed_task_ended(node_id, task_id, attempt, outcome);
        };
        if task.state() != TaskState::Running(node_id) || task.attempt() != attempt {
            tracing::debug!(?task_id, "stale report of a task that was already re-run");
            return;
        }
        let created_actor = matches!(task.spec().kind, TaskKind::CreateActor(_))
            && matches!(outcome, TaskOutcome::Stored(_));
        self.tasks.set_worker_pid(task_id, worker_pid);
        if created_actor {
            // The actor keeps the creation's resources while it lives.
            self.nodes.count_finished(node_id);
            self.actor_started(task_id, node_id);
            return;
        }
        self.release_resources(task_id, node_id);
        self.nodes.count_finished(node_id);
        match outcome {
            TaskOutcome::Stored(StoredValue::Inline(v)) => {
                self.complete_task(task_id, ObjectValue::Inline(v))
            }
            TaskOutcome::Stored(StoredValue::OnNode { size }) => self.complete_task(
                task_id,
                ObjectValue::OnNodes {
                    nodes: HashSet::from_iter([node_id]),
                    size,
                },
            ),
            TaskOutcome::Failed(err) => {
                self.complete_task(task_id, ObjectValue::Error(Box::new(err)))
            }
            TaskOutcome::WorkerDied(reason) => self.attempt_failed(task_id, reason),
            TaskOutcome::ArgumentUnavailable { object, reason } => {
                self.argument_unavailable(task_id, node_id, object, reason)
            }
        }
    }

    pub(super) fn release_resources(&mut self, task_id: TaskId, node_id: NodeId) {
        let held = self.tasks.take_held(task_id);
        self.nodes.end_task(node_id, task_id, &held);
    }

    /// The task's worker or node died: re-run it while retries remain.
    pub(super) fn attempt_failed(&mut self, task_id: TaskId, reason: String) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let spec = Arc::clone(task.spec());
        let attempt = task.attempt();
        match spec.kind {
            TaskKind::Function => {}
            TaskKind::ActorCall(actor) => return self.call_failed(task_id, actor, reason),
            TaskKind::CreateActor(ref c) => {
                // Its worker died while constructing: the actor's restarts decide.
                let actor = c.actor;
                self.tasks.remove(task_id);
                return self.actor_lost(actor, reason);
            }
        }
        if self.jobs.is_alive(spec.job) && attempt < spec.max_retries {
            let attempt = self.tasks.next_attempt(task_id);
            tracing::warn!(
                function = %spec.function, attempt, max_retries = spec.max_retries,
                "task lost its worker ({reason}); retrying"
            );
            self.requeue(task_id);
        } else {
            let err = TaskError::WorkerDied {
                function: spec.function.to_string(),
                attempts: attempt + 1,
                reason,
            };
            self.complete_task(task_id, ObjectValue::Error(Box::new(err)));
        }
    }

    /// Node `fetcher` could not fetch one of the task's arguments. Its holders may
    /// have died without the head knowing yet, or be cut off from `fetcher` alone (a
    /// copy is then made elsewhere: [`Self::copy_around_cut`]), so the task is retried
    /// after a pause (without using up a retry) until the head learns where the
    /// argument is, re-makes it, or declares it lost; past a few node timeouts the
    /// task fails with `ObjectLost`.
    pub(super) fn argument_unavailable(
        &mut self,
        task_id: TaskId,
        fetcher: NodeId,
        object: ObjectId,
        reason: String,
    ) {
        let pause = (self.settings.node_timeout / 4).max(Duration::from_millis(100));
        let patience =
            (4 * self.settings.node_timeout.as_millis() / pause.as_millis().max(1)) as u32 + 4;
        if self.tasks.get(&task_id).is_none() {
            return;
        }
        if self.tasks.fetch_failed(task_id) > patience {
            let err = TaskError::ObjectLost {
                object,
                reason: format!("no holder could serve it: {reason}"),
            };
            self.complete_task(task_id, ObjectValue::Error(Box::new(err)));
            return;
        }
        tracing::debug!(
            ?task_id,
            ?object,
            "argument unavailable ({reason}); retrying later"
        );
        self.copy_around_cut(object, fetcher);
        self.tasks.delay(task_id, self.clock.now() + pause);
    }

    /// Puts a task that must run again back in line: it waits for any argument that is
    /// not ready now (being re-made after a loss) and fails if one became an error.
    pub(super) fn requeue(&mut self, task_id: TaskId) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let args: Vec<ObjectId> = task.spec().arg_refs().collect();
        let shape = task.spec().resources.clone();
        let mut pending = Vec::new();
        for id in args {
            match self.objects.value(&id) {
                Some(ObjectValue::Pending) => pending.push(id),
                Some(ObjectValue::Error(e)) => {
                    let e = e.clone();
                    self.complete_task(task_id, ObjectValue::Error(e));
                    return;
                }
                Some(_) => {}
                None => {
                    let err = TaskError::ObjectLost {
                        object: id,
                        reason: "the argument was freed".into(),
                    };
                    self.complete_task(task_id, ObjectValue::Error(Box::new(err)));
                    return;
                }
            }
        }
        self.tasks.wait_for(task_id, &pending);
        if pending.is_empty() {
            self.enqueue(task_id, shape, true);
        }
    }

    /// The task is over for good: record its value, unpin its arguments.
    pub(super) fn complete_task(&mut self, task_id: TaskId, value: ObjectValue) {
        let Some(task) = self.tasks.remove(task_id) else {
            return;
        };
        let error = match &value {
            ObjectValue::Error(e) => Some(&**e),
            _ => None,
        };
        self.record_task_end(&task, error);
        if matches!(task.spec().kind, TaskKind::CreateActor(_)) {
            // Its return object is the actor's handle object: the actor decides it.
            return self.actor_creation_failed(task, &value);
        }
        if let (TaskKind::ActorCall(actor), Some((seq, _))) = (&task.spec().kind, task.call()) {
            self.actors.forget_call(*actor, seq);
        }
        if let TaskState::Running(node) = task.state() {
            self.nodes.end_task(node, task_id, task.held());
        }
        let failed = matches!(value, ObjectValue::Error(_));
        self.tasks
            .count_finished(&task.spec().function, task.attempt(), failed);
        let spec = Arc::clone(task.spec());
        let return_id = spec.return_id;
        let keep_lineage = matches!(value, ObjectValue::OnNodes { .. });
        let mut freed = Freed::default();
        self.objects.create(return_id, value, None);
        let arg_pins: Vec<ObjectId> = spec
            .arg_refs()
            .chain(spec.nested_refs.iter().copied())
            .collect();
        if keep_lineage {
            self.keep_lineage(&return_id, spec);
        }
        self.object_ready(return_id);
        for id in arg_pins {
            self.objects.release(id, &mut freed);
        }
        self.objects.free_if_unreferenced(return_id, &mut freed);
        self.apply_freed(freed);
    }
}
