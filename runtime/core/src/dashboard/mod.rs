//! The head's HTTP server on the dashboard port (Ray's 8265): the web pages
//! (`ui/index.html`), Ray's state API (`/api/v0/...`, [`state_api`]), its log API
//! ([`logs`]) and task timeline ([`timeline`]), its version and authentication
//! endpoints, and its Jobs API ([`jobs_api`]), so that Ray's own `ray list`, `ray get`,
//! `ray summary` and `ray job` work against a rayish head.
//!
//! Every endpoint but the public ones (`/`, `/api/healthz`,
//! `/api/authentication_mode`, `/api/authenticate`) needs the cluster token, as
//! Ray's token authentication asks for it: `Authorization: Bearer <token>` (or
//! `X-Ray-Authorization`), or the `ray-authentication-token` cookie a browser gets
//! from `POST /api/authenticate` or from opening `/?token=<token>` once. A missing
//! token is a 401, a wrong one a 403; a malformed request a 400 with a message. One
//! middleware layer checks the token for every guarded route.
//!
//! The head's tables are read by one message to its task, which copies the rows
//! out ([`crate::head::view`]); filtering and encoding happen here.

pub mod jobs_api;
pub mod logs;
pub mod state_api;
pub mod timeline;

use crate::head::view::{StateQuery, StateRows};
use crate::head::HeadHandle;
use crate::jobs::JobManager;
use crate::metrics::BearerToken;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{json, Value};
use state_api::{BadRequest, Holders, ListOptions, NodeIps, Resource};
use std::net::SocketAddr;
use std::time::Duration;

/// The cookie a browser keeps the token in (Ray's name).
pub const TOKEN_COOKIE: &str = "ray-authentication-token";

/// The Jobs API version this server speaks (Ray's `CURRENT_VERSION`).
const API_VERSION: &str = "4";
/// The Ray release whose HTTP APIs this server follows; Ray's clients check it.
pub const RAY_API_VERSION: &str = "2.60.0";

/// How long a request waits for the head before answering 503.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Dashboard {
    auth: BearerToken,
    head: HeadHandle,
    session_name: String,
    /// The head's jobs; `None` if its job directory could not be opened.
    jobs: Option<JobManager>,
    /// The head's address, as `JobDetails` show a driver's node.
    head_ip: String,
    /// The head's starts on its storage, if it keeps one.
    head_starts: Option<crate::protocol::HeadStarts>,
}

/// Binds the dashboard's socket.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// What the dashboard serves beside the head's tables.
pub struct DashboardParts {
    /// The session directory's name (Ray's `session_name`).
    pub session_name: String,
    /// The head's jobs, if it takes them.
    pub jobs: Option<JobManager>,
    /// The head's address.
    pub head_ip: String,
    /// The head's starts on its storage (this one included), if it keeps one.
    pub head_starts: Option<crate::protocol::HeadStarts>,
}

