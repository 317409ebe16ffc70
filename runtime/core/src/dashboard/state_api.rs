//! Ray's state API (`/api/v0/...`) over the head's rows: the JSON shapes, columns,
//! filters and limits of Ray's `ray.util.state`, so that Ray's own `ray list`,
//! `ray get` and `ray summary` print a rayish cluster.
//!
//! Pure: rows in, JSON out; the HTTP server (`super`) fetches the rows from the head.

use crate::head::view::{ActorRow, JobRow, NodeRow, ObjectRow, StateRows, TaskRow, WorkerRow};
use crate::ids::{NodeId, PeerId, TaskId};
use crate::resources::ResourceSet;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;

/// Ray's default `limit` (`DEFAULT_LIMIT`).
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted (Ray's `RAY_MAX_LIMIT_FROM_API_SERVER`).
pub const MAX_LIMIT: usize = 10_000;

/// A request the state API refuses, with the message a client shows (a 400).
#[derive(Debug, Error, PartialEq)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// A resource of `/api/v0/<resource>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `nodes`
    Nodes,
    /// `jobs`
    Jobs,
    /// `tasks`
    Tasks,
    /// `actors`
    Actors,
    /// `workers`
    Workers,
    /// `objects`
    Objects,
    /// `placement_groups`
    PlacementGroups,
}

impl Resource {
    /// The resource named in a path, as Ray names it.
    pub fn from_path(name: &str) -> Result<Self, BadRequest> {
        Ok(match name {
            "nodes" => Resource::Nodes,
            "jobs" => Resource::Jobs,
            "tasks" => Resource::Tasks,
            "actors" => Resource::Actors,
            "workers" => Resource::Workers,
            "objects" => Resource::Objects,
            "placement_groups" => Resource::PlacementGroups,
            other => {
                return Err(BadRequest(format!(
                    "unknown resource {other:?}: one of nodes, jobs, tasks, actors, workers, \
                     objects, placement_groups"
                )))
            }
        })
    }

    /// The columns of its rows: name, detail-only, filterable (Ray's `state_column`).
    pub fn columns(self) -> &'static [(&'static str, bool, bool)] {
        match self {
            Resource::Nodes => &[
                ("node_id", false, true),
                ("node_ip", false, true),
                ("is_head_node", false, true),
                ("state", false, true),
                ("state_message", false, false),
                ("node_name", false, true),
                ("resources_total", false, false),
                ("labels", false, false),
                ("start_time_ms", true, false),
                ("end_time_ms", true, false),
            ],
            Resource::Tasks => &[
                ("task_id", false, true),
                ("attempt_number", false, true),
                ("name", false, true),
                ("state", false, true),
                ("job_id", false, true),
                ("actor_id", false, true),
                ("type", false, true),
                ("func_or_class_name", false, true),
                ("parent_task_id", false, true),
                ("node_id", false, true),
                ("worker_id", false, true),
                ("worker_pid", false, true),
                ("error_type", false, true),
                ("language", true, true),
                ("required_resources", true, false),
                ("placement_group_id", true, true),
                ("creation_time_ms", true, false),
                ("start_time_ms", true, false),
                ("end_time_ms", true, false),
                ("error_message", true, false),
            ],
            Resource::Actors => &[
                ("actor_id", false, true),
                ("class_name", false, true),
                ("state", false, true),
                ("job_id", false, true),
                ("name", false, true),
                ("node_id", false, true),
                ("pid", false, true),
                ("ray_namespace", false, true),
                ("required_resources", true, false),
                ("death_cause", true, false),
                ("is_detached", true, false),
                ("placement_group_id", true, true),
                ("repr_name", true, true),
                ("num_restarts", true, false),
                ("num_restarts_due_to_lineage_reconstruction", true, false),
                ("num_restarts_due_to_node_preemption", true, false),
            ],
            Resource::Workers => &[
                ("worker_id", false, true),
                ("is_alive", false, true),
                ("worker_type", false, true),
                ("exit_type", false, true),
                ("node_id", false, true),
                ("ip", false, true),
                ("pid", false, true),
                ("exit_detail", true, false),
                ("start_time_ms", true, false),
                ("end_time_ms", true, false),
            ],
            Resource::Objects => &[
                ("object_id", false, true),
                ("object_size", false, true),
                ("task_status", false, true),
                ("attempt_number", false, true),
                ("reference_type", false, true),
                ("call_site", false, true),
                ("type", false, true),
                ("pid", false, true),
                ("ip", false, true),
            ],
            Resource::PlacementGroups => &[
                ("placement_group_id", false, true),
                ("name", false, true),
                ("creator_job_id", false, true),
                ("state", false, true),
                ("bundles", true, false),
                ("is_detached", true, true),
                ("stats", true, false),
            ],
            Resource::Jobs => &[
                ("type", false, true),
                ("job_id", false, true),
                ("submission_id", false, true),
                ("driver_info", false, false),
                ("status", false, true),
                ("entrypoint", false, true),
                ("message", false, false),
                ("error_type", false, true),
                ("start_time", false, false),
                ("end_time", false, false),
                ("metadata", false, false),
                ("runtime_env", false, false),
                ("driver_agent_http_address", false, false),
                ("driver_node_id", false, true),
                ("driver_exit_code", false, false),
            ],
        }
    }
}

