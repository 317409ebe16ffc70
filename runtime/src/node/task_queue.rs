//! The node's queue of assigned tasks.
//!
//! The head may assign a node somewhat more than it can run at once (see
//! `head::scheduler::dispatch_factor`), so that when a task ends the next one starts
//! at once instead of after a round trip to the head. This queue is what keeps the
//! node itself to its resources: a task starts only when its demand fits in what the
//! running tasks leave free. A task blocked in `get` gives its CPU back here too.

use crate::ids::{JobId, TaskId};
use crate::protocol::TaskAssignment;
use crate::resources::{ResourceSet, CPU};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

struct State {
    used: ResourceSet,
    waiting: VecDeque<TaskAssignment>,
    /// What each running task holds now.
    running: HashMap<TaskId, ResourceSet>,
    /// CPU lent by tasks blocked in `get`.
    lent: HashMap<TaskId, ResourceSet>,
}

/// The queue.
pub struct LocalTaskQueue {
    total: ResourceSet,
    state: Mutex<State>,
}

impl LocalTaskQueue {
    /// A queue for a node offering `total`.
    pub fn new(total: ResourceSet) -> Self {
        Self {
            total,
            state: Mutex::new(State {
                used: ResourceSet::new(),
                waiting: VecDeque::new(),
                running: HashMap::new(),
                lent: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `task`; returns the tasks to start now.
    pub fn push(&self, task: TaskAssignment) -> Vec<TaskAssignment> {
        let mut s = self.lock();
        s.waiting.push_back(task);
        self.startable(&mut s)
    }

    /// `task` ended; returns the tasks to start now.
    pub fn finish(&self, task: TaskId) -> Vec<TaskAssignment> {
        let mut s = self.lock();
        if let Some(held) = s.running.remove(&task) {
            s.used.subtract(&held);
        }
        s.lent.remove(&task);
        self.startable(&mut s)
    }

    /// Drops the waiting tasks of `job` (its driver is gone); running ones end with
    /// their workers.
    pub fn drop_job(&self, job: JobId) {
        self.lock().waiting.retain(|t| t.spec.job != job);
    }

    /// `task` blocked in `get` (or resumed); returns the tasks to start now.
    pub fn set_blocked(&self, task: TaskId, blocked: bool) -> Vec<TaskAssignment> {
        let mut s = self.lock();
        let State {
            used,
            running,
            lent,
            ..
        } = &mut *s;
        if let Some(held) = running.get_mut(&task) {
            if blocked && !lent.contains_key(&task) {
                let cpu = ResourceSet::new().with(CPU, held.get(CPU));
                held.subtract(&cpu);
                used.subtract(&cpu);
                lent.insert(task, cpu);
            } else if !blocked {
                if let Some(cpu) = lent.remove(&task) {
                    held.add(&cpu);
                    used.add(&cpu);
                }
            }
        }
        self.startable(&mut s)
    }

    /// Tasks assigned and not finished (running or waiting here).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let s = self.lock();
        s.waiting.len() + s.running.len()
    }

    fn startable(&self, s: &mut State) -> Vec<TaskAssignment> {
        let mut start = Vec::new();
        let mut i = 0;
        while i < s.waiting.len() {
            let demand = &s.waiting[i].spec.resources;
            if ResourceSet::fits(&self.total, &s.used, demand) {
                if let Some(task) = s.waiting.remove(i) {
                    let demand = task.spec.resources.clone();
                    s.used.add(&demand);
                    s.running.insert(task.spec.task_id, demand);
                    start.push(task);
                }
            } else {
                i += 1;
            }
        }
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{BinaryHash, ObjectId};
    use crate::protocol::TaskSpec;

    fn task(id: u128, cpus: f64) -> TaskAssignment {
        TaskAssignment {
            spec: std::sync::Arc::new(TaskSpec {
                task_id: TaskId(id),
                job: JobId(1),
                function: "f".into(),
                args: vec![],
                nested_refs: vec![],
                return_id: ObjectId(id),
                resources: ResourceSet::new().with(CPU, cpus),
                max_retries: 0,
                kind: crate::protocol::TaskKind::Function,
            }),
            attempt: 0,
            sources: vec![],
            binary: BinaryHash("0".repeat(64)),
        }
    }

    fn ids(v: Vec<TaskAssignment>) -> Vec<u128> {
        v.into_iter().map(|t| t.spec.task_id.0).collect()
    }

    #[test]
    fn runs_no_more_than_the_node_has_and_starts_the_next_on_finish() {
        let q = LocalTaskQueue::new(ResourceSet::new().with(CPU, 2.0));
        assert_eq!(ids(q.push(task(1, 1.0))), vec![1]);
        assert_eq!(ids(q.push(task(2, 1.0))), vec![2]);
        assert!(q.push(task(3, 1.0)).is_empty());
        assert!(q.push(task(4, 2.0)).is_empty());
        assert_eq!(ids(q.finish(TaskId(1))), vec![3]);
        q.drop_job(JobId(2));
        assert_eq!(q.len(), 3, "another job's drop leaves ours");
        assert!(q.finish(TaskId(2)).is_empty());
        assert_eq!(ids(q.finish(TaskId(3))), vec![4]);
        assert_eq!(q.len(), 1);
        assert!(q.push(task(5, 2.0)).is_empty());
        q.drop_job(JobId(1));
        assert_eq!(
            q.len(),
            1,
            "the waiting task is dropped, the running one stays"
        );
    }

    #[test]
    fn a_blocked_task_lends_its_cpu_until_it_resumes() {
        let q = LocalTaskQueue::new(ResourceSet::new().with(CPU, 1.0));
        assert_eq!(ids(q.push(task(1, 1.0))), vec![1]);
        assert!(q.push(task(2, 1.0)).is_empty());
        assert_eq!(ids(q.set_blocked(TaskId(1), true)), vec![2]);
        assert!(q.set_blocked(TaskId(1), false).is_empty());
        assert!(q.push(task(3, 1.0)).is_empty());
        assert!(
            q.finish(TaskId(2)).is_empty(),
            "task 1 took its CPU back: still full"
        );
        assert_eq!(ids(q.finish(TaskId(1))), vec![3]);
    }
}
