//! The rows the state API reads ([`crate::head::view`]), and the task event log's
//! record of each task's end.

use super::super::view::{
    ActorRow, ActorStatus, JobRow, NodeRow, ObjectRow, StateQuery, StateRows, TaskFailure, TaskRow,
    TaskRows, TaskStatus, TaskType, WorkerRow,
};
use super::*;

/// Ray's error type for a task's error.
fn error_type(err: &TaskError) -> &'static str {
    match err {
        TaskError::WorkerDied { .. } => "WORKER_DIED",
        TaskError::ObjectLost { .. } => "OBJECT_LOST",
        TaskError::ActorDied { .. } => "ACTOR_DIED",
        _ => "TASK_EXECUTION_EXCEPTION",
    }
}

fn task_type(kind: &TaskKind) -> TaskType {
    match kind {
        TaskKind::Function => TaskType::Normal,
        TaskKind::CreateActor(_) => TaskType::ActorCreation,
        TaskKind::ActorCall(_) => TaskType::ActorTask,
    }
}

impl HeadState {
    /// The head's millisecond clock: milliseconds since it started, wrapping at 2^32
    /// (49 days), which is how the task table keeps its times.
    pub(super) fn clock_ms(&self) -> u32 {
        self.clock
            .now()
            .duration_since(self.wall_anchor.0)
            .as_millis() as u32
    }

    /// A time of the head's millisecond clock in milliseconds since the Unix epoch:
    /// the latest moment that reads `at` (so times up to 49 days old come out right).
    fn epoch_of_clock_ms(&self, at: u32) -> u64 {
        let now = self.epoch_ms(self.clock.now());
        now.saturating_sub(u64::from(self.clock_ms().wrapping_sub(at)))
    }

    /// `t` in milliseconds since the Unix epoch (the head's clock is monotonic; the
    /// wall time it started at anchors it).
    pub(super) fn epoch_ms(&self, t: Instant) -> u64 {
        let (at, wall_ms) = self.wall_anchor;
        if t >= at {
            wall_ms + t.duration_since(at).as_millis() as u64
        } else {
            wall_ms.saturating_sub(at.duration_since(t).as_millis() as u64)
        }
    }

    /// Keeps `task`'s end in the task event log: `error` if it failed.
    pub(super) fn record_task_end(&mut self, task: &TaskEntry, error: Option<&TaskError>) {
        let spec = task.spec();
        let node = match task.state() {
            TaskState::Running(node) => Some(node),
            _ => None,
        };
        let now = self.clock.now();
        let row = TaskRow {
            task_id: spec.task_id,
            attempt: task.attempt(),
            name: self.task_events.name(&spec.function),
            job: spec.job,
            kind: task_type(&spec.kind),
            actor: spec.actor(),
            parent: spec.parent,
            state: if error.is_some() {
                TaskStatus::Failed
            } else {
                TaskStatus::Finished
            },
            node,
            worker_pid: Some(task.worker_pid()).filter(|p| *p != 0),
            failure: error.map(|e| {
                Box::new(TaskFailure {
                    error_type: error_type(e),
                    message: e.to_string(),
                })
            }),
            resources: None,
            creation_time_ms: self.epoch_of_clock_ms(task.created_ms()),
            start_time_ms: task.started_ms().map(|t| self.epoch_of_clock_ms(t)),
            end_time_ms: Some(self.epoch_ms(now)),
        };
        self.task_events.record(row);
    }

    /// A copy of the rows `query` asks for.
    pub(super) fn view(&self, query: StateQuery) -> StateRows {
        match query {
            StateQuery::Nodes => StateRows::Nodes(self.node_rows()),
            StateQuery::Jobs => StateRows::Jobs(self.job_rows()),
            StateQuery::Tasks => StateRows::Tasks(self.task_rows()),
            StateQuery::Actors => StateRows::Actors(self.actor_rows()),
            StateQuery::Workers => StateRows::Workers(self.worker_rows()),
            StateQuery::Objects => StateRows::Objects(self.object_rows()),
            StateQuery::UserMetrics => StateRows::UserMetrics(self.user_metrics.series_list()),
        }
    }

    fn node_rows(&self) -> Vec<NodeRow> {
        self.nodes
            .statuses()
            .into_iter()
            .map(|status| {
                let life = self.nodes.life(&status.node_id);
                let (died, reason) = match life.as_ref().and_then(|l| l.died.clone()) {
                    Some((at, why)) => (Some(self.epoch_ms(at)), Some(why)),
                    None => (None, None),
                };
                NodeRow {
                    is_head: status.node_id == self.settings.head_node,
                    start_time_ms: life.map_or(0, |l| self.epoch_ms(l.joined)),
                    end_time_ms: died,
                    death_reason: reason,
                    status,
                }
            })
            .collect()
    }

