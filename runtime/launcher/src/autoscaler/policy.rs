//! The autoscaler's decisions, as a pure function of what it saw and when: which pool
//! machines to start a worker on, which idle workers to stop. No I/O here, so every
//! rule is unit-tested with made-up snapshots and clocks.

use rayish_core::protocol::{AutoscalerReport, PoolMachine};
use rayish_core::resources::ResourceSet;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the autoscaler may do, from the cluster file.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The pool, in file order: each machine's name and the addresses it resolves to.
    pub pool: Vec<(String, Vec<String>)>,
    /// Workers always kept.
    pub min_workers: usize,
    /// Most workers.
    pub max_workers: usize,
    /// At most `upscaling_speed` × running nodes (at least 1) launching at once.
    pub upscaling_speed: f64,
    /// A worker idle this long is stopped (down to `min_workers`).
    pub idle_timeout: Duration,
    /// What one worker offers (the worker node type's resources); empty: unknown, so
    /// assumed to be like the largest node seen.
    pub worker_resources: ResourceSet,
    /// No worker is started for `min_workers` alone this soon after the autoscaler
    /// starts: `rayish up` is starting them then.
    pub startup_grace: Duration,
    /// A launch whose node has not joined by then has failed.
    pub launch_timeout: Duration,
    /// A failed machine is tried again after this.
    pub retry_after: Duration,
}

/// One node as the head reported it.
#[derive(Debug, Clone)]
pub struct NodeSeen {
    /// Its IP address.
    pub ip: String,
    /// Whether it is the head's own node.
    pub is_head: bool,
    /// Tasks running there.
    pub running_tasks: u64,
    /// All it offers.
    pub total: ResourceSet,
    /// What is free.
    pub available: ResourceSet,
}

/// What the head reported.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Live nodes.
    pub nodes: Vec<NodeSeen>,
    /// Resource shapes waiting for room, with counts.
    pub pending: Vec<(ResourceSet, u64)>,
    /// Shapes no live node can ever run, with counts.
    pub infeasible: Vec<(ResourceSet, u64)>,
}

/// Something to do to a machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Set up and start a worker there.
    Launch {
        /// The machine.
        host: String,
    },
    /// Stop its worker.
    Stop {
        /// The machine.
        host: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// No node, nothing under way.
    Free,
    Launching(Instant),
    /// A live node; since when it has been idle, if it is.
    Running(Option<Instant>),
    Stopping(Instant),
    Failed(Instant, String),
}

/// The autoscaler's memory between rounds.
#[derive(Debug)]
pub struct Policy {
    limits: Limits,
    started: Instant,
    machines: Vec<(String, State)>,
    recent: VecDeque<String>,
}

const RECENT: usize = 12;

impl Policy {
    /// A policy that starts now.
    pub fn new(limits: Limits, now: Instant) -> Self {
        let machines = limits
            .pool
            .iter()
            .map(|(h, _)| (h.clone(), State::Free))
            .collect();
        Self {
            limits,
            started: now,
            machines,
            recent: VecDeque::new(),
        }
    }

    fn note(&mut self, line: String) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    /// A launch or stop failed: the machine is left alone for a while.
    pub fn failed(&mut self, host: &str, reason: String, now: Instant) {
        if let Some((_, s)) = self.machines.iter_mut().find(|(h, _)| h == host) {
            *s = State::Failed(now, reason.clone());
        }
        self.note(format!("{host}: failed: {reason}"));
    }

