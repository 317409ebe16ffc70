//! The snapshot `rayish status` shows.

use super::*;

impl HeadState {
    /// A snapshot for `rayish status`.
    pub(super) fn status(&self) -> ClusterStatus {
        let (infeasible, waiting, running) = self.tasks.census();
        let mut infeasible_demand: Vec<_> = infeasible.into_iter().collect();
        infeasible_demand.sort();
        ClusterStatus {
            nodes: self.nodes.statuses(),
            pending_tasks: self.queue.len() as u64 + waiting,
            running_tasks: running,
            finished_tasks: self.tasks.finished(),
            pending_demand: self.queue.demand(),
            infeasible_demand,
            objects: self.objects.len() as u64,
            drivers: self.jobs.connected_drivers() as u64,
            actors: self.actors.live_count() as u64,
            autoscaler: self.autoscaler.clone(),
            head_starts: self.settings.head_starts,
        }
    }
}
