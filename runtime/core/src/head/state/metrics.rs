//! What the head adds to its node's metrics: the cluster-wide counts Ray's GCS and
//! task owners export (`ray_tasks`, `ray_actors`, `ray_placement_groups`,
//! `autoscaler_active_nodes`) and rayish's own scheduler figures.

use super::*;
use crate::metrics::MetricSet;
use crate::protocol::UserMetric;
use crate::transport::log_limit::LogLimiter;

/// Refused metric reports: one line a minute, whoever sends them.
static REFUSED_REPORTS: LogLimiter = LogLimiter::new(Duration::from_secs(60));

/// Ray's placement group states (none exist yet; the family is there, at zero).
const PLACEMENT_GROUP_STATES: [&str; 4] = ["PENDING", "CREATED", "REMOVED", "RESCHEDULING"];

impl HeadState {
    /// A driver's or worker's own metrics, replacing its last report (from a peer
    /// that is not one, or breaking the table's rules, refused with a warning).
    pub(super) fn user_metrics_reported(&mut self, peer: PeerId, metrics: Vec<UserMetric>) {
        if self.peers.job(peer).is_none() {
            tracing::warn!(
                ?peer,
                "metrics from a peer that is not a driver or worker; ignored"
            );
            return;
        }
        if let Err(why) = self.user_metrics.report(peer, metrics) {
            let everyone = std::net::IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED);
            crate::warn_limited!(
                REFUSED_REPORTS,
                everyone,
                "user-metrics",
                "refused a metrics report of {peer:?}: {why:?}"
            );
        }
    }

    /// Adds the head's samples to `out`.
    pub fn metrics(&mut self, out: &mut MetricSet) {
        self.task_metrics(out);
        self.actor_metrics(out);
        for state in PLACEMENT_GROUP_STATES {
            out.gauge(
                "ray_placement_groups",
                "Placement groups by state.",
                &[("State", state)],
                0.0,
            );
        }
        let (mut head, mut workers) = (0u64, 0u64);
        for node in self.nodes.statuses().iter().filter(|n| n.alive) {
            if node.node_id == self.settings.head_node {
                head += 1;
            } else {
                workers += 1;
            }
        }
        for (kind, count) in [("head", head), ("worker", workers)] {
            out.gauge(
                "autoscaler_active_nodes",
                "Live nodes by type.",
                &[("NodeType", kind)],
                count as f64,
            );
        }
        out.gauge(
            "rayish_scheduler_queue_depth",
            "Tasks ready to run and waiting for a node with room.",
            &[],
            self.queue.len() as f64,
        );
        out.histogram(
            "rayish_task_run_seconds",
            "Time tasks ran on their workers, as their nodes report it.",
            &self.task_run_seconds,
        );
        out.gauge(
            "rayish_objects",
            "Objects the head's directory lists.",
            &[],
            self.objects.len() as f64,
        );
        // Last: a user metric may not take the name of any system one above.
        self.user_metrics.add_to(out);
    }

    /// `ray_tasks{State, Name, IsRetry, Source="owner"}`: live tasks not yet on a
    /// node by their state now (a node reports those it has, with
    /// Source="executor"), and tasks over for good as FINISHED or FAILED (totals
    /// since the head started, which Ray's panels take the maximum of).
    fn task_metrics(&mut self, out: &mut MetricSet) {
        const HELP: &str = "Tasks by state, function and whether a retry.";
        let mut live: HashMap<(&'static str, String, bool), u64> = HashMap::default();
        for task in self.tasks.iter() {
            let state = match task.state() {
                TaskState::WaitingForArgs => "PENDING_ARGS_AVAIL",
                TaskState::Queued | TaskState::Infeasible => "PENDING_NODE_ASSIGNMENT",
                TaskState::Running(_) => continue,
            };
            let key = (state, task.spec().function.to_string(), task.attempt() > 0);
            *live.entry(key).or_default() += 1;
        }
        for key in live.keys() {
            if !self.task_series.contains(key) {
                self.task_series.insert(key.clone());
            }
        }
        for key in &self.task_series {
            live.entry(key.clone()).or_default();
        }
        let mut sample = |state: &str, name: &str, is_retry: bool, n: u64| {
            let retry = if is_retry { "1" } else { "0" };
            let labels = [
                ("State", state),
                ("Name", name),
                ("IsRetry", retry),
                ("Source", "owner"),
            ];
            out.gauge("ray_tasks", HELP, &labels, n as f64);
        };
        for ((state, name, is_retry), n) in live {
            sample(state, &name, is_retry, n);
        }
        for (name, c) in self.tasks.ended() {
            for (state, is_retry, n) in [
                ("FINISHED", false, c.finished),
                ("FAILED", false, c.failed),
                ("FINISHED", true, c.finished_retry),
                ("FAILED", true, c.failed_retry),
            ] {
                if n > 0 {
                    sample(state, name, is_retry, n);
                }
            }
        }
    }

    /// `ray_actors{State, Name, Source="gcs"}`, Name being the actor's class.
    fn actor_metrics(&self, out: &mut MetricSet) {
        let mut counts: HashMap<(&'static str, &str), u64> = HashMap::default();
        for actor in self.actors.iter() {
            let state = match actor.state() {
                ActorState::Creating if actor.restarts() > 0 => "RESTARTING",
                ActorState::Creating => "PENDING_CREATION",
                ActorState::Alive(_) => "ALIVE",
                ActorState::Dead(_) => "DEAD",
            };
            *counts
                .entry((state, actor_class(&actor.creation().function)))
                .or_default() += 1;
        }
        for ((state, name), n) in counts {
            out.gauge(
                "ray_actors",
                "Actors by state and class.",
                &[("State", state), ("Name", name), ("Source", "gcs")],
                n as f64,
            );
        }
    }
}

/// An actor's class, as Ray names it, from its constructor's registered name
/// (`my_crate::counter::Counter::new` → `Counter`).
fn actor_class(constructor: &str) -> &str {
    let class_path = constructor.strip_suffix("::new").unwrap_or(constructor);
    class_path
        .rsplit_once("::")
        .map_or(class_path, |(_, class)| class)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_actors_class_is_its_constructors_type_name() {
        assert_eq!(super::actor_class("app::counter::Counter::new"), "Counter");
        assert_eq!(super::actor_class("Counter::new"), "Counter");
        assert_eq!(super::actor_class("odd"), "odd");
    }
}