    /// One round: update what each machine is doing from `seen`, then decide.
    pub fn step(&mut self, seen: &Snapshot, now: Instant) -> Vec<Action> {
        let limits = self.limits.clone();
        let node_of = |addrs: &[String]| {
            seen.nodes
                .iter()
                .find(|n| !n.is_head && addrs.contains(&n.ip))
        };
        // Running, and idle since when (kept from before), if nothing runs there.
        let running = |before: Option<Instant>, n: &NodeSeen| {
            let busy = n.running_tasks > 0 || n.available != n.total;
            State::Running(if busy {
                None
            } else {
                Some(before.unwrap_or(now))
            })
        };
        let mut notes = Vec::new();
        for (i, (host, state)) in self.machines.iter_mut().enumerate() {
            let node = node_of(&limits.pool[i].1);
            let next = match (&*state, node) {
                (State::Running(idle), Some(n)) => running(*idle, n),
                (State::Running(_), None) => {
                    notes.push(format!("{host}: its node left"));
                    State::Free
                }
                (State::Launching(_), Some(n)) => {
                    notes.push(format!("{host}: worker joined"));
                    running(None, n)
                }
                (State::Launching(since), None)
                    if now.duration_since(*since) > limits.launch_timeout =>
                {
                    let reason = format!("no node joined within {:?}", limits.launch_timeout);
                    notes.push(format!("{host}: failed: {reason}"));
                    State::Failed(now, reason)
                }
                (State::Stopping(_), None) => {
                    notes.push(format!("{host}: worker stopped"));
                    State::Free
                }
                (State::Stopping(since), Some(n))
                    if now.duration_since(*since) > limits.launch_timeout =>
                {
                    running(None, n)
                }
                (State::Free | State::Failed(..), Some(n)) => running(None, n),
                (State::Failed(at, _), None) if now.duration_since(*at) > limits.retry_after => {
                    State::Free
                }
                (other, _) => other.clone(),
            };
            *state = next;
        }
        for n in notes {
            self.note(n);
        }

        let count = |f: fn(&State) -> bool| self.machines.iter().filter(|(_, s)| f(s)).count();
        let running = count(|s| matches!(s, State::Running(_)));
        let launching = count(|s| matches!(s, State::Launching(_)));
        let workers = running + launching;
        let mut actions = Vec::new();

        // Up: enough new workers for the demand that fits nowhere now, and for the minimum.
        let (needed, why) = self.nodes_needed(seen, launching);
        let for_min = if now.duration_since(self.started) >= limits.startup_grace {
            limits.min_workers.saturating_sub(workers)
        } else {
            0
        };
        let want = needed.max(for_min);
        let alive_nodes = seen.nodes.len().max(1);
        let speed_cap = ((limits.upscaling_speed * alive_nodes as f64).ceil() as usize).max(1);
        let room = limits
            .max_workers
            .saturating_sub(workers)
            .min(speed_cap.saturating_sub(launching));
        let reason = if needed >= for_min {
            why
        } else {
            format!("min_workers is {}", limits.min_workers)
        };
        for (host, state) in self.machines.iter_mut() {
            if actions.len() >= want.min(room) {
                break;
            }
            if *state == State::Free {
                *state = State::Launching(now);
                actions.push(Action::Launch { host: host.clone() });
            }
        }
        for a in &actions {
            if let Action::Launch { host } = a {
                self.note(format!("{host}: launching a worker ({reason})"));
            }
        }
        if want > actions.len() && actions.len() < room {
            // Every machine is busy or failed: say so once per round at most.
            let line = format!(
                "wants {} more worker(s) ({reason}), but no free machine is left in the pool",
                want - actions.len()
            );
            if self.recent.back() != Some(&line) {
                self.note(line);
            }
        }

        // Down: workers idle past the timeout, while nothing waits, above the minimum.
        if seen.pending.is_empty() && actions.is_empty() {
            let mut left = workers;
            let mut stops = Vec::new();
            for (host, state) in self.machines.iter_mut() {
                if left <= limits.min_workers {
                    break;
                }
                if let State::Running(Some(since)) = state {
                    let idle = now.duration_since(*since);
                    if idle >= limits.idle_timeout {
                        stops.push((host.clone(), idle));
                        *state = State::Stopping(now);
                        left -= 1;
                    }
                }
            }
            for (host, idle) in stops {
                self.note(format!(
                    "{host}: stopping its worker (idle {:.0} s, idle_timeout {:.0} s)",
                    idle.as_secs_f64(),
                    limits.idle_timeout.as_secs_f64()
                ));
                actions.push(Action::Stop { host });
            }
        }
        actions
    }

