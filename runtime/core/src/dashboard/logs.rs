//! Ray's log API over the nodes' log directories: `GET /api/v0/logs` lists a node's
//! log files by Ray's categories, `GET /api/v0/logs/file` returns one (its last
//! `lines` lines) and `GET /api/v0/logs/stream` follows it, as Ray 2.60 serves them
//! (plain text; an error before the first byte is a 500 with its message).
//!
//! The files live on their nodes: each read is one question relayed by the head to
//! the node's agent ([`crate::protocol::AgentRequest`]), at most
//! [`MAX_LOG_CHUNK`] bytes at a time. A follower polls every `interval` seconds
//! (Ray's default: 1) and ends when its client goes or the node does.

use super::{reply, reply_error, rows, state_api::BadRequest, Dashboard};
use crate::head::view::{StateQuery, StateRows};
use crate::head::HeadHandle;
use crate::ids::NodeId;
use crate::protocol::{AgentReply, AgentRequest, LogStart, MAX_LOG_CHUNK};
use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long one question to a node may take.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines returned when a request names none (Ray's `DEFAULT_LOG_LIMIT`).
const DEFAULT_LINES: i64 = 1000;

/// Ray's categories of log files (`LogsManager._categorize_log_files`), with
/// rayish's own process logs under Ray's names for the same processes.
pub fn category(name: &str) -> &'static str {
    if name.contains("worker") && name.ends_with(".out") {
        "worker_out"
    } else if name.contains("worker") && name.ends_with(".err") {
        "worker_err"
    } else if name.starts_with("rayish-node-") || name.contains("raylet.") {
        "raylet"
    } else if name.starts_with("rayish-head-") || name.contains("gcs_server.") {
        "gcs_server"
    } else if name.contains("monitor") {
        "autoscaler"
    } else if name.contains("dashboard.") {
        "dashboard"
    } else {
        "internal"
    }
}

/// `{category: [file, ...]}` for `files`.
pub fn categorize(files: Vec<String>) -> Value {
    let mut by: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for f in files {
        by.entry(category(&f)).or_default().push(f);
    }
    Value::Object(
        by.into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect::<Map<_, _>>(),
    )
}

/// Whether `name` is the worker log of process `pid` with `suffix` (rayish names
/// them as Ray does: `worker-<id>-<job>-<pid>.<out|err>`).
pub fn is_worker_log_of(name: &str, pid: u32, suffix: &str) -> bool {
    let Some(stem) = name
        .strip_prefix("worker-")
        .and_then(|n| n.strip_suffix(suffix))
        .and_then(|n| n.strip_suffix('.'))
    else {
        return false;
    };
    stem.rsplit('-').next() == Some(pid.to_string().as_str())
}

fn get<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn parse_node_id(hex: &str) -> Result<NodeId, BadRequest> {
    u128::from_str_radix(hex, 16)
        .ok()
        .filter(|_| hex.len() == 32)
        .map(NodeId)
        .ok_or_else(|| BadRequest(format!("{hex:?} is not a node id (32 hex digits)")))
}

async fn ask(head: &HeadHandle, node: NodeId, request: AgentRequest) -> Result<AgentReply, String> {
    match tokio::time::timeout(NODE_TIMEOUT, head.ask_node(node, request)).await {
        Ok(Some(AgentReply::Error(e))) => Err(e),
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(format!("node {node} is not alive")),
        Err(_) => Err(format!("node {node} did not answer in {NODE_TIMEOUT:?}")),
    }
}

/// The node a request names by `node_id` or `node_ip` (a live one for an IP).
async fn node_of(d: &Dashboard, query: &[(String, String)]) -> Result<Option<NodeId>, Response> {
    if let Some(id) = get(query, "node_id") {
        return parse_node_id(id).map(Some).map_err(Response::from);
    }
    let Some(ip) = get(query, "node_ip") else {
        return Ok(None);
    };
    let StateRows::Nodes(nodes) = rows(&d.head, StateQuery::Nodes).await? else {
        return Ok(None);
    };
    match nodes
        .iter()
        .find(|n| n.status.alive && n.status.address.ip().to_string() == ip)
    {
        Some(n) => Ok(Some(n.status.node_id)),
        None => Err(reply_error(
            StatusCode::NOT_FOUND,
            format!("Cannot find matching node_id for a given node ip {ip}"),
        )),
    }
}

