//! The task table: every task submitted and not yet over, and the tasks waiting for
//! each object.
//!
//! Invariant: a task is listed from submission (or re-making from lineage, or an
//! actor's restart) until its value is recorded; it is in exactly one
//! [`TaskState`], holds resources only while `Running`, and a `WaitingForArgs` task's
//! `missing_args` counts the entries naming it in `dependents` (or its pending
//! re-queue in `delayed`).

use crate::ids::{JobId, NodeId, ObjectId, PeerId, TaskId};
use crate::protocol::TaskSpec;
use crate::resources::{ResourceSet, CPU};
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TaskState {
    /// Some argument is not ready yet.
    WaitingForArgs,
    /// In the scheduling queue, or (an actor call) in its actor's line.
    Queued,
    /// No live node could ever run it; it waits for one to join.
    Infeasible,
    /// Sent to this node.
    Running(NodeId),
}

/// One task.
pub(super) struct TaskEntry {
    spec: Arc<TaskSpec>,
    attempt: u32,
    state: TaskState,
    /// Arguments not yet ready.
    missing_args: u32,
    /// What the task holds on its node now (less its CPU while blocked in `get`).
    held: ResourceSet,
    blocked: bool,
    /// Times a node could not fetch an argument of this task.
    fetch_failures: u16,
    /// For actor calls: submission order and caller, to keep each caller's order.
    call: Option<(u64, PeerId)>,
    /// When it was submitted (or re-made, or its actor restarted), on the head's
    /// millisecond clock ([`TaskTable::insert`]). 32 bits, read with wrapping
    /// arithmetic against the clock's present: the table holds a million entries,
    /// each in a slot of the hash table, so every byte here is a megabyte there.
    created_ms: u32,
    /// Milliseconds from `created_ms` to when its current attempt was sent to a node,
    /// plus one; 0 while it has not been.
    started_after_ms: u32,
    /// The worker process that ran its last attempt, as its node reported (0: unknown).
    worker_pid: u32,
}

impl TaskEntry {
    /// What was submitted.
    pub(super) fn spec(&self) -> &Arc<TaskSpec> {
        &self.spec
    }

    /// Attempts before this one (0 on the first run).
    pub(super) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Where it is in its life.
    pub(super) fn state(&self) -> TaskState {
        self.state
    }

    /// What it holds on its node.
    pub(super) fn held(&self) -> &ResourceSet {
        &self.held
    }

    /// An actor call's submission order and caller.
    pub(super) fn call(&self) -> Option<(u64, PeerId)> {
        self.call
    }

    /// Whether it waits in `get` (lending its CPU).
    pub(super) fn blocked(&self) -> bool {
        self.blocked
    }

    /// When it was submitted, on the head's millisecond clock (wrapping).
    pub(super) fn created_ms(&self) -> u32 {
        self.created_ms
    }

    /// When its current attempt was sent to a node, on the same clock.
    pub(super) fn started_ms(&self) -> Option<u32> {
        (self.started_after_ms > 0).then(|| self.created_ms.wrapping_add(self.started_after_ms - 1))
    }

    /// The worker process that ran its last attempt (0: unknown).
    pub(super) fn worker_pid(&self) -> u32 {
        self.worker_pid
    }
}

/// Every live task, by id.
#[derive(Default)]
pub(super) struct TaskTable {
    tasks: HashMap<TaskId, TaskEntry>,
    /// Tasks waiting for each not-yet-ready object.
    dependents: HashMap<ObjectId, Vec<TaskId>>,
    /// Tasks to re-queue at a given time (after an argument fetch failed).
    delayed: Vec<(Instant, TaskId)>,
    /// Tasks over for good since the head started.
    finished: u64,
    /// Tasks over for good by function name: what the `ray_tasks` metric counts as
    /// FINISHED and FAILED (the tasks themselves leave the table).
    ended: HashMap<String, EndedCounts>,
}

/// Tasks of one function that are over for good.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct EndedCounts {
    /// Succeeded on their first attempt.
    pub(super) finished: u64,
    /// Failed on their first attempt.
    pub(super) failed: u64,
    /// Succeeded on a retry.
    pub(super) finished_retry: u64,
    /// Failed on a retry.
    pub(super) failed_retry: u64,
}

