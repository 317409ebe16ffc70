//! The life of a task: submission, waiting for arguments, finishing, retries.

use super::*;

impl HeadState {
    pub(super) fn submit(&mut self, submitter: PeerId, spec: TaskSpec) {
        let return_id = spec.return_id;
        self.objects
            .create(return_id, ObjectValue::Pending, Some(submitter));
        match spec.kind.clone() {
            TaskKind::Function => self.add_task(Arc::new(spec), 0),
            TaskKind::CreateActor(opts) => self.submit_actor(spec, opts),
            TaskKind::ActorCall(actor) => self.submit_call(submitter, spec, actor),
        }
    }

    /// Registers a task (new, or re-made from lineage) and queues it when its args are ready.
    pub(super) fn add_task(&mut self, spec: Arc<TaskSpec>, attempt: u32) {
        let task_id = spec.task_id;
        let mut missing = 0;
        let mut failed: Option<TaskError> = None;
        for id in spec.arg_refs().chain(spec.nested_refs.iter().copied()) {
            self.objects.retain(id);
        }
        for id in spec.arg_refs() {
            match self.objects.get(&id).map(|e| &e.value) {
                None => {
                    failed.get_or_insert(TaskError::ObjectLost {
                        object: id,
                        reason: "the argument was freed or never existed".into(),
                    });
                }
                Some(ObjectValue::Pending) => {
                    missing += 1;
                    self.dependents.entry(id).or_default().push(task_id);
                }
                Some(ObjectValue::Error(e)) => {
                    failed.get_or_insert((**e).clone());
                }
                Some(_) => {}
            }
        }
        let resources = spec.resources.clone();
        self.tasks
            .insert(task_id, TaskEntry::new(spec, attempt, missing));
        if let Some(err) = failed {
            self.complete_task(task_id, ObjectValue::Error(Box::new(err)));
        } else if missing == 0 {
            self.enqueue(task_id, resources, false);
        }
    }

    pub(super) fn enqueue(&mut self, task_id: TaskId, shape: ResourceSet, front: bool) {
        let feasible = self.feasible(&shape);
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        if let TaskKind::ActorCall(actor) = task.spec.kind {
            // Calls go to their actor's node, never through the scheduling queue.
            self.call_ready(actor, task_id);
            return;
        }
        if feasible {
            task.state = TaskState::Queued;
            if front {
                self.queue.push_front(shape, task_id);
            } else {
                self.queue.push(shape, task_id);
            }
        } else {
            task.state = TaskState::Infeasible;
            let warning = format!(
                "task {} needs {shape}, which no node in the cluster has; it stays pending until such a node joins",
                task.spec.function
            );
            tracing::warn!("{warning}");
            let job = task.spec.job;
            if let Some(driver) = self.jobs.get(&job).map(|j| j.driver) {
                self.send(driver, FromHead::Warning(warning));
            }
        }
    }

