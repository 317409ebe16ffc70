//! The node's queue of assigned tasks.
//!
//! The head may assign a node somewhat more than it can run at once (see
//! `head::scheduler::dispatch_factor`), so that when a task ends the next one starts
//! at once instead of after a round trip to the head. This queue is what keeps the
//! node itself to its resources: a task starts only when its demand fits in what the
//! running tasks leave free. A task blocked in `get` gives its CPU back here too.
//!
//! A running task may have one *follower*: a waiting task of the same job and shape
//! sent to the same worker right behind it, so that the worker goes on without a
//! round trip to the node (what lets short tasks keep a worker busy). The follower
//! holds nothing until its leader finishes; then it takes over the leader's share.
//! It comes back here if it is given back unrun.

use crate::ids::{JobId, TaskId};
use crate::protocol::TaskAssignment;
use crate::resources::{ResourceSet, CPU};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

struct State {
    used: ResourceSet,
    waiting: VecDeque<TaskAssignment>,
    /// What each running task holds now.
    running: HashMap<TaskId, ResourceSet>,
    /// CPU lent by tasks blocked in `get`.
    lent: HashMap<TaskId, ResourceSet>,
    /// Followers blocked in `get` before they took over their leader's share: a
    /// worker starts its follower the moment the leader ends, and the follower's
    /// `Blocked` travels on another path than the leader's end, so it can arrive
    /// first. The follower lends its CPU as it takes the share over.
    blocked_early: HashSet<TaskId>,
    /// Leader → its follower and the follower's demand.
    followers: HashMap<TaskId, (TaskId, ResourceSet)>,
    /// Follower → its leader.
    leaders: HashMap<TaskId, TaskId>,
    /// Jobs whose driver is gone: their tasks are dropped, not started.
    ended: HashSet<JobId>,
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
                blocked_early: HashSet::new(),
                followers: HashMap::new(),
                leaders: HashMap::new(),
                ended: HashSet::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `task`; returns the tasks to start now.
    pub fn push(&self, task: TaskAssignment) -> Vec<TaskAssignment> {
        let mut s = self.lock();
        if !s.ended.contains(&task.spec.job) {
            s.waiting.push_back(task);
        }
        self.startable(&mut s)
    }

    /// Takes a waiting task to follow `lead` (running) on its worker: the first of
    /// `job` demanding `demand` that `eligible` accepts. `None` if the leader is not
    /// running or already has one.
    pub fn take_follower(
        &self,
        lead: TaskId,
        job: JobId,
        demand: &ResourceSet,
        eligible: impl Fn(&TaskAssignment) -> bool,
    ) -> Option<TaskAssignment> {
        let mut s = self.lock();
        if !s.running.contains_key(&lead) || s.followers.contains_key(&lead) {
            return None;
        }
        let at = s
            .waiting
            .iter()
            .position(|t| t.spec.job == job && t.spec.resources == *demand && eligible(t))?;
        let task = s.waiting.remove(at)?;
        let id = task.spec.task_id;
        s.followers.insert(lead, (id, task.spec.resources.clone()));
        s.leaders.insert(id, lead);
        Some(task)
    }

    /// `task` ended; returns the tasks to start now. A leader's share passes to its
    /// follower, which is running by now.
    pub fn finish(&self, task: TaskId) -> Vec<TaskAssignment> {
        self.finish_promoting(task).0
    }

    /// [`Self::finish`], also naming the follower that took over `task`'s share.
    pub fn finish_promoting(&self, task: TaskId) -> (Vec<TaskAssignment>, Option<TaskId>) {
        let mut s = self.lock();
        let mut promoted = None;
        // A follower that ended before its leader's end was handled (its worker
        // died): it inherits nothing.
        if let Some(leader) = s.leaders.remove(&task) {
            s.followers.remove(&leader);
        }
        if let Some(held) = s.running.remove(&task) {
            s.used.subtract(&held);
        }
        s.lent.remove(&task);
        s.blocked_early.remove(&task);
        if let Some((follower, demand)) = s.followers.remove(&task) {
            s.leaders.remove(&follower);
            s.used.add(&demand);
            s.running.insert(follower, demand);
            if s.blocked_early.remove(&follower) {
                Self::lend(&mut s, follower);
            }
            promoted = Some(follower);
        }
        (self.startable(&mut s), promoted)
    }

    /// A follower came back unrun: it waits again, first in line. Returns the tasks
    /// to start now.
    pub fn give_back(&self, task: TaskAssignment) -> Vec<TaskAssignment> {
        let mut s = self.lock();
        let id = task.spec.task_id;
        if let Some(leader) = s.leaders.remove(&id) {
            s.followers.remove(&leader);
        }
        // It may have taken over its leader's share already.
        if let Some(held) = s.running.remove(&id) {
            s.used.subtract(&held);
        }
        s.lent.remove(&id);
        s.blocked_early.remove(&id);
        if !s.ended.contains(&task.spec.job) {
            s.waiting.push_front(task);
        }
        self.startable(&mut s)
    }