    /// How many new workers the waiting demand needs: each waiting task is placed on
    /// the free room of live nodes and of workers already launching, then on new
    /// workers; shapes no worker could ever hold are left out.
    fn nodes_needed(&self, seen: &Snapshot, launching: usize) -> (usize, String) {
        let capacity = if self.limits.worker_resources.is_empty() {
            seen.nodes
                .iter()
                .map(|n| n.total.clone())
                .max_by(|a, b| {
                    a.get(rayish_core::resources::CPU)
                        .total_cmp(&b.get(rayish_core::resources::CPU))
                })
                .unwrap_or_default()
        } else {
            self.limits.worker_resources.clone()
        };
        let mut free: Vec<ResourceSet> = seen.nodes.iter().map(|n| n.available.clone()).collect();
        free.extend(std::iter::repeat_n(capacity.clone(), launching));
        let mut new_nodes = 0;
        let mut waiting = 0u64;
        for (shape, count) in seen.pending.iter().chain(&seen.infeasible) {
            if !capacity.contains(shape) {
                continue;
            }
            for _ in 0..*count {
                waiting += 1;
                match free.iter_mut().find(|f| f.contains(shape)) {
                    Some(f) => f.subtract(shape),
                    None => {
                        let mut fresh = capacity.clone();
                        fresh.subtract(shape);
                        free.push(fresh);
                        new_nodes += 1;
                    }
                }
            }
        }
        (
            new_nodes,
            format!("{waiting} task(s) waiting for resources"),
        )
    }