    pub(super) fn retry_infeasible(&mut self) {
        let stuck: Vec<(TaskId, ResourceSet)> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::Infeasible)
            .map(|(id, t)| (*id, t.spec.resources.clone()))
            .collect();
        for (id, shape) in stuck {
            if self.feasible(&shape) {
                self.enqueue(id, shape, false);
            }
        }
    }

    pub(super) fn set_blocked(&mut self, task_id: TaskId, blocked: bool) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let TaskState::Running(node_id) = task.state else {
            return;
        };
        if task.blocked == blocked {
            return;
        }
        task.blocked = blocked;
        let cpu = ResourceSet::new().with(CPU, task.spec.resources.get(CPU));
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        if blocked {
            // A task waiting in `get` gives its CPU to others, so that a full cluster of
            // waiting parents cannot starve their children.
            task.held.subtract(&cpu);
            node.used.subtract(&cpu);
        } else {
            task.held.add(&cpu);
            node.used.add(&cpu);
        }
    }

    pub(super) fn task_finished(
        &mut self,
        node_id: NodeId,
        task_id: TaskId,
        attempt: u32,
        outcome: TaskOutcome,
    ) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        if task.state != TaskState::Running(node_id) || task.attempt != attempt {
            tracing::debug!(?task_id, "stale report of a task that was already re-run");
            return;
        }
        if matches!(task.spec.kind, TaskKind::CreateActor(_))
            && matches!(outcome, TaskOutcome::Stored(_))
        {
            // The actor keeps the creation's resources while it lives.
            if let Some(node) = self.nodes.get_mut(&node_id) {
                node.finished += 1;
            }
            self.actor_started(task_id, node_id);
            return;
        }
        self.release_resources(task_id, node_id);
        if let Some(node) = self.nodes.get_mut(&node_id) {
            node.finished += 1;
        }
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
                self.argument_unavailable(task_id, object, reason)
            }
        }
    }

    pub(super) fn release_resources(&mut self, task_id: TaskId, node_id: NodeId) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let held = std::mem::take(&mut task.held);
        task.blocked = false;
        if let Some(node) = self.nodes.get_mut(&node_id) {
            node.used.subtract(&held);
            node.running.remove(&task_id);
        }
    }

    /// The task's worker or node died: re-run it while retries remain.
    pub(super) fn attempt_failed(&mut self, task_id: TaskId, reason: String) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        match task.spec.kind {
            TaskKind::Function => {}
            TaskKind::ActorCall(actor) => return self.call_failed(task_id, actor, reason),
            TaskKind::CreateActor(ref c) => {
                // Its worker died while constructing: the actor's restarts decide.
                let actor = c.actor;
                self.tasks.remove(&task_id);
                return self.actor_lost(actor, reason);
            }
        }
        let job_alive = self.jobs.get(&task.spec.job).is_some_and(|j| j.alive);
        if job_alive && task.attempt < task.spec.max_retries {
            task.attempt += 1;
            tracing::warn!(
                function = %task.spec.function, attempt = task.attempt, max_retries = task.spec.max_retries,
                "task lost its worker ({reason}); retrying"
            );
            self.requeue(task_id);
        } else {
            let err = TaskError::WorkerDied {
                function: task.spec.function.clone(),
                attempts: task.attempt + 1,
                reason,
            };
            self.complete_task(task_id, ObjectValue::Error(Box::new(err)));
        }
    }

    /// A node could not fetch one of the task's arguments. Its holders may have died
    /// without the head knowing yet, so the task is retried after a pause (without
    /// using up a retry) until the head learns where the argument is, re-makes it, or
    /// declares it lost; past a few node timeouts the task fails with `ObjectLost`.
    pub(super) fn argument_unavailable(
        &mut self,
        task_id: TaskId,
        object: ObjectId,
        reason: String,
    ) {
        let pause = (self.settings.node_timeout / 4).max(Duration::from_millis(100));
        let patience =
            (4 * self.settings.node_timeout.as_millis() / pause.as_millis().max(1)) as u32 + 4;
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        task.fetch_failures += 1;
        if task.fetch_failures > patience {
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
        task.state = TaskState::WaitingForArgs;
        self.delayed.push((self.clock.now() + pause, task_id));
    }

    /// Puts a task that must run again back in line: it waits for any argument that is
    /// not ready now (being re-made after a loss) and fails if one became an error.
    pub(super) fn requeue(&mut self, task_id: TaskId) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let args: Vec<ObjectId> = task.spec.arg_refs().collect();
        let shape = task.spec.resources.clone();
        let mut missing = 0;
        for id in args {
            match self.objects.get(&id).map(|e| &e.value) {
                Some(ObjectValue::Pending) => {
                    missing += 1;
                    self.dependents.entry(id).or_default().push(task_id);
                }
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
        if let Some(task) = self.tasks.get_mut(&task_id) {
            task.state = TaskState::WaitingForArgs;
            task.missing_args = missing;
        }
        if missing == 0 {
            self.enqueue(task_id, shape, true);
        }
    }

    /// The task is over for good: record its value, unpin its arguments.
    pub(super) fn complete_task(&mut self, task_id: TaskId, value: ObjectValue) {
        let Some(task) = self.tasks.remove(&task_id) else {
            return;
        };
        if matches!(task.spec.kind, TaskKind::CreateActor(_)) {
            // Its return object is the actor's handle object: the actor decides it.
            return self.actor_creation_failed(task, &value);
        }
        if let (TaskKind::ActorCall(actor), Some((seq, _))) = (&task.spec.kind, task.call) {
            self.forget_call(*actor, seq);
        }
        if let TaskState::Running(node) = task.state {
            if let Some(n) = self.nodes.get_mut(&node) {
                n.running.remove(&task_id);
                n.used.subtract(&task.held);
            }
        }
        self.finished_tasks += 1;
        let return_id = task.spec.return_id;
        let keep_lineage = matches!(value, ObjectValue::OnNodes { .. });
        let mut freed = Freed::default();
        let entry = self.objects.create(return_id, value, None);
        let arg_pins: Vec<ObjectId> = task
            .spec
            .arg_refs()
            .chain(task.spec.nested_refs.iter().copied())
            .collect();
        if keep_lineage {
            entry.creator = Some(task.spec);
        }
        self.object_ready(return_id);
        for id in arg_pins {
            self.objects.release(id, &mut freed);
        }
        self.objects.free_if_unreferenced(return_id, &mut freed);
        self.apply_freed(freed);
    }
}