/// Serves the dashboard on `listener` until the process ends.
pub fn serve(
    listener: tokio::net::TcpListener,
    token: &str,
    head: HeadHandle,
    parts: DashboardParts,
) {
    let state = Dashboard {
        auth: BearerToken::new(token),
        head,
        session_name: parts.session_name,
        jobs: parts.jobs,
        head_ip: parts.head_ip,
        head_starts: parts.head_starts,
    };
    // Everything but the sign-in pages needs the token: checked once, here, so no
    // endpoint can forget it.
    let guarded = axum::Router::new()
        .route("/api/version", get(version))
        .route("/api/v0/{resource}", get(list))
        .route("/api/v0/{resource}/summarize", get(summarize))
        .route("/api/v0/tasks/timeline", get(tasks_timeline))
        .route("/api/rayish/node_usage", get(node_usage))
        .route("/api/rayish/user_metrics", get(user_metrics))
        .route("/api/rayish/head", get(head_info))
        .route("/api/v0/logs", get(list_logs))
        .route("/api/v0/logs/{media}", get(get_log))
        .route("/api/jobs/", get(jobs_api::list).post(jobs_api::submit))
        .route("/api/jobs", get(jobs_api::list).post(jobs_api::submit))
        .route(
            "/api/jobs/{id}",
            get(jobs_api::get).delete(jobs_api::delete),
        )
        .route("/api/jobs/{id}/stop", post(jobs_api::stop))
        .route("/api/jobs/{id}/logs", get(jobs_api::logs))
        .route("/api/jobs/{id}/logs/tail", get(jobs_api::tail))
        .route(
            "/api/rayish/jobs/{id}/files/{*path}",
            get(jobs_api::fetch_file),
        )
        .route(
            "/api/packages/{protocol}/{name}",
            get(jobs_api::package_exists)
                .put(jobs_api::package_upload)
                // The upload handler streams to disk and enforces the package limit.
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    let app = axum::Router::new()
        .route("/", get(index))
        .route("/api/healthz", get(|| async { "success" }))
        .route("/api/authentication_mode", get(authentication_mode))
        .route("/api/authenticate", post(authenticate))
        .merge(guarded)
        .fallback(|| async { reply_error(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("the dashboard stopped: {e}");
        }
    });
}

/// The token a request bears: from the `Authorization` or `X-Ray-Authorization`
/// header, else from the cookie.
fn bearer(headers: &HeaderMap) -> Option<String> {
    for name in [header::AUTHORIZATION.as_str(), "x-ray-authorization"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(v.strip_prefix("Bearer ").unwrap_or(v).trim().to_string());
        }
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == TOKEN_COOKIE).then(|| v.to_string())
        })
}

/// Ray's refusal (401 without a token, 403 with a wrong one), unless `headers` bear
/// the cluster token.
fn refusal(auth: &BearerToken, headers: &HeaderMap) -> Option<Response> {
    match bearer(headers) {
        None => Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "Unauthorized: Missing authentication token\n",
            )
                .into_response(),
        ),
        Some(t) if auth.admits_token(&t) => None,
        Some(_) => Some(
            (
                StatusCode::FORBIDDEN,
                "Forbidden: Invalid authentication token\n",
            )
                .into_response(),
        ),
    }
}