    /// What to show in `rayish status`.
    pub fn report(&self, now: Instant) -> AutoscalerReport {
        AutoscalerReport {
            min_workers: self.limits.min_workers as u32,
            max_workers: self.limits.max_workers as u32,
            idle_timeout_secs: self.limits.idle_timeout.as_secs_f64(),
            machines: self
                .machines
                .iter()
                .map(|(host, s)| {
                    let (state, detail) = match s {
                        State::Free => ("idle", String::new()),
                        State::Launching(t) => (
                            "launching",
                            format!("for {:.0} s", now.duration_since(*t).as_secs_f64()),
                        ),
                        State::Running(None) => ("running", "busy".to_string()),
                        State::Running(Some(t)) => (
                            "running",
                            format!("idle for {:.0} s", now.duration_since(*t).as_secs_f64()),
                        ),
                        State::Stopping(_) => ("stopping", String::new()),
                        State::Failed(_, reason) => ("failed", reason.clone()),
                    };
                    PoolMachine {
                        host: host.clone(),
                        state: state.into(),
                        detail,
                    }
                })
                .collect(),
            recent: self.recent.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(n: f64) -> ResourceSet {
        ResourceSet::new().with("CPU", n)
    }

    fn limits(min: usize, max: usize) -> Limits {
        Limits {
            pool: vec![
                ("a".into(), vec!["10.0.0.2".into()]),
                ("b".into(), vec!["10.0.0.3".into()]),
                ("c".into(), vec!["10.0.0.4".into()]),
            ],
            min_workers: min,
            max_workers: max,
            upscaling_speed: 1.0,
            idle_timeout: Duration::from_secs(60),
            worker_resources: cpus(2.0),
            startup_grace: Duration::from_secs(30),
            launch_timeout: Duration::from_secs(120),
            retry_after: Duration::from_secs(30),
        }
    }

    fn head(free: f64) -> NodeSeen {
        NodeSeen {
            ip: "10.0.0.1".into(),
            is_head: true,
            running_tasks: 1,
            total: cpus(1.0),
            available: cpus(free),
        }
    }

    fn worker(ip: &str, running: u64) -> NodeSeen {
        NodeSeen {
            ip: ip.into(),
            is_head: false,
            running_tasks: running,
            total: cpus(2.0),
            available: cpus(if running > 0 { 0.0 } else { 2.0 }),
        }
    }

    fn launches(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Launch { host } => Some(host.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn waiting_tasks_start_workers_at_the_upscaling_speed_up_to_max() {
        let t0 = Instant::now();
        let mut p = Policy::new(limits(0, 2), t0);
        let burst = Snapshot {
            nodes: vec![head(0.0)],
            pending: vec![(cpus(1.0), 10)],
            infeasible: vec![],
        };
        // One live node, speed 1: one launch at a time.
        assert_eq!(launches(&p.step(&burst, t0)), ["a"]);
        assert!(p.step(&burst, t0 + Duration::from_secs(1)).is_empty());
        let joined = Snapshot {
            nodes: vec![head(0.0), worker("10.0.0.2", 2)],
            ..burst.clone()
        };
        // Two nodes now: the next launch, and no more than max_workers (2).
        assert_eq!(
            launches(&p.step(&joined, t0 + Duration::from_secs(2))),
            ["b"]
        );
        assert!(p.step(&joined, t0 + Duration::from_secs(3)).is_empty());
        let report = p.report(t0 + Duration::from_secs(3));
        assert_eq!(report.machines[1].state, "launching");
        assert!(
            report
                .recent
                .iter()
                .any(|l| l.contains("waiting for resources")),
            "{report:?}"
        );
    }

    #[test]
    fn demand_that_fits_where_there_is_room_starts_nothing() {
        let t0 = Instant::now();
        let mut p = Policy::new(limits(0, 3), t0);
        let seen = Snapshot {
            nodes: vec![head(0.0), worker("10.0.0.2", 0)],
            pending: vec![(cpus(1.0), 2)],
            infeasible: vec![],
        };
        assert!(p.step(&seen, t0).is_empty());
        // A shape no worker could hold starts nothing either.
        let huge = Snapshot {
            nodes: vec![head(0.0)],
            pending: vec![],
            infeasible: vec![(cpus(64.0), 1)],
        };
        assert!(p.step(&huge, t0).is_empty());
    }

    #[test]
    fn idle_workers_stop_after_the_timeout_down_to_the_minimum() {
        let t0 = Instant::now();
        let mut p = Policy::new(limits(1, 3), t0);
        let idle = Snapshot {
            nodes: vec![head(1.0), worker("10.0.0.2", 0), worker("10.0.0.3", 0)],
            pending: vec![],
            infeasible: vec![],
        };
        assert!(p.step(&idle, t0).is_empty());
        assert!(p.step(&idle, t0 + Duration::from_secs(59)).is_empty());
        let actions = p.step(&idle, t0 + Duration::from_secs(61));
        assert_eq!(
            actions,
            [Action::Stop { host: "a".into() }],
            "one left for min_workers"
        );
        let gone = Snapshot {
            nodes: vec![head(1.0), worker("10.0.0.3", 0)],
            ..idle
        };
        assert!(p.step(&gone, t0 + Duration::from_secs(120)).is_empty());
        assert_eq!(p.report(t0).machines[0].state, "idle");
    }

    #[test]
    fn the_minimum_is_kept_after_the_grace_and_failures_wait_before_a_retry() {
        let t0 = Instant::now();
        let mut p = Policy::new(limits(1, 3), t0);
        let nothing = Snapshot {
            nodes: vec![head(1.0)],
            ..Default::default()
        };
        assert!(
            p.step(&nothing, t0).is_empty(),
            "up starts the minimum itself"
        );
        let later = t0 + Duration::from_secs(31);
        assert_eq!(launches(&p.step(&nothing, later)), ["a"]);
        p.failed("a", "ssh: connection refused".into(), later);
        assert_eq!(launches(&p.step(&nothing, later)), ["b"]);
        p.failed("b", "ssh: connection refused".into(), later);
        assert_eq!(launches(&p.step(&nothing, later)), ["c"]);
        let report = p.report(later);
        assert_eq!(report.machines[0].state, "failed");
        assert_eq!(report.machines[0].detail, "ssh: connection refused");
        // `a` is retried once retry_after has passed.
        p.failed("c", "no".into(), later);
        assert_eq!(
            launches(&p.step(&nothing, later + Duration::from_secs(31))),
            ["a"]
        );
    }
}
