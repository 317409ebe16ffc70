//! The node's own samples: its resources, its object store and its workers, in Ray's
//! metric names (`ray_resources`, `ray_object_store_memory`, ...).

use super::NodeInner;
use crate::metrics::MetricSet;
use std::sync::Arc;

/// What a metrics scrape asks of a node.
#[derive(Clone)]
pub struct NodeMetrics {
    inner: Arc<NodeInner>,
}

impl NodeMetrics {
    pub(super) fn new(inner: Arc<NodeInner>) -> Self {
        NodeMetrics { inner }
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
