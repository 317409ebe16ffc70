//! The task event log: what the state API lists of tasks that are over (live tasks
//! are listed from the task table itself).
//!
//! Invariant: at most `capacity` rows (Ray's `RAY_task_events_max_num_task_in_gcs`,
//! 100,000 by default), the oldest dropped first and every drop counted, so a
//! listing can say how much it lacks. Recording a task's end costs one push and a
//! name lookup: no allocation once a function's name is known.

use super::super::view::TaskRow;
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::sync::Arc;

/// Ray's default for how many tasks' events the GCS keeps.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The ended tasks kept for listing.
pub(super) struct TaskEventLog {
    rows: VecDeque<TaskRow>,
    capacity: usize,
    dropped: u64,
    /// One shared copy of each function name.
    names: HashMap<String, Arc<str>>,
}

impl TaskEventLog {
    /// A log keeping at most `capacity` ended tasks.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            rows: VecDeque::new(),
            capacity,
            dropped: 0,
            names: HashMap::default(),
        }
    }

    /// The shared copy of `name`.
    pub(super) fn name(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.names.get(name) {
            return n.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        self.names.insert(name.to_string(), shared.clone());
        shared
    }

    /// Keeps `row`, dropping the oldest if the log is full.
    pub(super) fn record(&mut self, row: TaskRow) {
        if self.capacity == 0 {
            self.dropped += 1;
            return;
        }
        if self.rows.len() == self.capacity {
            self.rows.pop_front();
            self.dropped += 1;
        }
        self.rows.push_back(row);
    }

    /// The kept rows, oldest first.
    pub(super) fn rows(&self) -> impl DoubleEndedIterator<Item = &TaskRow> {
        self.rows.iter()
    }

    /// Rows dropped since the head started.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Rows kept now.
    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }

    /// At most this many rows are kept.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::view::{TaskStatus, TaskType};
    use crate::ids::{JobId, TaskId};

    fn row(log: &mut TaskEventLog, i: u128) -> TaskRow {
        TaskRow {
            task_id: TaskId(i),
            attempt: 0,
            name: log.name("f"),
            job: JobId(1),
            kind: TaskType::Normal,
            actor: None,
            parent: TaskId::DRIVER,
            state: TaskStatus::Finished,
            node: None,
            worker_pid: None,
            failure: None,
            resources: None,
            creation_time_ms: 0,
            start_time_ms: None,
            end_time_ms: None,
        }
    }

    #[test]
    fn the_oldest_rows_go_first_and_are_counted() {
        let mut log = TaskEventLog::new(3);
        for i in 0..5 {
            let r = row(&mut log, i);
            log.record(r);
        }
        let kept: Vec<u128> = log.rows().map(|r| r.task_id.0).collect();
        assert_eq!(kept, vec![2, 3, 4]);
        assert_eq!(log.dropped(), 2);
        assert_eq!(log.len(), 3);
    }

    #[test]
    fn names_are_shared() {
        let mut log = TaskEventLog::new(3);
        let (a, b) = (log.name("f"), log.name("f"));
        assert!(Arc::ptr_eq(&a, &b));
    }
}
