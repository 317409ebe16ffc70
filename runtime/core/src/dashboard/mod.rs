//! The head's HTTP server on the dashboard port (Ray's 8265): Ray's state API
//! (`/api/v0/...`, [`state_api`]), its version and authentication endpoints, so
//! that Ray's own `ray list`, `ray get` and `ray summary` work against a rayish head.
//!
//! Every endpoint but the public ones (`/`, `/api/healthz`,
//! `/api/authentication_mode`, `/api/authenticate`) needs the cluster token, as
//! Ray's token authentication asks for it: `Authorization: Bearer <token>` (or
//! `X-Ray-Authorization`), or the `ray-authentication-token` cookie a browser gets
//! from `POST /api/authenticate` or from opening `/?token=<token>` once. A missing
//! token is a 401, a wrong one a 403; a malformed request a 400 with a message.
//!
//! The head's tables are read by one message to its task, which copies the rows
//! out ([`crate::head::view`]); filtering and encoding happen here.

pub mod state_api;

use crate::head::view::{StateQuery, StateRows};
use crate::head::HeadHandle;
use crate::metrics::BearerToken;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
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
}

/// Binds the dashboard's socket.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves the dashboard on `listener` until the process ends.
pub fn serve(
    listener: tokio::net::TcpListener,
    token: &str,
    head: HeadHandle,
    session_name: String,
) {
    let state = Dashboard {
        auth: BearerToken::new(token),
        head,
        session_name,
    };
    let app = axum::Router::new()
        .route("/", get(index))
        .route("/api/healthz", get(|| async { "success" }))
        .route("/api/authentication_mode", get(authentication_mode))
        .route("/api/authenticate", post(authenticate))
        .route("/api/version", get(version))
        .route("/api/v0/{resource}", get(list))
        .route("/api/v0/{resource}/summarize", get(summarize))
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
/// token from the address bar; without a valid cookie, a login form.
async fn index(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if let Some((_, token)) = query.iter().find(|(k, _)| k == "token") {
        if d.auth.admits_token(token) {
            return (
                [(header::SET_COOKIE, token_cookie(token))],
                Redirect::to("/"),
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

const INDEX_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>rayish</title></head>
<body>
<h1>rayish</h1>
<p>Ray's state API, as JSON:</p>
<ul>
<li><a href="/api/v0/nodes">nodes</a></li>
<li><a href="/api/v0/jobs">jobs</a></li>
<li><a href="/api/v0/tasks">tasks</a> (<a href="/api/v0/tasks/summarize">summary</a>)</li>
<li><a href="/api/v0/actors">actors</a> (<a href="/api/v0/actors/summarize">summary</a>)</li>
<li><a href="/api/v0/objects">objects</a> (<a href="/api/v0/objects/summarize">summary</a>)</li>
<li><a href="/api/v0/workers">workers</a></li>
<li><a href="/api/v0/placement_groups">placement groups</a></li>
</ul>
</body></html>
"#;

/// Ray's `GET /api/version`, which Ray's clients check first.
async fn version(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&d.auth, &headers) {
        return refused;
    }
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

/// Node addresses by id, and drivers' and workers' pids by connection.
async fn lookups(head: &HeadHandle) -> Result<(NodeIps, Holders), Response> {
    let mut ips = NodeIps::new();
    if let StateRows::Nodes(nodes) = rows(head, StateQuery::Nodes).await? {
        for n in nodes {
            ips.insert(n.status.node_id, n.status.address.ip().to_string());
        }
    }
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
    headers: HeaderMap,
    Path(resource): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if let Some(refused) = refusal(&d.auth, &headers) {
        return refused;
    }
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
        let json_rows = state_api::to_json(&rows, &holders, &ips);
        state_api::list(resource, json_rows, &opts, dropped, warnings)
    })
    .await;
    match answer {
        Ok(Ok(v)) => reply(v),
        Ok(Err(e)) => e.into(),
        Err(e) => reply_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Ray's `GET /api/v0/<tasks|actors|objects>/summarize`.
async fn summarize(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(resource): Path<String>,
) -> Response {
    if let Some(refused) = refusal(&d.auth, &headers) {
        return refused;
    }
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