impl TaskTable {
    /// The task, if it is not over.
    pub(super) fn get(&self, id: &TaskId) -> Option<&TaskEntry> {
        self.tasks.get(id)
    }

    /// Lists a task at `attempt`, waiting for its arguments, holding nothing.
    /// `now_ms` is the head's millisecond clock (wrapping).
    pub(super) fn insert(&mut self, spec: Arc<TaskSpec>, attempt: u32, now_ms: u32) {
        let entry = TaskEntry {
            created_ms: now_ms,
            started_after_ms: 0,
            worker_pid: 0,
            spec,
            attempt,
            state: TaskState::WaitingForArgs,
            missing_args: 0,
            held: ResourceSet::new(),
            blocked: false,
            fetch_failures: 0,
            call: None,
        };
        self.tasks.insert(entry.spec.task_id, entry);
    }

    /// The task leaves the table (it is over, or became its actor).
    pub(super) fn remove(&mut self, id: TaskId) -> Option<TaskEntry> {
        self.tasks.remove(&id)
    }

    /// A task of `function` is over for good after `attempt`s (counted for `rayish
    /// status` and the metrics).
    pub(super) fn count_finished(&mut self, function: &str, attempt: u32, failed: bool) {
        self.finished += 1;
        // Looked up by `&str` first: no allocation but for a function's first end.
        let counts = match self.ended.get_mut(function) {
            Some(c) => c,
            None => self.ended.entry(function.to_string()).or_default(),
        };
        let slot = match (attempt > 0, failed) {
            (false, false) => &mut counts.finished,
            (false, true) => &mut counts.failed,
            (true, false) => &mut counts.finished_retry,
            (true, true) => &mut counts.failed_retry,
        };
        *slot += 1;
    }

    /// Tasks over for good, by function name.
    pub(super) fn ended(&self) -> impl Iterator<Item = (&str, &EndedCounts)> {
        self.ended.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Every live task.
    pub(super) fn iter(&self) -> impl Iterator<Item = &TaskEntry> {
        self.tasks.values()
    }

    /// Tasks over for good since the head started.
    pub(super) fn finished(&self) -> u64 {
        self.finished
    }

    /// Task `id` waits for `args` (not ready now) before it can be queued.
    pub(super) fn wait_for(&mut self, id: TaskId, args: &[ObjectId]) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        task.state = TaskState::WaitingForArgs;
        task.missing_args = u32::try_from(args.len()).unwrap_or(u32::MAX);
        for object in args {
            self.dependents.entry(*object).or_default().push(id);
        }
    }

    /// `object` became ready: the tasks that were waiting for it.
    pub(super) fn take_dependents(&mut self, object: ObjectId) -> Vec<TaskId> {
        self.dependents.remove(&object).unwrap_or_default()
    }

    /// One argument of waiting task `id` became ready: whether it was the last.
    pub(super) fn arg_ready(&mut self, id: TaskId) -> bool {
        let Some(task) = self
            .tasks
            .get_mut(&id)
            .filter(|t| t.state == TaskState::WaitingForArgs)
        else {
            return false;
        };
        task.missing_args = task.missing_args.saturating_sub(1);
        task.missing_args == 0
    }

    /// Task `id` waits in the scheduling queue or its actor's line.
    pub(super) fn set_queued(&mut self, id: TaskId) {
        self.set_state(id, TaskState::Queued);
    }

    /// No live node could run task `id`.
    pub(super) fn set_infeasible(&mut self, id: TaskId) {
        self.set_state(id, TaskState::Infeasible);
    }

    fn set_state(&mut self, id: TaskId, state: TaskState) {
        if let Some(task) = self.tasks.get_mut(&id) {
            task.state = state;
        }
    }

    /// Task `id` was sent to `node`, holding `demand` there.
    pub(super) fn start(&mut self, id: TaskId, node: NodeId, demand: ResourceSet, now_ms: u32) {
        if let Some(task) = self.tasks.get_mut(&id) {
            task.state = TaskState::Running(node);
            task.held = demand;
            let waited = now_ms.wrapping_sub(task.created_ms);
            task.started_after_ms = waited.saturating_add(1);
        }
    }