/// One filter: `column = value` or `column != value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// The column.
    pub key: String,
    /// `=` (true) or `!=`.
    pub equal: bool,
    /// The value as given.
    pub value: String,
}

/// The options of a list request (Ray's `ListApiOptions`).
#[derive(Debug, Clone, PartialEq)]
pub struct ListOptions {
    /// Rows to return at most.
    pub limit: usize,
    /// Include detail-only columns.
    pub detail: bool,
    /// Every filter must hold.
    pub filters: Vec<Filter>,
    /// Leave drivers out of `workers`.
    pub exclude_driver: bool,
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

impl ListOptions {
    /// Reads Ray's query parameters (`limit`, `detail`, `exclude_driver`, and the
    /// parallel lists `filter_keys`, `filter_predicates`, `filter_values`).
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, BadRequest> {
        let mut limit = DEFAULT_LIMIT;
        let mut detail = false;
        let mut exclude_driver = true;
        let (mut keys, mut predicates, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for (k, v) in pairs {
            match k.as_str() {
                "limit" => {
                    limit = v.parse().map_err(|_| {
                        BadRequest(format!("limit must be a whole number, not {v:?}"))
                    })?;
                    if limit > MAX_LIMIT {
                        return Err(BadRequest(format!(
                            "Given limit {limit} exceeds the supported limit {MAX_LIMIT}. \
                             Use a lower limit."
                        )));
                    }
                }
                "detail" => {
                    detail = parse_bool(v).ok_or_else(|| {
                        BadRequest(format!("detail must be true or false, not {v:?}"))
                    })?
                }
                "exclude_driver" => {
                    exclude_driver = parse_bool(v).ok_or_else(|| {
                        BadRequest(format!("exclude_driver must be true or false, not {v:?}"))
                    })?
                }
                "filter_keys" => keys.push(v.clone()),
                "filter_predicates" => predicates.push(v.clone()),
                "filter_values" => values.push(v.clone()),
                // Ray's clients also send these; the head answers at once.
                "timeout" | "server_timeout_multiplier" | "summary_by" => {}
                _ => {}
            }
        }
        if keys.len() != values.len() || keys.len() != predicates.len() {
            return Err(BadRequest(
                "filter_keys, filter_predicates and filter_values must be given as many times"
                    .into(),
            ));
        }
        let filters = keys
            .into_iter()
            .zip(predicates)
            .zip(values)
            .map(|((key, p), value)| {
                let equal = match p.as_str() {
                    "=" => true,
                    "!=" => false,
                    other => {
                        return Err(BadRequest(format!(
                            "unsupported filter predicate {other:?}: use = or !="
                        )))
                    }
                };
                Ok(Filter {
                    key: key.to_ascii_lowercase(),
                    equal,
                    value,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ListOptions {
            limit,
            detail,
            filters,
            exclude_driver,
        })
    }
}

/// Names the head's node ids to their addresses, for rows that show an IP.
pub type NodeIps = HashMap<NodeId, String>;

/// Worker peers to their pid and node, for object rows.
pub type Holders = HashMap<PeerId, (u32, bool, Option<NodeId>)>;

fn ms(v: Option<u64>) -> Value {
    v.map_or(Value::Null, Value::from)
}

fn resources_json(r: &ResourceSet) -> Value {
    let map: Map<String, Value> = r.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    Value::Object(map)
}

/// The node label that carries [`crate::protocol::NodeRegistration::incarnation`].
pub const INCARNATION_LABEL: &str = "rayish.io/incarnation";

fn node_json(n: &NodeRow) -> Map<String, Value> {
    let ip = n.status.address.ip().to_string();
    let mut labels = Map::new();
    labels.insert("ray.io/node_id".into(), json!(n.status.node_id.to_string()));
    // Which join of its node process this node is (1 first; one more each time it
    // was declared dead or lost its head and joined again). Ray has no such field;
    // a label keeps Ray's row shape, and Ray's labels are strings.
    labels.insert(
        INCARNATION_LABEL.into(),
        json!(n.status.incarnation.to_string()),
    );
    json!({
        "node_id": n.status.node_id.to_string(),
        "node_ip": ip,
        "is_head_node": n.is_head,
        "state": if n.status.alive { "ALIVE" } else { "DEAD" },
        "state_message": n.death_reason,
        "node_name": ip,
        "resources_total": resources_json(&n.status.total),
        "labels": labels,
        "start_time_ms": n.start_time_ms,
        "end_time_ms": ms(n.end_time_ms),
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

fn task_json(t: &TaskRow) -> Map<String, Value> {
    json!({
        "task_id": t.task_id.to_string(),
        "attempt_number": t.attempt,
        "name": &*t.name,
        "state": t.state.ray_name(),
        "job_id": t.job.to_string(),
        "actor_id": t.actor.map(|a| a.to_string()),
        "type": t.kind.ray_name(),
        "func_or_class_name": &*t.name,
        // Ray's nil task id stands for the driver, as in Ray.
        "parent_task_id": if t.parent == TaskId::DRIVER {
            "f".repeat(32)
        } else {
            t.parent.to_string()
        },
        "node_id": t.node.map(|n| n.to_string()),
        "worker_id": Value::Null,
        "worker_pid": t.worker_pid,
        "error_type": t.failure.as_ref().map(|f| f.error_type),
        "language": "RUST",
        "required_resources": t.resources.as_deref().map(resources_json),
        "placement_group_id": Value::Null,
        "creation_time_ms": t.creation_time_ms,
        "start_time_ms": ms(t.start_time_ms),
        "end_time_ms": ms(t.end_time_ms),
        "error_message": t.failure.as_ref().map(|f| f.message.clone()),
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

fn actor_json(a: &ActorRow) -> Map<String, Value> {
    json!({
        "actor_id": a.actor_id.to_string(),
        "class_name": a.class_name,
        "state": a.state.ray_name(),
        "job_id": a.job.to_string(),
        "name": a.name.clone().unwrap_or_default(),
        "node_id": a.node.map(|n| n.to_string()),
        "pid": a.pid,
        "ray_namespace": Value::Null,
        "required_resources": resources_json(&a.resources),
        "death_cause": a.death_cause.as_ref().map(|c| json!({"error_message": c})),
        "is_detached": a.detached,
        "placement_group_id": Value::Null,
        "repr_name": "",
        "num_restarts": a.num_restarts,
        "num_restarts_due_to_lineage_reconstruction": 0,
        "num_restarts_due_to_node_preemption": 0,
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

fn worker_json(w: &WorkerRow, ips: &NodeIps) -> Map<String, Value> {
    // Ray's schema wants strings here; a driver's node is not known to the head.
    let node = w.node.map(|n| n.to_string()).unwrap_or_default();
    let ip = w
        .node
        .and_then(|n| ips.get(&n).cloned())
        .unwrap_or_default();
    json!({
        "worker_id": w.peer.to_string(),
        "is_alive": true,
        "worker_type": if w.is_driver { "DRIVER" } else { "WORKER" },
        "exit_type": Value::Null,
        "node_id": node,
        "ip": ip,
        "pid": w.pid,
        "exit_detail": Value::Null,
        "start_time_ms": w.start_time_ms,
        "end_time_ms": Value::Null,
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

fn object_json(o: &ObjectRow, holders: &Holders, ips: &NodeIps) -> Map<String, Value> {
    // A row without a holder is an object only pending tasks or a containing object
    // keep alive: no process (pid 0) holds a reference to it.
    let holder = o.holder.and_then(|p| holders.get(&p));
    let (pid, is_driver, node) = match holder {
        Some((pid, d, node)) => (*pid, *d, *node),
        None => (0, false, o.nodes.first().copied()),
    };
    let reference_type = if o.holder.is_some() {
        "LOCAL_REFERENCE"
    } else {
        "USED_BY_PENDING_TASK"
    };
    let task_status = match (o.ready, o.failed) {
        (false, _) => "PENDING_NODE_ASSIGNMENT",
        (true, false) => "FINISHED",
        (true, true) => "FAILED",
    };
    json!({
        "object_id": o.object_id.to_string(),
        // Ray's -1: not known yet (its task has not finished).
        "object_size": o.size.map_or(-1, |s| s as i64),
        "task_status": task_status,
        "attempt_number": 0,
        "reference_type": reference_type,
        "call_site": "disabled",
        "type": if is_driver { "DRIVER" } else { "WORKER" },
        "pid": pid,
        "ip": node.and_then(|n| ips.get(&n).cloned()).unwrap_or_default(),
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

/// Ray's `JobDetails` of a driver that was not submitted as a job (Ray's `DRIVER`
/// type).
pub fn driver_job_json(j: &JobRow) -> Map<String, Value> {
    // A driver's exit code is not known to the head: a clean exit (it said
    // goodbye) is SUCCEEDED, a lost connection FAILED.
    let status = match (j.running, j.end_time_ms, &j.lost) {
        (false, Some(_), None) => "SUCCEEDED",
        (false, Some(_), Some(_)) => "FAILED",
        _ => "RUNNING",
    };
    json!({
        "type": "DRIVER",
        "job_id": j.job_id.to_string(),
        "submission_id": Value::Null,
        "driver_info": {
            "id": j.job_id.to_string(),
            "node_ip_address": "",
            "pid": j.driver_pid.to_string(),
        },
        "status": status,
        "entrypoint": j.name,
        "message": j.lost.as_ref().map(|why| format!("the driver's connection was lost: {why}")),
        "error_type": Value::Null,
        "start_time": j.start_time_ms,
        "end_time": ms(j.end_time_ms),
        "metadata": {},
        "runtime_env": {},
        "driver_agent_http_address": Value::Null,
        "driver_node_id": Value::Null,
        "driver_exit_code": Value::Null,
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

/// The rows of `rows` as Ray's JSON objects (every column, detail ones included).
pub fn to_json(rows: &StateRows, holders: &Holders, ips: &NodeIps) -> Vec<Map<String, Value>> {
    match rows {
        StateRows::Nodes(r) => r.iter().map(node_json).collect(),
        StateRows::Jobs(r) => r.iter().map(driver_job_json).collect(),
        StateRows::Tasks(t) => t.rows.iter().map(task_json).collect(),
        StateRows::Actors(r) => r.iter().map(actor_json).collect(),
        StateRows::Workers(r) => r.iter().map(|w| worker_json(w, ips)).collect(),
        StateRows::Objects(r) => r.iter().map(|o| object_json(o, holders, ips)).collect(),
        // Not one of Ray's resources: served by `/api/rayish/user_metrics`.
        StateRows::UserMetrics(_) => Vec::new(),
    }
}

/// Whether `row` passes `filter` (Ray's `do_filter`: strings compare without case,
/// numbers and booleans by value; a row without the column never matches).
fn passes(row: &Map<String, Value>, filter: &Filter) -> bool {
    let Some(v) = row.get(&filter.key) else {
        return false;
    };
    let same = match v {
        Value::String(s) => s.eq_ignore_ascii_case(&filter.value),
        Value::Bool(b) => parse_bool(&filter.value) == Some(*b),
        Value::Number(n) => n.to_string() == filter.value.trim(),
        // Lists and maps are never filterable columns.
        _ => false,
    };
    same == filter.equal
}

/// Ray's `ListApiResponse`, as a JSON object.
pub fn list(
    resource: Resource,
    mut rows: Vec<Map<String, Value>>,
    opts: &ListOptions,
    dropped: u64,
    warnings: Vec<String>,
) -> Result<Value, BadRequest> {
    let columns = resource.columns();
    for f in &opts.filters {
        if !columns
            .iter()
            .any(|(name, _, filterable)| *name == f.key && *filterable)
        {
            let filterable: Vec<&str> = columns.iter().filter(|c| c.2).map(|c| c.0).collect();
            return Err(BadRequest(format!(
                "The given filter column {} is not supported. Supported filter columns: {}",
                f.key,
                filterable.join(", ")
            )));
        }
    }
    if resource == Resource::Workers && opts.exclude_driver {
        rows.retain(|r| r.get("worker_type") != Some(&json!("DRIVER")));
    }
    let total = rows.len() as u64 + dropped;
    let num_after_truncation = rows.len();
    let matched: Vec<Map<String, Value>> = rows
        .into_iter()
        .filter(|r| opts.filters.iter().all(|f| passes(r, f)))
        .collect();
    let num_filtered = matched.len();
    let result: Vec<Value> = matched
        .into_iter()
        .take(opts.limit)
        .map(|row| {
            let mut out = Map::new();
            for (name, detail, _) in columns {
                if opts.detail || !detail {
                    out.insert(
                        (*name).to_string(),
                        row.get(*name).cloned().unwrap_or(Value::Null),
                    );
                }
            }
            Value::Object(out)
        })
        .collect();
    Ok(json!({
        "total": total,
        "num_after_truncation": num_after_truncation,
        "num_filtered": num_filtered,
        "result": result,
        "partial_failure_warning": "",
        "warnings": if warnings.is_empty() { Value::Null } else { json!(warnings) },
    }))
}

/// Ray's summary of tasks by function (`ray summary tasks`).
pub fn summarize_tasks(rows: &[TaskRow]) -> Value {
    let mut by_name: BTreeMap<&str, (&'static str, BTreeMap<&'static str, u64>)> = BTreeMap::new();
    let (mut actor_tasks, mut actor_scheduled) = (0u64, 0u64);
    for t in rows {
        let entry = by_name
            .entry(&t.name)
            .or_insert_with(|| (t.kind.ray_name(), BTreeMap::new()));
        *entry.1.entry(t.state.ray_name()).or_default() += 1;
        match t.kind {
            crate::head::view::TaskType::ActorTask => actor_tasks += 1,
            crate::head::view::TaskType::ActorCreation => actor_scheduled += 1,
            crate::head::view::TaskType::Normal => {}
        }
    }
    let summary: Map<String, Value> = by_name
        .into_iter()
        .map(|(name, (kind, counts))| {
            (
                name.to_string(),
                json!({"func_or_class_name": name, "type": kind, "state_counts": counts}),
            )
        })
        .collect();
    json!({
        "summary": summary,
        "total_tasks": rows.len(),
        "total_actor_tasks": actor_tasks,
        "total_actor_scheduled": actor_scheduled,
        "summary_by": "func_name",
    })
}

/// Ray's summary of actors by class (`ray summary actors`).
pub fn summarize_actors(rows: &[ActorRow]) -> Value {
    let mut by_class: BTreeMap<&str, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for a in rows {
        *by_class
            .entry(&a.class_name)
            .or_default()
            .entry(a.state.ray_name())
            .or_default() += 1;
    }
    let summary: Map<String, Value> = by_class
        .into_iter()
        .map(|(class, counts)| {
            (
                class.to_string(),
                json!({"class_name": class, "state_counts": counts}),
            )
        })
        .collect();
    json!({"summary": summary, "total_actors": rows.len(), "summary_by": "class"})
}

/// Ray's summary of objects (`ray summary objects`); call sites are not recorded, so
/// every object is under Ray's `disabled` call site.
pub fn summarize_objects(rows: &[Map<String, Value>]) -> Value {
    let mut size = 0u64;
    let mut ids = std::collections::HashSet::new();
    let mut holders = std::collections::HashSet::new();
    let mut nodes = std::collections::HashSet::new();
    let mut task_states: BTreeMap<String, u64> = BTreeMap::new();
    let mut ref_types: BTreeMap<String, u64> = BTreeMap::new();
    for r in rows {
        let id = r
            .get("object_id")
            .map(|v| v.to_string())
            .unwrap_or_default();
        if ids.insert(id) {
            size += r.get("object_size").and_then(Value::as_u64).unwrap_or(0);
            let state = r
                .get("task_status")
                .and_then(Value::as_str)
                .unwrap_or("NIL");
            *task_states.entry(state.to_string()).or_default() += 1;
        }
        if let Some(pid) = r.get("pid").and_then(Value::as_u64) {
            holders.insert(pid);
        }
        // A driver's node is not known (its IP is empty): not a node to count.
        if let Some(ip) = r
            .get("ip")
            .and_then(Value::as_str)
            .filter(|ip| !ip.is_empty())
        {
            nodes.insert(ip.to_string());
        }
        let rt = r
            .get("reference_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        *ref_types.entry(rt.to_string()).or_default() += 1;
    }
    let mb = size as f64 / (1024.0 * 1024.0);
    json!({
        "summary": {
            "disabled": {
                "total_objects": ids.len(),
                "total_size_mb": mb,
                "total_num_workers": holders.len(),
                "total_num_nodes": nodes.len(),
                "task_state_counts": task_states,
                "task_attempt_number_counts": {"0": ids.len()},
                "ref_type_counts": ref_types,
            }
        },
        "total_objects": ids.len(),
        "total_size_mb": mb,
        "callsite_enabled": false,
        "summary_by": "callsite",
    })
}

/// Ray's `SummaryApiResponse` around one cluster-wide summary.
pub fn summary_response(summary: Value, total: usize) -> Value {
    json!({
        "total": total,
        "num_after_truncation": total,
        "num_filtered": total,
        "result": {"node_id_to_summary": {"cluster": summary}},
        "partial_failure_warning": "",
        "warnings": Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn rows() -> Vec<Map<String, Value>> {
        vec![
            json!({"task_id": "a", "state": "FINISHED", "attempt_number": 0, "name": "f"}),
            json!({"task_id": "b", "state": "FAILED", "attempt_number": 1, "name": "g"}),
            json!({"task_id": "c", "state": "FAILED", "attempt_number": 0, "name": "g"}),
        ]
        .into_iter()
        .filter_map(|v| v.as_object().cloned())
        .collect()
    }

    #[test]
    fn filters_limits_and_columns_are_rays() {
        let opts = ListOptions::from_query(&q(&[
            ("limit", "1"),
            ("filter_keys", "state"),
            ("filter_predicates", "="),
            ("filter_values", "failed"),
        ]))
        .expect("options");
        let out = list(Resource::Tasks, rows(), &opts, 5, vec![]).expect("list");
        assert_eq!(out["total"], 8);
        assert_eq!(out["num_after_truncation"], 3);
        assert_eq!(out["num_filtered"], 2);
        assert_eq!(out["result"].as_array().map(Vec::len), Some(1));
        assert_eq!(out["result"][0]["task_id"], "b");
        // Base columns only, missing ones as null; no detail columns.
        assert!(out["result"][0]["worker_pid"].is_null());
        assert!(out["result"][0].get("error_message").is_none());
        let not = ListOptions::from_query(&q(&[
            ("filter_keys", "attempt_number"),
            ("filter_predicates", "!="),
            ("filter_values", "0"),
            ("detail", "true"),
        ]))
        .expect("options");
        let out = list(Resource::Tasks, rows(), &not, 0, vec![]).expect("list");
        assert_eq!(out["num_filtered"], 1);
        assert!(out["result"][0].get("error_message").is_some());
    }

    #[test]
    fn an_object_summary_counts_the_nodes_that_hold_references() {
        let rows: Vec<Map<String, Value>> = [
            json!({"object_id": "a", "object_size": 10, "pid": 1, "ip": "", "task_status": "FINISHED", "reference_type": "LOCAL_REFERENCE"}),
            json!({"object_id": "b", "object_size": 20, "pid": 2, "ip": "10.0.0.2", "task_status": "FINISHED", "reference_type": "LOCAL_REFERENCE"}),
            json!({"object_id": "b", "object_size": 20, "pid": 3, "ip": "10.0.0.3", "task_status": "FINISHED", "reference_type": "LOCAL_REFERENCE"}),
        ]
        .into_iter()
        .filter_map(|v| v.as_object().cloned())
        .collect();
        let s = summarize_objects(&rows);
        let d = &s["summary"]["disabled"];
        assert_eq!(d["total_objects"], 2);
        assert_eq!(d["total_num_workers"], 3);
        assert_eq!(d["total_num_nodes"], 2);
        assert_eq!(d["ref_type_counts"]["LOCAL_REFERENCE"], 3);
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let too_many = ListOptions::from_query(&q(&[("limit", "10001")]));
        assert!(too_many.is_err_and(|e| e.0.contains("exceeds")));
        assert!(ListOptions::from_query(&q(&[("limit", "-1")])).is_err());
        assert!(ListOptions::from_query(&q(&[("detail", "maybe")])).is_err());
        let uneven = ListOptions::from_query(&q(&[("filter_keys", "state")]));
        assert!(uneven.is_err());
        let bad_predicate = ListOptions::from_query(&q(&[
            ("filter_keys", "state"),
            ("filter_predicates", "~"),
            ("filter_values", "x"),
        ]));
        assert!(bad_predicate.is_err());
        let unfilterable = ListOptions::from_query(&q(&[
            ("filter_keys", "error_message"),
            ("filter_predicates", "="),
            ("filter_values", "x"),
        ]))
        .expect("options");
        assert!(list(Resource::Tasks, rows(), &unfilterable, 0, vec![]).is_err());
        assert!(Resource::from_path("secrets").is_err());
    }
}