/// The guard of every endpoint but the sign-in pages.
async fn require_token(
    State(d): State<Dashboard>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match refusal(&d.auth, request.headers()) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

fn token_cookie(token: &str) -> String {
    format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000")
}

/// Ray's reply envelope: `{"result": ok, "msg": ..., "data": {"result": ...}}`.
fn reply(result: Value) -> Response {
    axum::Json(json!({"result": true, "msg": "", "data": {"result": result}})).into_response()
}

fn reply_error(status: StatusCode, msg: String) -> Response {
    (
        status,
        axum::Json(json!({"result": false, "msg": msg, "data": {}})),
    )
        .into_response()
}

impl From<BadRequest> for Response {
    fn from(e: BadRequest) -> Response {
        reply_error(StatusCode::BAD_REQUEST, e.0)
    }
}

async fn authentication_mode() -> Response {
    axum::Json(json!({"authentication_mode": "token"})).into_response()
}

/// Ray's `POST /api/authenticate`: a valid token in the header earns the cookie.
async fn authenticate(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&d.auth, &headers) {
        return refused;
    }
    let Some(token) = bearer(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    (
        [(header::SET_COOKIE, token_cookie(&token))],
        axum::Json(json!({"status": "authenticated", "message": "Token is valid"})),
    )
        .into_response()
}

/// `/?token=...` (the link `rayish start` prints) sets the cookie and drops the
/// token from the address bar and history; without a valid cookie, a login form.
async fn index(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if let Some((_, token)) = query.iter().find(|(k, _)| k == "token") {
        if d.auth.admits_token(token) {
            return (
                [
                    (header::SET_COOKIE, token_cookie(token)),
                    (header::REFERRER_POLICY, "no-referrer".to_string()),
                ],
                // A page of this origin moves on, not a redirect: the cookie is
                // `SameSite=Strict`, so a redirect at the end of a link followed from
                // elsewhere would arrive without it.
                Html(SIGNED_IN_PAGE),
            )
                .into_response();
        }
        return (
            StatusCode::FORBIDDEN,
            Html(login_page("That token is not this cluster's.")),
        )
            .into_response();
    }
    if refusal(&d.auth, &headers).is_some() {
        return (StatusCode::UNAUTHORIZED, Html(login_page(""))).into_response();
    }
    Html(INDEX_PAGE).into_response()
}

const SIGNED_IN_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>rayish</title></head>
<body><p>Signed in; opening the dashboard.</p>
<script>location.replace("/" + location.hash);</script></body></html>
"#;

fn login_page(message: &str) -> String {
    LOGIN_PAGE.replace("{message}", message)
}

const LOGIN_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>rayish: sign in</title></head>
<body>
<h1>rayish</h1>
<p>This cluster needs its token (<code>rayish start</code> printed a link with it;
it is also in the head's token file).</p>
<p id="message">{message}</p>
<form id="login"><input id="token" type="password" autocomplete="off" size="40">
<button type="submit">Sign in</button></form>
<script>
document.getElementById("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const token = document.getElementById("token").value.trim();
  const r = await fetch("/api/authenticate", {method: "POST",
    headers: {"Authorization": "Bearer " + token}});
  if (r.ok) { location.reload(); }
  else { document.getElementById("message").textContent = "That token is not this cluster's."; }
});
</script>
</body></html>
"#;

/// The dashboard's one page: plain HTML, CSS and JavaScript, built into the binary
/// (no Node toolchain, no files to install); it reads the JSON APIs above.
const INDEX_PAGE: &str = include_str!("ui/index.html");

/// Ray's `GET /api/version`, which Ray's clients check first.
async fn version(State(d): State<Dashboard>) -> Response {
    axum::Json(json!({
        "version": API_VERSION,
        "ray_version": RAY_API_VERSION,
        "ray_commit": "",
        "session_name": d.session_name,
        "rayish_version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

/// One table's rows from the head.
async fn rows(head: &HeadHandle, query: StateQuery) -> Result<StateRows, Response> {
    match tokio::time::timeout(HEAD_TIMEOUT, head.state(query)).await {
        Ok(Some(rows)) => Ok(rows),
        Ok(None) => Err(reply_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the head has stopped".into(),
        )),
        Err(_) => Err(reply_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the head did not answer in time".into(),
        )),
    }
}

/// Node addresses by id.
async fn node_ips(head: &HeadHandle) -> Result<NodeIps, Response> {
    let mut ips = NodeIps::new();
    if let StateRows::Nodes(nodes) = rows(head, StateQuery::Nodes).await? {
        for n in nodes {
            ips.insert(n.status.node_id, n.status.address.ip().to_string());
        }
    }
    Ok(ips)
}

/// Node addresses by id, and drivers' and workers' pids by connection.
async fn lookups(head: &HeadHandle) -> Result<(NodeIps, Holders), Response> {
    let ips = node_ips(head).await?;
    let mut holders = Holders::new();
    if let StateRows::Workers(workers) = rows(head, StateQuery::Workers).await? {
        for w in workers {
            holders.insert(w.peer, (w.pid, w.is_driver, w.node));
        }
    }
    Ok((ips, holders))
}

fn query_of(resource: Resource) -> Option<StateQuery> {
    Some(match resource {
        Resource::Nodes => StateQuery::Nodes,
        Resource::Jobs => StateQuery::Jobs,
        Resource::Tasks => StateQuery::Tasks,
        Resource::Actors => StateQuery::Actors,
        Resource::Workers => StateQuery::Workers,
        Resource::Objects => StateQuery::Objects,
        // None exist yet: placement groups come with their own issue.
        Resource::PlacementGroups => return None,
    })
}

/// Ray's `GET /api/v0/<resource>`.
async fn list(
    State(d): State<Dashboard>,
    Path(resource): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let resource = match Resource::from_path(&resource) {
        Ok(r) => r,
        Err(e) => return reply_error(StatusCode::NOT_FOUND, e.0),
    };
    let opts = match ListOptions::from_query(&query) {
        Ok(o) => o,
        Err(e) => return e.into(),
    };
    let Some(state_query) = query_of(resource) else {
        return match state_api::list(resource, Vec::new(), &opts, 0, Vec::new()) {
            Ok(v) => reply(v),
            Err(e) => e.into(),
        };
    };
    let (ips, holders) = if matches!(resource, Resource::Workers | Resource::Objects) {
        match lookups(&d.head).await {
            Ok(l) => l,
            Err(r) => return r,
        }
    } else {
        Default::default()
    };
    let rows = match rows(&d.head, state_query).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let submitted = match (&d.jobs, resource) {
        (Some(jobs), Resource::Jobs) => Some(jobs.list()),
        _ => None,
    };
    let head_ip = d.head_ip.clone();
    // A full task log is 100,000 rows: encode them off the server's threads.
    let answer = tokio::task::spawn_blocking(move || {
        let (dropped, warnings) = match &rows {
            StateRows::Tasks(t) if t.dropped > 0 => (
                t.dropped,
                vec![format!(
                    "{} ended tasks were dropped from the head's task event log, which keeps the \
                     last {} (RAY_task_events_max_num_task_in_gcs); the oldest go first",
                    t.dropped, t.capacity
                )],
            ),
            _ => (0, Vec::new()),
        };
        let json_rows = match (&rows, &submitted) {
            (StateRows::Jobs(drivers), Some(jobs)) => {
                jobs_api::all_details(jobs, drivers, &head_ip)
            }
            _ => state_api::to_json(&rows, &holders, &ips),
        };
        state_api::list(resource, json_rows, &opts, dropped, warnings)
    })
    .await;
    match answer {
        Ok(Ok(v)) => reply(v),
        Ok(Err(e)) => e.into(),
        Err(e) => reply_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Ray's `GET /api/v0/tasks/timeline[?job_id=&download=1]`: the Chrome trace of the
/// tasks the head lists (see [`timeline`]).
async fn tasks_timeline(
    State(d): State<Dashboard>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let param = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let job = match param("job_id").filter(|j| !j.is_empty()) {
        None => None,
        Some(j) => match u128::from_str_radix(j, 16) {
            Ok(j) => Some(crate::ids::JobId(j)),
            Err(_) => {
                return reply_error(StatusCode::BAD_REQUEST, format!("{j:?} is not a job id"))
            }
        },
    };
    let ips = match node_ips(&d.head).await {
        Ok(ips) => ips,
        Err(r) => return r,
    };
    let tasks = match rows(&d.head, StateQuery::Tasks).await {
        Ok(StateRows::Tasks(t)) => t,
        Ok(_) => return reply_error(StatusCode::INTERNAL_SERVER_ERROR, "unexpected rows".into()),
        Err(r) => return r,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let trace = tokio::task::spawn_blocking(move || {
        timeline::chrome_trace(&tasks.rows, &ips, job, now).to_string()
    })
    .await
    .unwrap_or_else(|_| "[]".into());
    let mut response = ([(header::CONTENT_TYPE, "application/json")], trace).into_response();
    if param("download") == Some("1") {
        let name = format!(
            "attachment; filename=\"timeline-{}-{now}.json\"",
            param("job_id").unwrap_or("all")
        );
        if let Ok(v) = name.parse() {
            response
                .headers_mut()
                .insert(header::CONTENT_DISPOSITION, v);
        }
    }
    response
}

/// `GET /api/rayish/node_usage`: each live node's host and object store use (asked
/// of the nodes, all at once) with its logical resources, for the overview page.
async fn node_usage(State(d): State<Dashboard>) -> Response {
    let nodes = match rows(&d.head, StateQuery::Nodes).await {
        Ok(StateRows::Nodes(nodes)) => nodes,
        Ok(_) => return reply_error(StatusCode::INTERNAL_SERVER_ERROR, "unexpected rows".into()),
        Err(r) => return r,
    };
    let live: Vec<_> = nodes.into_iter().filter(|n| n.status.alive).collect();
    let asks = live.iter().map(|n| {
        let head = d.head.clone();
        let id = n.status.node_id;
        async move {
            tokio::time::timeout(
                HEAD_TIMEOUT,
                head.ask_node(id, crate::protocol::AgentRequest::Usage),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut out = serde_json::Map::new();
    for (n, answer) in live.iter().zip(answers) {
        let mut entry = match answer {
            Ok(Some(crate::protocol::AgentReply::Usage(u))) => {
                serde_json::to_value(u).unwrap_or(Value::Null)
            }
            Ok(Some(crate::protocol::AgentReply::Error(e))) => json!({ "error": e }),
            _ => json!({ "error": "the node did not answer" }),
        };
        if let Value::Object(m) = &mut entry {
            let resources = |r: &crate::resources::ResourceSet| -> Value {
                r.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()
            };
            m.insert("resources_total".into(), resources(&n.status.total));
            m.insert("resources_available".into(), resources(&n.status.available));
            m.insert("running_tasks".into(), json!(n.status.running_tasks));
            m.insert("workers".into(), json!(n.status.load.workers));
        }
        out.insert(n.status.node_id.to_string(), entry);
    }
    reply(Value::Object(out))
}

/// `GET /api/rayish/head`: the head's starts on its storage (how often it was
/// restarted, when it first and last began; `null` for a head without storage), for
/// the overview page. Fixed at the head's start, so it does not ask the head.
async fn head_info(State(d): State<Dashboard>) -> Response {
    reply(json!({
        "head_ip": d.head_ip,
        "head_starts": d.head_starts.map(|s| json!({
            "count": s.count,
            "restarts": s.restarts(),
            "first_start_time_ms": s.first_ms,
            "last_start_time_ms": s.last_ms,
        })),
    }))
}

/// `GET /api/rayish/user_metrics`: the drivers' own metrics (`rayish::metrics`,
/// e.g. `rayish-faces`' images done by outcome), summed over drivers as the head's
/// metrics endpoint exports them, for the jobs page.
async fn user_metrics(State(d): State<Dashboard>) -> Response {
    match rows(&d.head, StateQuery::UserMetrics).await {
        Ok(StateRows::UserMetrics(series)) => reply(Value::Array(
            series
                .into_iter()
                .map(|s| {
                    json!({
                        "name": s.name,
                        "description": s.description,
                        "kind": s.kind,
                        "tags": s
                            .tags
                            .into_iter()
                            .map(|(k, v)| (k, Value::String(v)))
                            .collect::<serde_json::Map<_, _>>(),
                        "value": s.value,
                        "count": s.count,
                    })
                })
                .collect(),
        )),
        Ok(_) => reply_error(StatusCode::INTERNAL_SERVER_ERROR, "unexpected rows".into()),
        Err(r) => r,
    }
}

/// Ray's `GET /api/v0/logs` (see [`logs`]).
async fn list_logs(
    State(d): State<Dashboard>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    logs::list(&d, &query).await
}

/// Ray's `GET /api/v0/logs/{file,stream}` (see [`logs`]).
async fn get_log(
    State(d): State<Dashboard>,
    Path(media): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    logs::get_log(&d, &media, &query).await
}

/// Ray's `GET /api/v0/<tasks|actors|objects>/summarize`.
async fn summarize(State(d): State<Dashboard>, Path(resource): Path<String>) -> Response {
    match resource.as_str() {
        "tasks" => match rows(&d.head, StateQuery::Tasks).await {
            Ok(StateRows::Tasks(t)) => {
                let n = t.rows.len();
                let summary =
                    tokio::task::spawn_blocking(move || state_api::summarize_tasks(&t.rows))
                        .await
                        .unwrap_or(Value::Null);
                reply(state_api::summary_response(summary, n))
            }
            Ok(_) => reply_error(StatusCode::INTERNAL_SERVER_ERROR, "unexpected rows".into()),
            Err(r) => r,
        },
        "actors" => match rows(&d.head, StateQuery::Actors).await {
            Ok(StateRows::Actors(a)) => reply(state_api::summary_response(
                state_api::summarize_actors(&a),
                a.len(),
            )),
            Ok(_) => reply_error(StatusCode::INTERNAL_SERVER_ERROR, "unexpected rows".into()),
            Err(r) => r,
        },
        "objects" => {
            let (ips, holders) = match lookups(&d.head).await {
                Ok(l) => l,
                Err(r) => return r,
            };
            match rows(&d.head, StateQuery::Objects).await {
                Ok(rows) => {
                    let json_rows = state_api::to_json(&rows, &holders, &ips);
                    let n = json_rows.len();
                    reply(state_api::summary_response(
                        state_api::summarize_objects(&json_rows),
                        n,
                    ))
                }
                Err(r) => r,
            }
        }
        other => reply_error(
            StatusCode::NOT_FOUND,
            format!("no summary of {other:?}: one of tasks, actors, objects"),
        ),
    }
}
