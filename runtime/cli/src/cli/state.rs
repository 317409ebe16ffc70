//! `rayish list`, `rayish get` and `rayish summary`: Ray's state CLI, as a client of
//! the head's state API (`/api/v0/...` on the dashboard port), so they print what
//! Ray's own `ray list` would.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use rayish_core::dashboard::state_api::{Resource, DEFAULT_LIMIT};
use rayish_core::session::{read_cluster_record, temp_root};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// Where and how to reach the dashboard.
#[derive(Args, Debug)]
pub struct ApiArgs {
    /// The dashboard, http://HOST:PORT (default: $RAYISH_ADDRESS or $RAY_ADDRESS if
    /// it is one, else the cluster started on this machine).
    #[arg(long)]
    address: Option<String>,
    /// The cluster token (default: $RAYISH_TOKEN, else the one recorded on this machine).
    #[arg(long, env = "RAYISH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Root for sessions (default /tmp/rayish or $RAYISH_TEMP_DIR).
    #[arg(long)]
    temp_dir: Option<PathBuf>,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// Output formats, as Ray's.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// Ray's default, a table.
    Default,
    /// A table.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Arguments of `rayish list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// nodes, jobs, tasks, actors, objects, workers or placement-groups.
    resource: String,
    /// KEY=VALUE or KEY!=VALUE; repeat for more (all must hold).
    #[arg(long)]
    filter: Vec<String>,
    /// Rows to print at most.
    #[arg(long, default_value_t = DEFAULT_LIMIT)]
    limit: usize,
    /// Every column, not only the main ones.
    #[arg(long)]
    detail: bool,
    /// How to print.
    #[arg(long, value_enum, default_value = "default")]
    format: Format,
    #[command(flatten)]
    api: ApiArgs,
}

/// Arguments of `rayish get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// nodes, tasks, actors, objects, workers or placement-groups.
    resource: String,
    /// The id.
    id: String,
    #[command(flatten)]
    api: ApiArgs,
}

/// Arguments of `rayish summary`.
#[derive(Args, Debug)]
pub struct SummaryArgs {
    /// tasks, actors or objects.
    resource: String,
    #[command(flatten)]
    api: ApiArgs,
}

/// The resource as the API path names it (`placement-groups` on the command line).
fn resource_path(name: &str) -> Result<(Resource, String)> {
    let path = name.replace('-', "_");
    let resource = Resource::from_path(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((resource, path))
}

/// A client of one dashboard.
pub(super) struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
    timeout: Duration,
}

impl Api {
    pub(super) fn new(args: &ApiArgs) -> Result<Self> {
        let root = args.temp_dir.clone().unwrap_or_else(temp_root);
        let record = read_cluster_record(&root);
        // Either variable may also hold a cluster (QUIC) address, which a driver
        // reads: only an http one names a dashboard.
        let from_env = ["RAYISH_ADDRESS", "RAY_ADDRESS"]
            .iter()
            .filter_map(|v| std::env::var(v).ok())
            .find(|a| a.starts_with("http://") || a.starts_with("https://"));
        let base = match args
            .address
            .clone()
            .or(from_env)
            .or_else(|| record.as_ref().and_then(|r| r.dashboard.clone()))
        {
            Some(a) if a.contains("://") => a,
            Some(a) => format!("http://{a}"),
            None => bail!(
                "no dashboard found on this machine; pass --address http://HEAD:8265 \
                 (the head prints it when it starts)"
            ),
        };
        let base = base.trim_end_matches('/').to_string();
        if base.starts_with("https://") {
            bail!("https dashboards are not supported; use http://");
        }
        let token = args
            .token
            .clone()
            .or_else(|| {
                record
                    .filter(|r| r.dashboard.as_deref() == Some(base.as_str()))
                    .map(|r| r.token)
            })
            .context("no token: pass --token or set RAYISH_TOKEN")?;
        let timeout = Duration::from_secs(args.timeout);
        let agent = ureq::AgentBuilder::new().timeout(timeout).build();
        Ok(Api {
            base,
            token,
            agent,
            timeout,
        })
    }

    /// A GET of `path` with `query` and the token, and its URL (for messages).
    fn request(
        &self,
        agent: &ureq::Agent,
        path: &str,
        query: &[(&str, String)],
    ) -> (String, ureq::Request) {
        let (url, mut req) = self.call_with(agent, "GET", path);
        for (k, v) in query {
            req = req.query(k, v);
        }
        (url, req)
    }

