//! Ray's task timeline (`ray timeline`, `GET /api/v0/tasks/timeline`): a Chrome
//! trace (the Trace Event format, which `chrome://tracing` and Perfetto open) with
//! one "process" per node and one "thread" per worker process, and a complete event
//! per task attempt that ran, as Ray's `chrome_tracing_dump` lays it out.

use super::state_api::NodeIps;
use crate::head::view::{TaskRow, TaskStatus};
use crate::ids::{JobId, NodeId};
use rustc_hash::FxHashMap as HashMap;
use serde_json::{json, Value};

/// The trace of `tasks` (of `job` only, if given); running tasks end at `now_ms`.
pub fn chrome_trace(tasks: &[TaskRow], ips: &NodeIps, job: Option<JobId>, now_ms: u64) -> Value {
    let mut nodes: HashMap<Option<NodeId>, usize> = HashMap::default();
    let mut workers: HashMap<(usize, u32), usize> = HashMap::default();
    let mut events = Vec::new();
    for t in tasks {
        if job.is_some_and(|j| j != t.job) {
            continue;
        }
        let (Some(start), Some(pid)) = (t.start_time_ms, t.worker_pid) else {
            continue;
        };
        let end = match t.state {
            TaskStatus::Finished | TaskStatus::Failed => t.end_time_ms.unwrap_or(start),
            TaskStatus::Running | TaskStatus::RunningInRayGet => now_ms.max(start),
            _ => continue,
        };
        let next = nodes.len();
        let node = *nodes.entry(t.node).or_insert(next);
        let next = workers.len();
        let worker = *workers.entry((node, pid)).or_insert(next);
        let name = format!("task::{}", t.name);
        events.push(json!({
            "cat": name,
            "name": name,
            "pid": node,
            "tid": worker,
            "ts": start * 1000,
            "dur": (end - start) * 1000,
            "cname": match t.state {
                TaskStatus::Failed => "terrible",
                TaskStatus::Finished => "generic_work",
                _ => "rail_animation",
            },
            "args": {
                "task_id": t.task_id.to_string(),
                "job_id": t.job.to_string(),
                "attempt_number": t.attempt,
                "func_or_class_name": &*t.name,
                "actor_id": t.actor.map(|a| a.to_string()),
                "state": t.state.ray_name(),
            },
            "ph": "X",
        }));
    }
    for (node, i) in &nodes {
        let ip = node
            .and_then(|n| ips.get(&n).cloned())
            .unwrap_or_else(|| "unknown".into());
        events.push(json!({
            "name": "process_name", "ph": "M", "pid": i, "tid": null,
            "args": {"name": format!("Node {ip}")},
        }));
    }
    for ((node, pid), i) in &workers {
        events.push(json!({
            "name": "thread_name", "ph": "M", "pid": node, "tid": i,
            "args": {"name": format!("worker:{pid}")},
        }));
    }
    Value::Array(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::view::TaskType;
    use crate::ids::TaskId;

    fn row(
        id: u128,
        node: u128,
        pid: u32,
        state: TaskStatus,
        start: u64,
        end: Option<u64>,
    ) -> TaskRow {
        TaskRow {
            task_id: TaskId(id),
            attempt: 0,
            name: "demo::work".into(),
            job: JobId(1),
            kind: TaskType::Normal,
            actor: None,
            parent: TaskId::DRIVER,
            state,
            node: Some(NodeId(node)),
            worker_pid: Some(pid),
            failure: None,
            resources: None,
            creation_time_ms: start,
            start_time_ms: Some(start),
            end_time_ms: end,
        }
    }

    #[test]
    fn one_thread_per_worker_one_process_per_node() {
        let mut ips = NodeIps::default();
        ips.insert(NodeId(1), "10.0.0.1".into());
        ips.insert(NodeId(2), "10.0.0.2".into());
        let tasks = vec![
            row(1, 1, 100, TaskStatus::Finished, 1_000, Some(1_500)),
            row(2, 1, 100, TaskStatus::Failed, 1_600, Some(1_700)),
            row(3, 2, 200, TaskStatus::Running, 1_000, None),
            row(4, 2, 300, TaskStatus::PendingNodeAssignment, 1_000, None),
        ];
        let trace = chrome_trace(&tasks, &ips, None, 2_000);
        let events = trace.as_array().expect("array");
        let complete: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(complete.len(), 3);
        assert_eq!(complete[0]["ts"], 1_000_000);
        assert_eq!(complete[0]["dur"], 500_000);
        assert_eq!(complete[0]["tid"], complete[1]["tid"]);
        assert_ne!(complete[0]["pid"], complete[2]["pid"]);
        assert_eq!(complete[1]["cname"], "terrible");
        assert_eq!(complete[2]["dur"], 1_000_000, "running: up to now");
        let names: Vec<&str> = events
            .iter()
            .filter(|e| e["name"] == "process_name")
            .filter_map(|e| e["args"]["name"].as_str())
            .collect();
        assert!(names.contains(&"Node 10.0.0.2"), "{names:?}");
        assert_eq!(
            events.iter().filter(|e| e["name"] == "thread_name").count(),
            2
        );
        assert!(chrome_trace(&tasks, &ips, Some(JobId(9)), 2_000)
            .as_array()
            .is_some_and(|e| e.is_empty()));
    }
}