    /// Drops the waiting tasks of `job` (its driver is gone), and any that come back
    /// later; running ones end with their workers.
    pub fn drop_job(&self, job: JobId) {
        let mut s = self.lock();
        s.ended.insert(job);
        s.waiting.retain(|t| t.spec.job != job);
    }

    /// `task` blocked in `get` (or resumed); returns the tasks to start now.
    ///
    /// Blocks and resumes of one task arrive in order, but not in order with its
    /// promotion from follower (see `blocked_early`), nor with its end: a report about
    /// a task that has ended, or that this queue never ran, changes nothing.
    pub fn set_blocked(&self, task: TaskId, blocked: bool) -> Vec<TaskAssignment> {
        let mut s = self.lock();
        if s.leaders.contains_key(&task) {
            // A follower not yet promoted: it holds nothing to lend yet.
            if blocked {
                s.blocked_early.insert(task);
            } else {
                s.blocked_early.remove(&task);
            }
            return Vec::new();
        }
        if blocked {
            Self::lend(&mut s, task);
        } else if let Some(cpu) = s.lent.remove(&task) {
            if let Some(held) = s.running.get_mut(&task) {
                held.add(&cpu);
                s.used.add(&cpu);
            }
        }
        self.startable(&mut s)
    }

    /// A running task lends its CPU while it is blocked in `get`.
    fn lend(s: &mut State, task: TaskId) {
        let State {
            used,
            running,
            lent,
            ..
        } = s;
        if let (Some(held), std::collections::hash_map::Entry::Vacant(slot)) =
            (running.get_mut(&task), lent.entry(task))
        {
            let cpu = held.part(CPU);
            held.subtract(&cpu);
            used.subtract(&cpu);
            slot.insert(cpu);
        }
    }

    /// The tasks waiting here for resources, with their tries.
    pub fn waiting(&self) -> Vec<(std::sync::Arc<crate::protocol::TaskSpec>, u32)> {
        let s = self.lock();
        s.waiting
            .iter()
            .map(|t| (t.spec.clone(), t.attempt))
            .collect()
    }

    /// The tasks blocked in `get` now.
    pub fn blocked(&self) -> HashSet<TaskId> {
        let s = self.lock();
        s.lent
            .keys()
            .chain(s.blocked_early.iter())
            .copied()
            .collect()
    }

    /// What the running tasks (and live actors) hold now, and how many are running.
    pub fn used(&self) -> (ResourceSet, usize) {
        let s = self.lock();
        (s.used.clone(), s.running.len())
    }