    /// Task `id`'s last attempt ran in process `pid`.
    pub(super) fn set_worker_pid(&mut self, id: TaskId, pid: u32) {
        if let Some(task) = self.tasks.get_mut(&id) {
            task.worker_pid = pid;
        }
    }

    /// Running task `id` blocked in `get` or came back: the node it runs on and the
    /// CPU it lends or takes back, if that changed anything.
    pub(super) fn set_blocked(
        &mut self,
        id: TaskId,
        blocked: bool,
    ) -> Option<(NodeId, ResourceSet)> {
        let task = self.tasks.get_mut(&id)?;
        let TaskState::Running(node) = task.state else {
            return None;
        };
        if task.blocked == blocked {
            return None;
        }
        task.blocked = blocked;
        let cpu = task.spec.resources.part(CPU);
        if blocked {
            task.held.subtract(&cpu);
        } else {
            task.held.add(&cpu);
        }
        Some((node, cpu))
    }

    /// Task `id`, taken back running, was blocked when its node came back: what it
    /// holds was charged without its CPU already.
    pub(super) fn mark_blocked(&mut self, id: TaskId) {
        if let Some(task) = self.tasks.get_mut(&id) {
            task.blocked = true;
        }
    }

    /// Task `id`'s run ended (its node gives back what it holds): what it held.
    pub(super) fn take_held(&mut self, id: TaskId) -> ResourceSet {
        let Some(task) = self.tasks.get_mut(&id) else {
            return ResourceSet::new();
        };
        task.blocked = false;
        std::mem::take(&mut task.held)
    }

    /// Task `id` will run again: its attempt number now.
    pub(super) fn next_attempt(&mut self, id: TaskId) -> u32 {
        let Some(task) = self.tasks.get_mut(&id) else {
            return 0;
        };
        task.attempt += 1;
        task.attempt
    }

    /// An argument of task `id` could not be fetched: how many times that happened.
    pub(super) fn fetch_failed(&mut self, id: TaskId) -> u32 {
        let Some(task) = self.tasks.get_mut(&id) else {
            return 0;
        };
        task.fetch_failures = task.fetch_failures.saturating_add(1);
        u32::from(task.fetch_failures)
    }

    /// Task `id` waits until `at`, then is re-queued (see [`Self::due`]).
    pub(super) fn delay(&mut self, id: TaskId, at: Instant) {
        self.set_state(id, TaskState::WaitingForArgs);
        self.delayed.push((at, id));
    }

    /// Delayed tasks whose time has come, taken off the delay list.
    pub(super) fn due(&mut self, now: Instant) -> Vec<TaskId> {
        let (due, later): (Vec<_>, Vec<_>) = self.delayed.drain(..).partition(|(at, _)| *at <= now);
        self.delayed = later;
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// Actor call `id` is number `seq` from `caller`.
    pub(super) fn set_call(&mut self, id: TaskId, seq: u64, caller: PeerId) {
        if let Some(task) = self.tasks.get_mut(&id) {
            task.call = Some((seq, caller));
        }
    }

    /// Infeasible tasks with what they need.
    pub(super) fn infeasible(&self) -> Vec<(TaskId, ResourceSet)> {
        self.tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::Infeasible)
            .map(|(id, t)| (*id, t.spec.resources.clone()))
            .collect()
    }

    /// Tasks of `job` for which `keep` holds.
    pub(super) fn of_job(&self, job: JobId, keep: impl Fn(&TaskSpec) -> bool) -> Vec<TaskId> {
        self.tasks
            .iter()
            .filter(|(_, t)| t.spec.job == job && keep(&t.spec))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Counts by state for `rayish status`: infeasible ones by shape, waiting, running.
    pub(super) fn census(&self) -> (HashMap<ResourceSet, u64>, u64, u64) {
        let mut infeasible: HashMap<ResourceSet, u64> = HashMap::default();
        let mut waiting = 0;
        let mut running = 0;
        for t in self.tasks.values() {
            match t.state {
                TaskState::Infeasible => {
                    *infeasible.entry(t.spec.resources.clone()).or_insert(0) += 1
                }
                TaskState::WaitingForArgs => waiting += 1,
                TaskState::Running(_) => running += 1,
                TaskState::Queued => {}
            }
        }
        (infeasible, waiting, running)
    }
}