/// Ray's `GET /api/v0/logs?node_id=|node_ip=&glob=`.
pub(super) async fn list(d: &Dashboard, query: &[(String, String)]) -> Response {
    let node =
        match node_of(d, query).await {
            Ok(Some(n)) => n,
            Ok(None) => return reply_error(
                StatusCode::BAD_REQUEST,
                "Both node id and node ip are not provided. Please provide at least one of them."
                    .into(),
            ),
            Err(r) => return r,
        };
    let glob = get(query, "glob").unwrap_or("*").to_string();
    match ask(&d.head, node, AgentRequest::ListLogs { glob }).await {
        Ok(AgentReply::Logs(files)) => reply(categorize(files)),
        Ok(other) => reply_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        ),
        Err(e) => reply_error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Which file of which node a `logs/file` or `logs/stream` request means: by
/// `filename`, or the worker log of `pid`, `actor_id` or `task_id` (`suffix` out
/// or err).
async fn resolve(d: &Dashboard, query: &[(String, String)]) -> Result<(NodeId, String), String> {
    let suffix = get(query, "suffix").unwrap_or("out");
    if suffix != "out" && suffix != "err" {
        return Err(format!("Suffix {suffix} is not supported."));
    }
    let named_node = node_of(d, query)
        .await
        .map_err(|_| "no such node".to_string())?;
    if let Some(f) = get(query, "filename") {
        let node = named_node.ok_or("node_id or node_ip must be provided with a filename")?;
        return Ok((node, f.to_string()));
    }
    let (node, pid) = if let Some(pid) = get(query, "pid") {
        let pid: u32 = pid.parse().map_err(|_| format!("{pid:?} is not a pid"))?;
        (
            named_node.ok_or("Node id needs to be specified for resolving filenames of pid")?,
            pid,
        )
    } else if let Some(actor) = get(query, "actor_id") {
        let rows = rows(&d.head, StateQuery::Actors)
            .await
            .map_err(|_| "the head did not answer".to_string())?;
        let StateRows::Actors(actors) = rows else {
            return Err("unexpected rows".into());
        };
        let a = actors
            .iter()
            .find(|a| a.actor_id.to_string() == actor)
            .ok_or_else(|| format!("Actor ID {actor} not found."))?;
        match (a.node, a.pid) {
            (Some(n), Some(p)) => (n, p),
            _ => return Err(format!("Actor {actor} is not scheduled yet.")),
        }
    } else if let Some(task) = get(query, "task_id") {
        let rows = rows(&d.head, StateQuery::Tasks)
            .await
            .map_err(|_| "the head did not answer".to_string())?;
        let StateRows::Tasks(tasks) = rows else {
            return Err("unexpected rows".into());
        };
        let t = tasks
            .rows
            .iter()
            .find(|t| t.task_id.to_string() == task)
            .ok_or_else(|| format!("Could not find log file for task: {task}"))?;
        match (t.node, t.worker_pid) {
            (Some(n), Some(p)) => (n, p),
            _ => return Err(format!("Task {task} has not run on a worker yet.")),
        }
    } else {
        return Err("one of filename, pid, actor_id or task_id is required".into());
    };
    let glob = format!("worker-*-{pid}.{suffix}");
    match ask(&d.head, node, AgentRequest::ListLogs { glob }).await? {
        AgentReply::Logs(files) => files
            .into_iter()
            .find(|f| is_worker_log_of(f, pid, suffix))
            .map(|f| (node, f))
            .ok_or_else(|| format!("Could not find a log file of pid {pid} on node {node}")),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// A log being read: where the next read starts, and whether to wait for more.
struct Reader {
    head: HeadHandle,
    node: NodeId,
    filename: String,
    next: LogStart,
    follow: bool,
    interval: Duration,
    done: bool,
}

impl Reader {
    /// The next piece: `None` at the end (of the file, or of a follower whose node
    /// went); an error only when a read fails.
    async fn next_piece(&mut self) -> Option<Result<Vec<u8>, String>> {
        loop {
            if self.done {
                return None;
            }
            let request = AgentRequest::ReadLog {
                filename: self.filename.clone(),
                from: self.next,
                max_bytes: MAX_LOG_CHUNK,
            };
            let (data, next_offset, size) = match ask(&self.head, self.node, request).await {
                Ok(AgentReply::LogChunk {
                    data,
                    next_offset,
                    size,
                }) => (data, next_offset, size),
                Ok(other) => {
                    self.done = true;
                    return Some(Err(format!("unexpected answer {other:?}")));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            self.next = LogStart::Offset(next_offset);
            if !data.is_empty() {
                return Some(Ok(data));
            }
            if !self.follow && next_offset >= size {
                self.done = true;
                return None;
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

/// Ray's `GET /api/v0/logs/{file,stream}`.
pub(super) async fn get_log(d: &Dashboard, media: &str, query: &[(String, String)]) -> Response {
    let follow = match media {
        "file" => false,
        "stream" => true,
        other => {
            return reply_error(
                StatusCode::BAD_REQUEST,
                format!("Invalid media type: {other}"),
            )
        }
    };
    let lines: i64 = match get(query, "lines").map(str::parse).transpose() {
        Ok(l) => l.unwrap_or(DEFAULT_LINES),
        Err(_) => return reply_error(StatusCode::BAD_REQUEST, "lines must be an integer".into()),
    };
    let interval = match get(query, "interval").map(str::parse::<f64>).transpose() {
        Ok(i) => Duration::from_secs_f64(i.unwrap_or(1.0).clamp(0.05, 60.0)),
        Err(_) => return reply_error(StatusCode::BAD_REQUEST, "interval must be a number".into()),
    };
    let (node, filename) = match resolve(d, query).await {
        Ok(r) => r,
        Err(e) => return (StatusCode::NOT_FOUND, e).into_response(),
    };
    let mut reader = Reader {
        head: d.head.clone(),
        node,
        filename,
        // Negative: the whole file, as Ray's `--tail -1`.
        next: u64::try_from(lines).map_or(LogStart::Offset(0), LogStart::TailLines),
        follow,
        interval,
        done: false,
    };
    // The first piece decides the status, as Ray's: an unreadable file is a 500.
    let first = match reader.next_piece().await {
        Some(Err(e)) => return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Some(Ok(data)) => Some(data),
        None => None,
    };
    let rest = futures_util::stream::unfold((first, reader), |(first, mut reader)| async move {
        if let Some(data) = first {
            return Some((Ok::<_, std::io::Error>(data), (None, reader)));
        }
        match reader.next_piece().await? {
            Ok(data) => Some((Ok(data), (None, reader))),
            // Headers are gone: end the response short, as Ray closes it.
            Err(e) => Some((Err(std::io::Error::other(e)), (None, reader))),
        }
    });
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(rest),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_fall_into_rays_categories() {
        let v = categorize(vec![
            "worker-1a-01-77.out".into(),
            "worker-1a-01-77.err".into(),
            "rayish-node-12.log".into(),
            "rayish-head-11.log".into(),
            "other.txt".into(),
        ]);
        assert_eq!(v["worker_out"], json!(["worker-1a-01-77.out"]));
        assert_eq!(v["worker_err"], json!(["worker-1a-01-77.err"]));
        assert_eq!(v["raylet"], json!(["rayish-node-12.log"]));
        assert_eq!(v["gcs_server"], json!(["rayish-head-11.log"]));
        assert_eq!(v["internal"], json!(["other.txt"]));
    }

    #[test]
    fn worker_logs_are_found_by_exact_pid() {
        assert!(is_worker_log_of("worker-0a1b-00ff-1234.out", 1234, "out"));
        assert!(!is_worker_log_of("worker-0a1b-00ff-11234.out", 1234, "out"));
        assert!(!is_worker_log_of("worker-0a1b-00ff-1234.err", 1234, "out"));
        assert!(!is_worker_log_of("rayish-node-1234.out", 1234, "out"));
    }

    #[test]
    fn node_ids_are_32_hex_digits() {
        assert!(parse_node_id(&format!("{:032x}", 7u128)).is_ok());
        assert!(parse_node_id("7").is_err());
        assert!(parse_node_id("zz").is_err());
    }
}