    fn call_with(&self, agent: &ureq::Agent, method: &str, path: &str) -> (String, ureq::Request) {
        let url = format!("{}{path}", self.base);
        let req = agent
            .request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token));
        (url, req)
    }

    /// Sends `method` to `path` with `body` (JSON, bytes, or nothing); the answer's
    /// body, or the server's message for an error status.
    pub(super) fn send(&self, method: &str, path: &str, body: Body<'_>) -> Result<String> {
        let (url, req) = self.call_with(&self.agent, method, path);
        let answer = match body {
            Body::None => req.call(),
            Body::Json(v) => req
                .set("Content-Type", "application/json")
                .send_string(&v.to_string()),
            Body::Bytes(b) => req
                .set("Content-Type", "application/octet-stream")
                .send_bytes(b),
        };
        match answer {
            Ok(resp) => resp.into_string().context("reading the answer"),
            Err(e) => Err(refusal(&url, e)),
        }
    }

    /// Whether `path` answers 200 (`false` for a 404).
    pub(super) fn exists(&self, path: &str) -> Result<bool> {
        let (url, req) = self.call_with(&self.agent, "GET", path);
        match req.call() {
            Ok(_) => Ok(true),
            Err(ureq::Error::Status(404, _)) => Ok(false),
            Err(e) => Err(refusal(&url, e)),
        }
    }

    /// The WebSocket URL of `path` and the header that carries the token.
    pub(super) fn websocket(&self, path: &str) -> (String, String) {
        let url = format!("{}{path}", self.base);
        let url = url.replacen("http://", "ws://", 1);
        (url, format!("Bearer {}", self.token))
    }

    /// GETs `path`: its body as bytes.
    pub(super) fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let (url, req) = self.call_with(&self.agent, "GET", path);
        match req.call() {
            Ok(resp) => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes)
                    .context("reading the answer")?;
                Ok(bytes)
            }
            Err(e) => Err(refusal(&url, e)),
        }
    }

    /// The dashboard's URL.
    pub(super) fn base(&self) -> &str {
        &self.base
    }

    /// GETs `path` with `query` and returns the body to read as it comes, without
    /// the overall timeout (a followed log has no end).
    pub(super) fn stream(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Box<dyn std::io::Read + Send + Sync>> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(self.timeout)
            .build();
        let (url, req) = self.request(&agent, path, query);
        match req.call() {
            Ok(resp) => Ok(resp.into_reader()),
            Err(e) => Err(refusal(&url, e)),
        }
    }

    /// GETs `path` with `query`; the `data.result` of Ray's envelope.
    pub(super) fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        let (url, req) = self.request(&self.agent, path, query);
        let body: Value = match req.call() {
            Ok(resp) => {
                let text = resp.into_string().context("reading the answer")?;
                serde_json::from_str(&text).context("the answer is not JSON")?
            }
            Err(e) => return Err(refusal(&url, e)),
        };
        if body["result"] != Value::Bool(true) {
            bail!("{url}: {}", body["msg"]);
        }
        Ok(body["data"]["result"].clone())
    }
}

/// What a request carries.
pub(super) enum Body<'a> {
    /// Nothing.
    None,
    /// A JSON document.
    Json(Value),
    /// Raw bytes.
    Bytes(&'a [u8]),
}

/// The error of a failed request: the server's message (Ray's envelope's `msg`, or
/// the body) for an HTTP error status.
fn refusal(url: &str, e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Status(code, resp) => {
            let text = resp.into_string().unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["msg"].as_str().map(str::to_string))
                .unwrap_or(text);
            anyhow::anyhow!("{url}: {code}: {}", msg.trim())
        }
        e => anyhow::anyhow!("{url}: {e}"),
    }
}

/// `key=value` or `key!=value` (Ray's `--filter`).
fn parse_filter(f: &str) -> Result<(String, &'static str, String)> {
    if let Some((k, v)) = f.split_once("!=") {
        return Ok((k.trim().to_string(), "!=", v.trim().to_string()));
    }
    if let Some((k, v)) = f.split_once('=') {
        return Ok((k.trim().to_string(), "=", v.trim().to_string()));
    }
    bail!("filter {f:?} is neither KEY=VALUE nor KEY!=VALUE")
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}: {}", cell(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// Rows as a table, columns in Ray's order.
fn table(resource: Resource, rows: &[Value], detail: bool) -> String {
    let columns: Vec<&str> = resource
        .columns()
        .iter()
        .filter(|(_, d, _)| detail || !d)
        .map(|(name, _, _)| *name)
        .filter(|name| rows.iter().any(|r| r.get(*name).is_some()))
        .collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let header: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
    aligned(&header, &cells)
}