    /// What the node offers.
    pub fn total(&self) -> &ResourceSet {
        &self.total
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
                parent: TaskId::DRIVER,
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

    fn follower_of(q: &LocalTaskQueue, lead: u128) -> Option<u128> {
        let cpu = ResourceSet::new().with(CPU, 1.0);
        q.take_follower(TaskId(lead), JobId(1), &cpu, |_| true)
            .map(|t| t.spec.task_id.0)
    }

    #[test]
    fn a_follower_takes_over_its_leaders_share_and_gets_one_of_its_own() {
        let q = LocalTaskQueue::new(ResourceSet::new().with(CPU, 1.0));
        assert_eq!(ids(q.push(task(1, 1.0))), vec![1]);
        assert!(q.push(task(2, 1.0)).is_empty());
        assert!(q.push(task(3, 2.0)).is_empty());
        assert!(q.push(task(4, 1.0)).is_empty());
        assert_eq!(follower_of(&q, 1), Some(2));
        assert_eq!(follower_of(&q, 1), None, "one follower at a time");
        assert_eq!(follower_of(&q, 2), None, "a follower is not running yet");
        let (start, promoted) = q.finish_promoting(TaskId(1));
        assert!(start.is_empty(), "the share passed on: nothing else fits");
        assert_eq!(promoted, Some(TaskId(2)));
        assert_eq!(
            follower_of(&q, 2),
            Some(4),
            "same shape only: 3 needs 2 CPUs"
        );
        let (start, promoted) = q.finish_promoting(TaskId(2));
        assert!(start.is_empty());
        assert_eq!(promoted, Some(TaskId(4)));
        assert!(
            q.finish(TaskId(4)).is_empty(),
            "3 needs more than the node has"
        );
        assert_eq!(q.len(), 1);
    }

    /// One CPU: task 1 runs, 2 follows it, 3 waits.
    fn one_cpu_with_a_follower() -> LocalTaskQueue {
        let q = LocalTaskQueue::new(ResourceSet::new().with(CPU, 1.0));
        assert_eq!(ids(q.push(task(1, 1.0))), vec![1]);
        assert!(q.push(task(2, 1.0)).is_empty());
        assert!(q.push(task(3, 1.0)).is_empty());
        assert_eq!(follower_of(&q, 1), Some(2));
        q
    }

    #[test]
    fn a_follower_ending_before_its_leader_inherits_nothing() {
        // Its worker died: both end, in either order, and all of the CPU comes back.
        let q = one_cpu_with_a_follower();
        assert!(q.finish(TaskId(2)).is_empty());
        assert_eq!(ids(q.finish(TaskId(1))), vec![3]);
        assert!(q.finish(TaskId(3)).is_empty());
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_follower_given_back_waits_first_in_line() {
        let q = one_cpu_with_a_follower();
        // The leader blocks: its CPU goes to the next waiting task, and the follower
        // comes back to wait before the others.
        assert_eq!(ids(q.set_blocked(TaskId(1), true)), vec![3]);
        assert!(q.give_back(task(2, 1.0)).is_empty());
        assert_eq!(ids(q.finish(TaskId(3))), vec![2]);
        // Given back after taking over its leader's share (its worker died): the
        // share is freed, so it starts again at once.
        assert!(q.push(task(4, 1.0)).is_empty());
        assert_eq!(follower_of(&q, 2), Some(4));
        assert_eq!(q.finish_promoting(TaskId(2)).1, Some(TaskId(4)));
        assert_eq!(ids(q.give_back(task(4, 1.0))), vec![4]);
        // A job that ended takes nothing back.
        assert!(q.push(task(5, 1.0)).is_empty());
        assert_eq!(follower_of(&q, 4), Some(5));
        q.drop_job(JobId(1));
        assert!(q.give_back(task(5, 1.0)).is_empty());
        assert_eq!(q.len(), 2, "1 (blocked) and 4 still run; 5 is gone");
    }

    #[test]
    fn a_follower_blocked_before_its_promotion_lends_its_cpu_when_promoted() {
        // The race of issue 17 #10: the worker runs its follower as soon as the
        // leader ends, the follower blocks in `get`, and its `Blocked` reaches the
        // queue before the leader's end does. The follower must not keep the CPU it
        // takes over, or the task it waits for (3) never starts.
        let q = one_cpu_with_a_follower();
        assert!(
            q.set_blocked(TaskId(2), true).is_empty(),
            "nothing to lend yet"
        );
        let (start, promoted) = q.finish_promoting(TaskId(1));
        assert_eq!(promoted, Some(TaskId(2)));
        assert_eq!(ids(start), vec![3], "the blocked follower lends its CPU");
        assert!(q.push(task(4, 1.0)).is_empty());
        assert!(
            q.set_blocked(TaskId(2), false).is_empty(),
            "2 resumes: full"
        );
        assert!(q.finish(TaskId(3)).is_empty(), "2 holds its CPU again");
        assert_eq!(ids(q.finish(TaskId(2))), vec![4]);
    }

    #[test]
    fn a_follower_blocked_and_resumed_before_its_promotion_holds_its_share() {
        let q = one_cpu_with_a_follower();
        assert!(q.set_blocked(TaskId(2), true).is_empty());
        assert!(q.set_blocked(TaskId(2), false).is_empty());
        let (start, promoted) = q.finish_promoting(TaskId(1));
        assert_eq!(promoted, Some(TaskId(2)));
        assert!(start.is_empty(), "2 runs and holds the CPU");
        assert_eq!(ids(q.finish(TaskId(2))), vec![3]);
    }

    #[test]
    fn reports_about_ended_or_unknown_tasks_change_nothing() {
        // A leader's resume can arrive after its end; a block can name a task this
        // queue never ran. Neither may touch the accounting.
        let q = LocalTaskQueue::new(ResourceSet::new().with(CPU, 1.0));
        assert_eq!(ids(q.push(task(1, 1.0))), vec![1]);
        assert!(q.push(task(2, 1.0)).is_empty());
        assert_eq!(ids(q.set_blocked(TaskId(1), true)), vec![2]);
        assert!(q.finish(TaskId(1)).is_empty(), "2 holds the CPU");
        assert!(q.set_blocked(TaskId(1), false).is_empty(), "a late resume");
        assert!(q.set_blocked(TaskId(9), true).is_empty(), "an unknown task");
        assert!(q.push(task(3, 1.0)).is_empty(), "still full: 2 runs");
        assert_eq!(ids(q.finish(TaskId(2))), vec![3]);
    }
}