    fn job_rows(&self) -> Vec<JobRow> {
        self.jobs
            .infos()
            .map(|(info, running)| JobRow {
                job_id: info.id,
                name: info.name.clone(),
                driver_pid: info.driver_pid,
                submission_id: info.submission_id.clone(),
                running,
                start_time_ms: self.epoch_ms(info.started),
                end_time_ms: info.ended.map(|t| self.epoch_ms(t)),
                lost: info.lost.clone(),
            })
            .collect()
    }

    fn task_rows(&self) -> TaskRows {
        let mut rows: Vec<TaskRow> = Vec::with_capacity(self.task_events.len() + 64);
        for task in self.tasks.iter() {
            let spec = task.spec();
            let (state, node) = match task.state() {
                TaskState::WaitingForArgs => (TaskStatus::PendingArgsAvail, None),
                TaskState::Queued | TaskState::Infeasible => {
                    (TaskStatus::PendingNodeAssignment, None)
                }
                TaskState::Running(node) if task.blocked() => {
                    (TaskStatus::RunningInRayGet, Some(node))
                }
                TaskState::Running(node) => (TaskStatus::Running, Some(node)),
            };
            rows.push(TaskRow {
                task_id: spec.task_id,
                attempt: task.attempt(),
                name: spec.function.clone(),
                job: spec.job,
                kind: task_type(&spec.kind),
                actor: spec.actor(),
                parent: spec.parent,
                state,
                node,
                worker_pid: None,
                failure: None,
                resources: Some(Box::new(spec.resources.clone())),
                creation_time_ms: self.epoch_of_clock_ms(task.created_ms()),
                start_time_ms: task.started_ms().map(|t| self.epoch_of_clock_ms(t)),
                end_time_ms: None,
            });
        }
        // Ended tasks newest first: a limited listing shows the latest.
        rows.extend(self.task_events.rows().rev().cloned());
        TaskRows {
            rows,
            dropped: self.task_events.dropped(),
            capacity: self.task_events.capacity(),
        }
    }

    fn actor_rows(&self) -> Vec<ActorRow> {
        self.actors
            .iter()
            .map(|a| {
                let opts = a.opts();
                let (state, death_cause) = match a.state() {
                    ActorState::Creating if a.restarts() > 0 => (ActorStatus::Restarting, None),
                    ActorState::Creating => (ActorStatus::PendingCreation, None),
                    ActorState::Alive(_) => (ActorStatus::Alive, None),
                    ActorState::Dead(cause) => (ActorStatus::Dead, Some(cause.clone())),
                };
                let home = a.last_home();
                ActorRow {
                    actor_id: opts.actor,
                    class_name: opts.class.clone(),
                    state,
                    job: a.creation().job,
                    name: opts.name.clone(),
                    node: home.map(|(n, _)| n),
                    pid: home.map(|(_, p)| p).filter(|p| *p != 0),
                    detached: opts.detached,
                    num_restarts: a.restarts(),
                    resources: a.creation().resources.clone(),
                    death_cause,
                }
            })
            .collect()
    }

    fn worker_rows(&self) -> Vec<WorkerRow> {
        self.peers
            .iter()
            .filter_map(|(peer, kind, process)| {
                let (is_driver, job, node) = match kind {
                    PeerKind::Driver(job) => (true, *job, None),
                    PeerKind::Worker { job, node } => (false, *job, Some(*node)),
                    PeerKind::Node(_) | PeerKind::Client => return None,
                };
                Some(WorkerRow {
                    peer,
                    is_driver,
                    job,
                    node,
                    pid: process.pid,
                    start_time_ms: self.epoch_ms(process.since),
                })
            })
            .collect()
    }

    fn object_rows(&self) -> Vec<ObjectRow> {
        let (objects, held) = self.objects.listing();
        let mut holders: HashMap<ObjectId, Vec<PeerId>> = HashMap::default();
        for (peer, ids) in held {
            for id in ids {
                holders.entry(*id).or_default().push(*peer);
            }
        }
        let mut rows = Vec::new();
        for (id, value, count) in objects {
            let (size, ready, failed, nodes) = match value {
                ObjectValue::Pending => (None, false, false, Vec::new()),
                ObjectValue::Inline(v) => (Some(v.len() as u64), true, false, Vec::new()),
                ObjectValue::OnNodes { nodes, size } => {
                    (Some(*size), true, false, nodes.iter().copied().collect())
                }
                ObjectValue::Error(_) => (None, true, true, Vec::new()),
            };
            let by = holders.remove(id).unwrap_or_default();
            let pins = count.saturating_sub(by.len() as u64);
            let row = |holder| ObjectRow {
                object_id: *id,
                size,
                ready,
                failed,
                holder,
                nodes: nodes.clone(),
                pins,
            };
            if by.is_empty() {
                rows.push(row(None));
            }
            for peer in by {
                rows.push(row(Some(peer)));
            }
        }
        rows
    }
}
