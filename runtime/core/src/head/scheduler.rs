//! Scheduling policy: the queue of tasks waiting for resources and the choice of node.
//!
//! Tasks are queued by resource shape (Ray's "scheduling classes"): when the first task
//! of a shape does not fit anywhere, no later task of that shape will, so a pass costs
//! one look per shape rather than one per queued task.

use crate::ids::{NodeId, TaskId};
use crate::resources::{ResourceSet, CPU};
use rustc_hash::FxHashMap as HashMap;
use std::collections::{BTreeMap, VecDeque};

/// Tasks whose arguments are ready, waiting for a node with free resources.
#[derive(Debug, Default)]
pub struct SchedulingQueue {
    by_shape: BTreeMap<ResourceSet, VecDeque<TaskId>>,
    len: usize,
}

impl SchedulingQueue {
    /// Appends a task of the given shape.
    pub fn push(&mut self, shape: ResourceSet, task: TaskId) {
        self.by_shape.entry(shape).or_default().push_back(task);
        self.len += 1;
    }

    /// Puts a task back at the front of its shape's queue (it keeps its turn).
    pub fn push_front(&mut self, shape: ResourceSet, task: TaskId) {
        self.by_shape.entry(shape).or_default().push_front(task);
        self.len += 1;
    }

    /// Queued tasks.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The shapes with queued tasks, and how many of each.
    pub fn demand(&self) -> Vec<(ResourceSet, u64)> {
        self.by_shape
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(s, q)| (s.clone(), q.len() as u64))
            .collect()
    }

    /// The shapes queued now.
    pub fn shapes(&self) -> Vec<ResourceSet> {
        self.by_shape.keys().cloned().collect()
    }

    /// The next task of `shape`, left in place.
    pub fn peek(&self, shape: &ResourceSet) -> Option<TaskId> {
        self.by_shape.get(shape).and_then(|q| q.front().copied())
    }

    /// The next task of `shape`, removed.
    pub fn pop(&mut self, shape: &ResourceSet) -> Option<TaskId> {
        let queue = self.by_shape.get_mut(shape)?;
        let task = queue.pop_front();
        if task.is_some() {
            self.len -= 1;
        }
        if queue.is_empty() {
            self.by_shape.remove(shape);
        }
        task
    }

    /// Removes every queued task for which `drop` says so.
    pub fn retain(&mut self, mut keep: impl FnMut(TaskId) -> bool) {
        for queue in self.by_shape.values_mut() {
            queue.retain(|t| keep(*t));
        }
        self.by_shape.retain(|_, q| !q.is_empty());
        self.len = self.by_shape.values().map(|q| q.len()).sum();
    }
}

/// How much more than its resources the head assigns to a node whose tasks take
/// `avg_run_secs` on average. The node runs only what fits (its `LocalTaskQueue`); the
/// surplus waits there, so that when a task ends the next starts without a round trip
/// to the head. That pays only when tasks are about as short as the round trip; for
/// longer tasks a queue at one node would only let it fall behind while another
/// idles, so the surplus shrinks to nothing as tasks get longer.
pub fn dispatch_factor(avg_run_secs: f64) -> f64 {
    if avg_run_secs < 0.002 {
        8.0
    } else if avg_run_secs < 0.020 {
        2.0
    } else {
        1.0
    }
}

/// One node as the policy sees it.
#[derive(Debug, Clone)]
pub struct NodeView<'a> {
    /// The node.
    pub id: NodeId,
    /// Everything it offers.
    pub total: &'a ResourceSet,
    /// What running tasks hold.
    pub used: &'a ResourceSet,
}