/// `header` and `rows` as left-aligned columns two spaces apart, one line each
/// (the table layout of Ray's CLI), every line ending in a newline.
pub(super) fn aligned(header: &[String], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for values in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        let line = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Runs `rayish list`.
pub fn list(args: ListArgs) -> Result<()> {
    let (resource, path) = resource_path(&args.resource)?;
    let api = Api::new(&args.api)?;
    let mut query = vec![
        ("limit", args.limit.to_string()),
        ("detail", args.detail.to_string()),
        ("timeout", args.api.timeout.to_string()),
    ];
    for f in &args.filter {
        let (k, p, v) = parse_filter(f)?;
        query.push(("filter_keys", k));
        query.push(("filter_predicates", p.to_string()));
        query.push(("filter_values", v));
    }
    let answer = api.get(&format!("/api/v0/{path}"), &query)?;
    let rows = answer["result"].as_array().cloned().unwrap_or_default();
    if let Some(warnings) = answer["warnings"].as_array() {
        for w in warnings.iter().filter_map(Value::as_str) {
            eprintln!("warning: {w}");
        }
    }
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(&rows)?),
        Format::Default | Format::Table => {
            let matched = answer["num_filtered"].as_u64().unwrap_or(0);
            println!("Total: {} (of {matched} matching)", rows.len());
            println!();
            print!("{}", table(resource, &rows, args.detail));
        }
    }
    Ok(())
}

/// The id column of a resource, as Ray's `ray get` filters on it.
fn id_column(resource: Resource) -> Result<&'static str> {
    Ok(match resource {
        Resource::Nodes => "node_id",
        Resource::Tasks => "task_id",
        Resource::Actors => "actor_id",
        Resource::Objects => "object_id",
        Resource::Workers => "worker_id",
        Resource::PlacementGroups => "placement_group_id",
        Resource::Jobs => "job_id",
    })
}

/// Runs `rayish get`.
pub fn get(args: GetArgs) -> Result<()> {
    let (resource, path) = resource_path(&args.resource)?;
    let api = Api::new(&args.api)?;
    let query = vec![
        ("detail", "true".to_string()),
        (
            "limit",
            rayish_core::dashboard::state_api::MAX_LIMIT.to_string(),
        ),
        ("filter_keys", id_column(resource)?.to_string()),
        ("filter_predicates", "=".to_string()),
        ("filter_values", args.id.clone()),
    ];
    let answer = api.get(&format!("/api/v0/{path}"), &query)?;
    let rows = answer["result"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        bail!("no {} with id {}", args.resource, args.id);
    }
    print!("{}", serde_yaml_ng::to_string(&rows)?);
    Ok(())
}

/// Runs `rayish summary`.
pub fn summary(args: SummaryArgs) -> Result<()> {
    let path = match args.resource.as_str() {
        r @ ("tasks" | "actors" | "objects") => r,
        other => bail!("no summary of {other:?}: one of tasks, actors, objects"),
    };
    let api = Api::new(&args.api)?;
    let answer = api.get(
        &format!("/api/v0/{path}/summarize"),
        &[("timeout", args.api.timeout.to_string())],
    )?;
    let cluster = &answer["result"]["node_id_to_summary"]["cluster"];
    let summary = cluster["summary"].as_object().cloned().unwrap_or_default();
    for (key, value) in cluster.as_object().into_iter().flatten() {
        if key != "summary" && key != "summary_by" {
            println!("{key}: {}", cell(value));
        }
    }
    println!();
    let rows: Vec<Vec<String>> = summary
        .iter()
        .map(|(name, s)| {
            let mut row = vec![name.clone()];
            match path {
                "tasks" => {
                    row.push(cell(&s["type"]));
                    row.push(cell(&s["state_counts"]));
                }
                "actors" => row.push(cell(&s["state_counts"])),
                _ => {
                    row.push(cell(&s["total_objects"]));
                    row.push(format!("{:.3}", s["total_size_mb"].as_f64().unwrap_or(0.0)));
                    row.push(cell(&s["ref_type_counts"]));
                }
            }
            row
        })
        .collect();
    let header: &[&str] = match path {
        "tasks" => &["FUNC_OR_CLASS_NAME", "TYPE", "STATE_COUNTS"],
        "actors" => &["CLASS_NAME", "STATE_COUNTS"],
        _ => &[
            "CALLSITE",
            "TOTAL_OBJECTS",
            "TOTAL_SIZE_MB",
            "REF_TYPE_COUNTS",
        ],
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    print!("{}", aligned(&header, &rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_as_rays() {
        assert_eq!(
            parse_filter("state=FAILED").expect("filter"),
            ("state".into(), "=", "FAILED".into())
        );
        assert_eq!(
            parse_filter("name != f").expect("filter"),
            ("name".into(), "!=", "f".into())
        );
        assert!(parse_filter("state").is_err());
    }
}
