//! The snapshot `rayish status` shows.

use super::*;

impl HeadState {
    /// A snapshot for `rayish status`.
    pub(super) fn status(&self) -> ClusterStatus {
        let mut nodes: Vec<NodeStatus> = self
            .nodes
            .values()
            .map(|n| NodeStatus {
                node_id: n.reg.node_id,
                address: n.reg.address,
                hostname: n.reg.hostname.clone(),
                alive: n.alive,
                total: n.reg.resources.clone(),
                available: if n.alive {
                    n.reg.resources.minus(&n.used)
                } else {
                    ResourceSet::new()
                },
                running_tasks: n.running.len() as u64,
                finished_tasks: n.finished,
                load: n.load,
            })
            .collect();
        nodes.sort_by_key(|n| (!n.alive, n.address));
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
        let mut infeasible_demand: Vec<_> = infeasible.into_iter().collect();
        infeasible_demand.sort();
        ClusterStatus {
            nodes,
            pending_tasks: (self.queue.len() + waiting) as u64,
            running_tasks: running,
            finished_tasks: self.finished_tasks,
            pending_demand: self.queue.demand(),
            infeasible_demand,
            objects: self.objects.len() as u64,
            drivers: self.jobs.values().filter(|j| !j.driver_gone).count() as u64,
            actors: self.actors.live_count() as u64,
            autoscaler: self.autoscaler.clone(),
        }
    }
}