/// Picks a node for a task needing `demand`, or `None` when none has room now.
///
/// Among the nodes with room, the one holding the most bytes of the task's arguments
/// wins (moving the task is cheaper than moving its data); otherwise the one with the
/// largest free share of CPU, ties broken by `turn` so that equal nodes take turns.
pub fn pick_node(
    nodes: &[NodeView<'_>],
    demand: &ResourceSet,
    arg_bytes: &HashMap<NodeId, u64>,
    turn: usize,
) -> Option<NodeId> {
    let fits: Vec<&NodeView<'_>> = nodes
        .iter()
        .filter(|n| ResourceSet::fits(n.total, n.used, demand))
        .collect();
    if fits.is_empty() {
        return None;
    }
    if let Some((node, _)) = fits
        .iter()
        .filter_map(|n| arg_bytes.get(&n.id).map(|b| (n.id, *b)))
        .filter(|(_, b)| *b > 0)
        .max_by_key(|(_, b)| *b)
    {
        return Some(node);
    }
    let free_share = |n: &NodeView<'_>| {
        let total = n.total.get(CPU);
        if total <= 0.0 {
            0.0
        } else {
            (total - n.used.get(CPU)) / total
        }
    };
    let best = fits.iter().map(|n| free_share(n)).fold(f64::MIN, f64::max);
    let ties: Vec<NodeId> = fits
        .iter()
        .filter(|n| (free_share(n) - best).abs() < 1e-9)
        .map(|n| n.id)
        .collect();
    Some(ties[turn % ties.len()])
}

/// Whether some node could run `demand` if it were idle.
pub fn is_feasible<'a>(
    totals: impl IntoIterator<Item = &'a ResourceSet>,
    demand: &ResourceSet,
) -> bool {
    totals.into_iter().any(|t| t.contains(demand))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(n: f64) -> ResourceSet {
        ResourceSet::new().with(CPU, n)
    }

    #[test]
    fn prefers_the_node_holding_the_arguments() {
        let (t, u0, u1) = (cpus(2.0), cpus(0.0), cpus(1.0));
        let nodes = [
            NodeView {
                id: NodeId(1),
                total: &t,
                used: &u0,
            },
            NodeView {
                id: NodeId(2),
                total: &t,
                used: &u1,
            },
        ];
        let bytes = HashMap::from_iter([(NodeId(2), 1 << 20)]);
        assert_eq!(pick_node(&nodes, &cpus(1.0), &bytes, 0), Some(NodeId(2)));
        // Without data, the emptier node wins.
        assert_eq!(
            pick_node(&nodes, &cpus(1.0), &HashMap::default(), 1),
            Some(NodeId(1))
        );
    }

    #[test]
    fn equal_nodes_take_turns_and_full_nodes_are_skipped() {
        let (t, free, full) = (cpus(1.0), cpus(0.0), cpus(1.0));
        let nodes = [
            NodeView {
                id: NodeId(1),
                total: &t,
                used: &free,
            },
            NodeView {
                id: NodeId(2),
                total: &t,
                used: &free,
            },
            NodeView {
                id: NodeId(3),
                total: &t,
                used: &full,
            },
        ];
        let picks: Vec<_> = (0..4)
            .map(|i| pick_node(&nodes, &cpus(1.0), &HashMap::default(), i))
            .collect();
        assert_eq!(
            picks,
            vec![
                Some(NodeId(1)),
                Some(NodeId(2)),
                Some(NodeId(1)),
                Some(NodeId(2))
            ]
        );
        assert_eq!(pick_node(&nodes, &cpus(2.0), &HashMap::default(), 0), None);
        assert!(!is_feasible([&t], &cpus(2.0)));
        assert!(is_feasible([&t], &cpus(1.0)));
    }

    #[test]
    fn only_short_tasks_are_queued_ahead_at_nodes() {
        assert_eq!(dispatch_factor(0.0005), 8.0);
        assert_eq!(dispatch_factor(0.010), 2.0);
        assert_eq!(dispatch_factor(0.5), 1.0);
    }

    #[test]
    fn queue_pops_per_shape_in_order() {
        let mut q = SchedulingQueue::default();
        q.push(cpus(1.0), TaskId(1));
        q.push(cpus(2.0), TaskId(2));
        q.push(cpus(1.0), TaskId(3));
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop(&cpus(1.0)), Some(TaskId(1)));
        q.retain(|t| t != TaskId(3));
        assert_eq!(q.len(), 1);
        assert_eq!(q.demand(), vec![(cpus(2.0), 1)]);
    }
}
