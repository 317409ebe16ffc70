//! The node's own samples: its resources, its object store and its workers, in Ray's
//! metric names (`ray_resources`, `ray_object_store_memory`, ...).

use super::NodeInner;
use crate::metrics::MetricSet;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// A `ray_tasks` series of running tasks: state, function, whether a retry.
type TaskSeries = (&'static str, String, bool);

/// What a metrics scrape asks of a node.
#[derive(Clone)]
pub struct NodeMetrics {
    inner: Arc<NodeInner>,
    /// The running-task series exported so far: kept at 0 once their tasks end, so
    /// graphs fall to zero rather than stop. Bounded by the functions run here.
    task_series: Arc<Mutex<HashSet<TaskSeries>>>,
}

impl NodeMetrics {
    pub(super) fn new(inner: Arc<NodeInner>) -> Self {
        NodeMetrics {
            inner,
            task_series: Arc::default(),
        }
    }

    /// `ray_tasks{Source="executor"}`: the tasks the head assigned to this node, by
    /// where they are here: waiting for resources (PENDING_NODE_ASSIGNMENT), sent to
    /// a worker behind another (SUBMITTED_TO_WORKER), running (RUNNING, or
    /// RUNNING_IN_RAY_GET while blocked in `get`). Ray's executors report the running
    /// states the same way, and its "Running Tasks by Node" panel reads them by
    /// instance; the head reports the states before a node has a task.
    fn running_tasks(&self, out: &mut MetricSet) {
        let blocked = self.inner.queue.blocked();
        let mut now: HashMap<TaskSeries, u64> = HashMap::new();
        let mut count = |state: &'static str, spec: &crate::protocol::TaskSpec, attempt: u32| {
            *now.entry((state, spec.function.to_string(), attempt > 0))
                .or_default() += 1;
        };
        for (spec, attempt) in self.inner.queue.waiting() {
            count("PENDING_NODE_ASSIGNMENT", &spec, attempt);
        }
        for (spec, attempt, running) in self.inner.pool.sent_tasks() {
            let state = match (running, blocked.contains(&spec.task_id)) {
                (false, _) => "SUBMITTED_TO_WORKER",
                (true, true) => "RUNNING_IN_RAY_GET",
                (true, false) => "RUNNING",
            };
            count(state, &spec, attempt);
        }
        let mut series = self.task_series.lock().unwrap_or_else(|p| p.into_inner());
        series.extend(now.keys().cloned());
        for key in series.iter() {
            let (state, name, retry) = key;
            let labels = [
                ("State", *state),
                ("Name", name.as_str()),
                ("IsRetry", if *retry { "1" } else { "0" }),
                ("Source", "executor"),
            ];
            let n = now.get(key).copied().unwrap_or(0);
            out.gauge(
                "ray_tasks",
                "Tasks by state, function and whether a retry.",
                &labels,
                n as f64,
            );
        }
    }

    /// Adds the workers' own metrics (`rayish::metrics`) to `out`; after the system
    /// ones, which they may not shadow.
    pub fn add_user_metrics(&self, out: &mut MetricSet) {
        self.inner.pool.add_user_metrics(out);
    }

    /// Worker process ids, for their memory figures.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.inner.pool.pids()
    }

    /// Adds the node's samples to `out`.
    pub fn sample(&self, out: &mut MetricSet) {
        self.running_tasks(out);
        const RESOURCES: &str = "Logical resources of the node, used and available.";
        let node = &self.inner;
        let (used, running) = node.queue.used();
        for (name, total) in node.queue.total().iter() {
            let in_use = used.get(name).min(total);
            out.gauge(
                "ray_resources",
                RESOURCES,
                &[("Name", name), ("State", "USED")],
                in_use,
            );
            out.gauge(
                "ray_resources",
                RESOURCES,
                &[("Name", name), ("State", "AVAILABLE")],
                total - in_use,
            );
        }
        let store = &node.store;
        let in_memory = store.memory_bytes();
        let capacity = store.capacity();
        if capacity != u64::MAX {
            out.gauge(
                "ray_resources",
                RESOURCES,
                &[("Name", "object_store_memory"), ("State", "USED")],
                in_memory.min(capacity) as f64,
            );
            out.gauge(
                "ray_resources",
                RESOURCES,
                &[("Name", "object_store_memory"), ("State", "AVAILABLE")],
                capacity.saturating_sub(in_memory) as f64,
            );
        }
        const STORE: &str = "Bytes of objects in the node's object store, by where they are.";
        let location = if store.shm_dir().is_some() {
            "MMAP_SHM"
        } else {
            "WORKER_HEAP"
        };
        out.gauge(
            "ray_object_store_memory",
            STORE,
            &[("Location", location), ("ObjectState", "SEALED")],
            in_memory as f64,
        );
        out.gauge(
            "ray_object_store_memory",
            STORE,
            &[("Location", "SPILLED"), ("ObjectState", "SEALED")],
            store.spilled_bytes() as f64,
        );
        out.gauge(
            "ray_object_store_num_local_objects",
            "Objects in the node's object store.",
            &[],
            store.len() as f64,
        );
        out.gauge(
            "rayish_object_store_spilled_bytes",
            "Bytes of the node's objects spilled to disk.",
            &[],
            store.spilled_bytes() as f64,
        );
        let (sent, received) = crate::transfer::bytes_moved();
        for (direction, bytes) in [("sent", sent), ("received", received)] {
            out.counter(
                "rayish_object_transfer_bytes",
                "Bytes of objects and binaries this node's process moved to and from others.",
                &[("Direction", direction)],
                bytes as f64,
            );
        }
        out.gauge(
            "rayish_node_running_tasks",
            "Tasks (and actors) running on the node.",
            &[],
            running as f64,
        );
        out.gauge(
            "rayish_node_workers",
            "Worker processes alive on the node.",
            &[],
            node.pool.len() as f64,
        );
    }
}
