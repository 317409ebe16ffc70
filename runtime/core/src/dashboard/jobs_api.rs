//! Ray's Jobs API (`dashboard/modules/job/job_head.py`) over the head's
//! [`JobManager`]: submit, list, get, logs (whole, or followed over a WebSocket as
//! Ray's `tail_job_logs` reads them), stop, delete, and the working-dir package
//! upload. Shapes, paths and status codes are Ray's, so `ray job ...` and
//! `JobSubmissionClient` work unchanged; errors are plain text, as Ray's are.
//!
//! A job is found by its submission id or by its driver's job id (Ray's
//! `find_job_by_ids`); the list holds the submitted jobs, then the drivers that
//! were not submitted as jobs (Ray's `DRIVER` type).

use super::{rows, state_api, Dashboard};
use crate::head::view::{JobRow, StateQuery, StateRows};
use crate::jobs::{DeleteRefused, JobInfo, JobManager, StopOutcome, SubmitError, SubmitRequest};
use axum::body::Bytes;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

/// The most of a log `GET /api/jobs/{id}/logs` returns: its end.
const MAX_LOGS_REPLY: u64 = 64 << 20;
/// The most one WebSocket message of a followed log carries.
const TAIL_CHUNK: u64 = 256 << 10;
/// How often a follower looks for new output when no status changed.
const TAIL_POLL: Duration = Duration::from_millis(200);

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, msg.into()).into_response()
}

/// The head's jobs, or the 503 of a head that takes none.
fn manager(d: &Dashboard) -> Result<&JobManager, Box<Response>> {
    d.jobs.as_ref().ok_or_else(|| {
        Box::new(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this head does not take jobs (its job directory could not be opened; see its log)",
        ))
    })
}

/// The drivers the head knows.
async fn drivers(d: &Dashboard) -> Result<Vec<JobRow>, Response> {
    match rows(&d.head, StateQuery::Jobs).await? {
        StateRows::Jobs(j) => Ok(j),
        _ => Ok(Vec::new()),
    }
}

/// Ray's `JobDetails` of a submitted job, with its driver if one connected.
pub fn submission_details(
    job: &JobInfo,
    driver: Option<&JobRow>,
    head_ip: &str,
) -> Map<String, Value> {
    let mut m = match serde_json::to_value(job) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    m.remove("entrypoint_pid");
    m.insert("type".into(), json!("SUBMISSION"));
    m.insert(
        "job_id".into(),
        driver.map_or(Value::Null, |r| json!(r.job_id.to_string())),
    );
    m.insert(
        "driver_info".into(),
        driver.map_or(Value::Null, |r| {
            json!({
                "id": r.job_id.to_string(),
                "node_ip_address": head_ip,
                "pid": r.driver_pid.to_string(),
            })
        }),
    );
    m
}

/// Every job as Ray's `JobDetails`: submitted ones first, then drivers that were not
/// submitted (what `GET /api/jobs/` and the state API's job list answer).
pub fn all_details(jobs: &[JobInfo], drivers: &[JobRow], head_ip: &str) -> Vec<Map<String, Value>> {
    let mut out: Vec<_> = jobs
        .iter()
        .map(|j| {
            // The newest driver of the job (an entrypoint may run several).
            let driver = drivers
                .iter()
                .filter(|r| r.submission_id.as_deref() == Some(j.submission_id.as_str()))
                .max_by_key(|r| r.start_time_ms);
            submission_details(j, driver, head_ip)
        })
        .collect();
    out.extend(
        drivers
            .iter()
            .filter(|r| r.submission_id.is_none())
            .map(state_api::driver_job_json),
    );
    out
}

/// A job a request named, with the manager that has it.
struct Found {
    jobs: JobManager,
    job: JobInfo,
    driver: Option<JobRow>,
}

/// The job `key` names: a submission id, or a driver's job id.
async fn find(d: &Dashboard, key: &str) -> Result<Found, Response> {
    let jobs = manager(d).map_err(|r| *r)?.clone();
    let drivers = drivers(d).await?;
    let by_driver = drivers
        .iter()
        .find(|r| r.job_id.to_string() == key)
        .and_then(|r| r.submission_id.clone());
    let id = by_driver.as_deref().unwrap_or(key);
    let Some(job) = jobs.get(id) else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("Job {key} does not exist"),
        ));
    };
    let driver = drivers
        .into_iter()
        .filter(|r| r.submission_id.as_deref() == Some(id))
        .max_by_key(|r| r.start_time_ms);
    Ok(Found { jobs, job, driver })
}

/// `GET /api/jobs/`.
pub(super) async fn list(State(d): State<Dashboard>) -> Response {
    let jobs = match manager(&d) {
        Ok(m) => m.list(),
        Err(_) => Vec::new(),
    };
    let drivers = match drivers(&d).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    axum::Json(all_details(&jobs, &drivers, &d.head_ip)).into_response()
}

/// `POST /api/jobs/`.
pub(super) async fn submit(State(d): State<Dashboard>, body: Bytes) -> Response {
    let jobs = match manager(&d) {
        Ok(m) => m.clone(),
        Err(r) => return *r,
    };
    let req = match SubmitRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.0),
    };
    // Records are synced to disk: off the server's threads.
    match tokio::task::spawn_blocking(move || jobs.submit(req)).await {
        Ok(Ok(id)) => axum::Json(json!({"job_id": id, "submission_id": id})).into_response(),
        Ok(Err(e @ SubmitError::Store(_))) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Ok(Err(e)) => text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/jobs/{id}`.
pub(super) async fn get(State(d): State<Dashboard>, Path(key): Path<String>) -> Response {
    match find(&d, &key).await {
        Ok(f) => {
            axum::Json(submission_details(&f.job, f.driver.as_ref(), &d.head_ip)).into_response()
        }
        Err(r) => r,
    }
}

/// `POST /api/jobs/{id}/stop`: `{"stopped": false}` for a job that had already
/// ended, as Ray answers.
pub(super) async fn stop(State(d): State<Dashboard>, Path(key): Path<String>) -> Response {
    let Found { jobs, job, .. } = match find(&d, &key).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let id = job.submission_id;
    match tokio::task::spawn_blocking(move || jobs.stop(&id)).await {
        Ok(StopOutcome::NotFound) => {
            text(StatusCode::NOT_FOUND, format!("Job {key} does not exist"))
        }
        Ok(StopOutcome::AlreadyEnded) => axum::Json(json!({"stopped": false})).into_response(),
        Ok(_) => axum::Json(json!({"stopped": true})).into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `DELETE /api/jobs/{id}`: only an ended job (Ray's rule).
pub(super) async fn delete(State(d): State<Dashboard>, Path(key): Path<String>) -> Response {
    let Found { jobs, job, .. } = match find(&d, &key).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let id = job.submission_id;
    match tokio::task::spawn_blocking(move || jobs.delete(&id)).await {
        Ok(Ok(())) => axum::Json(json!({"deleted": true})).into_response(),
        Ok(Err(DeleteRefused::NotFound)) => {
            text(StatusCode::NOT_FOUND, format!("Job {key} does not exist"))
        }
        Ok(Err(DeleteRefused::NotEnded(status))) => text(
            StatusCode::BAD_REQUEST,
            format!(
                "Attempted to delete job with id '{key}', but it is in a non-terminal state \
                 {}. Stop the job first.",
                status.as_str()
            ),
        ),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Reads `path` from `offset`, at most `max` bytes.
fn read_from(path: &std::path::Path, offset: u64, max: u64) -> std::io::Result<Vec<u8>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// `GET /api/jobs/{id}/logs`: `{"logs": "..."}`, the whole log (its last 64 MiB).
pub(super) async fn logs(State(d): State<Dashboard>, Path(key): Path<String>) -> Response {
    let Found { jobs, job, .. } = match find(&d, &key).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let path = jobs.log_path(&job.submission_id);
    let read = tokio::task::spawn_blocking(move || {
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        read_from(&path, len.saturating_sub(MAX_LOGS_REPLY), MAX_LOGS_REPLY)
    })
    .await;
    match read {
        Ok(Ok(bytes)) => {
            axum::Json(json!({"logs": String::from_utf8_lossy(&bytes)})).into_response()
        }
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/jobs/{id}/logs/tail`: a WebSocket that sends the log as it grows, from
/// its start, and closes once the job has ended and everything was sent.
pub(super) async fn tail(
    State(d): State<Dashboard>,
    Path(key): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Found { jobs, job, .. } = match find(&d, &key).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    upgrade.on_upgrade(move |socket| follow(socket, jobs, job.submission_id))
}

async fn follow(mut socket: WebSocket, jobs: JobManager, id: String) {
    let path = jobs.log_path(&id);
    let mut changes = jobs.watch();
    let mut offset = 0u64;
    // The end of a UTF-8 character cut by a read, kept for the next message.
    let mut partial: Vec<u8> = Vec::new();
    loop {
        // Checked before reading: once the job has ended, what the read returns is
        // all there will be.
        let ended = jobs.get(&id).is_none_or(|j| j.status.is_terminal());
        let p = path.clone();
        let chunk = tokio::task::spawn_blocking(move || read_from(&p, offset, TAIL_CHUNK))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        if !chunk.is_empty() {
            offset += chunk.len() as u64;
            partial.extend_from_slice(&chunk);
            let text = take_text(&mut partial);
            if !text.is_empty() && socket.send(Message::Text(text.into())).await.is_err() {
                return;
            }
            continue;
        }
        if ended {
            break;
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(TAIL_POLL) => {}
            msg = socket.recv() => match msg {
                // The client went: nothing of the job depends on it.
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
    if !partial.is_empty() {
        let rest = String::from_utf8_lossy(&partial).into_owned();
        let _ = socket.send(Message::Text(rest.into())).await;
    }
    // A normal closure (1000), as Ray's server ends the stream: Ray's client reads
    // a close without a code as an abnormal one.
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}

/// The longest valid UTF-8 prefix of `buf` as text, leaving an incomplete last
/// character in `buf`; invalid bytes become U+FFFD.
fn take_text(buf: &mut Vec<u8>) -> String {
    match std::str::from_utf8(buf) {
        Ok(s) => {
            let s = s.to_string();
            buf.clear();
            s
        }
        Err(e) if e.error_len().is_none() => {
            let rest = buf.split_off(e.valid_up_to());
            let s = String::from_utf8_lossy(buf).into_owned();
            *buf = rest;
            s
        }
        Err(_) => {
            let s = String::from_utf8_lossy(buf).into_owned();
            buf.clear();
            s
        }
    }
}

/// The package a `/api/packages/{protocol}/{name}` path names, or why it names none.
fn package_name(protocol: &str, name: &str) -> Result<String, String> {
    if protocol != "gcs" {
        return Err(format!(
            "package protocol {protocol:?} is not supported: only gcs"
        ));
    }
    crate::jobs::packages::check_package_name(name).map_err(|e| e.to_string())?;
    Ok(name.to_string())
}

/// `GET /api/packages/{protocol}/{name}`: 200 if uploaded, else 404.
pub(super) async fn package_exists(
    State(d): State<Dashboard>,
    Path((protocol, name)): Path<(String, String)>,
) -> Response {
    let jobs = match manager(&d) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let name = match package_name(&protocol, &name) {
        Ok(n) => n,
        Err(why) => return text(StatusCode::BAD_REQUEST, why),
    };
    let packages = jobs.packages().clone();
    let looked_up = {
        let name = name.clone();
        tokio::task::spawn_blocking(move || packages.exists_renewed(&name)).await
    };
    let Ok(found) = looked_up else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "the lookup failed");
    };
    match found {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => text(
            StatusCode::NOT_FOUND,
            format!("Package {protocol}://{name} does not exist"),
        ),
        Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// How much of an oversized upload is read (and dropped) so that its client,
/// still sending, gets the 413 rather than a broken connection.
const DRAIN_LIMIT: u64 = 4 << 30;

/// `PUT /api/packages/{protocol}/{name}`: streams the upload to a file in the
/// package store (never the whole of it in memory), then stores it once checked
/// (see [`crate::jobs::packages`]); over the size limit, a 413.
pub(super) async fn package_upload(
    State(d): State<Dashboard>,
    Path((protocol, name)): Path<(String, String)>,
    body: axum::body::Body,
) -> Response {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let jobs = match manager(&d) {
        Ok(m) => m.clone(),
        Err(r) => return *r,
    };
    let name = match package_name(&protocol, &name) {
        Ok(n) => n,
        Err(why) => return text(StatusCode::BAD_REQUEST, why),
    };
    let limit = jobs.packages().limit() as u64;
    let staged = jobs.packages().staging_path();
    let mut file = match tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .await
    {
        Ok(f) => f,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut stream = body.into_data_stream();
    let mut received = 0u64;
    let mut failed = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                failed = Some(text(
                    StatusCode::BAD_REQUEST,
                    format!("the upload broke off: {e}"),
                ));
                break;
            }
        };
        received += chunk.len() as u64;
        if received > limit {
            // Over the limit: keep reading (and dropping) so the client hears why.
            if received > DRAIN_LIMIT {
                break;
            }
            continue;
        }
        if let Err(e) = file.write_all(&chunk).await {
            failed = Some(text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
            break;
        }
    }
    // tokio's file hands writes to a blocking thread: the last may still be in
    // flight until flushed, and the package is read back right after.
    if failed.is_none() {
        if let Err(e) = file.flush().await {
            failed = Some(text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
        }
    }
    drop(file);
    if received > limit {
        failed = Some(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the package is over the limit of {limit} bytes"),
        ));
    }
    if let Some(refused) = failed {
        let _ = tokio::fs::remove_file(&staged).await;
        return refused;
    }
    match tokio::task::spawn_blocking(move || jobs.packages().put_file(&name, &staged)).await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(e @ crate::jobs::packages::PackageError::Io { .. })) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Ok(Err(e)) => text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The most a file fetched from a job's working dir may be.
const MAX_FETCH: u64 = 1 << 30;

/// `GET /api/rayish/jobs/{id}/files/{*path}`: a file from the job's working dir on
/// the head (what a job wrote there: the faces job's `out/average.json`). The path
/// must stay inside the working dir once links are resolved.
pub(super) async fn fetch_file(
    State(d): State<Dashboard>,
    Path((key, rel)): Path<(String, String)>,
) -> Response {
    let Found { jobs, job, .. } = match find(&d, &key).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let root = jobs.working_dir(&job.submission_id);
    let read = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, (StatusCode, String)> {
        let not_found = |why: String| (StatusCode::NOT_FOUND, why);
        let root = root
            .canonicalize()
            .map_err(|e| not_found(format!("the job has no working dir: {e}")))?;
        let path = root
            .join(&rel)
            .canonicalize()
            .map_err(|e| not_found(format!("{rel}: {e}")))?;
        if !path.starts_with(&root) {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("{rel} is outside the job's working dir"),
            ));
        }
        let meta = std::fs::metadata(&path).map_err(|e| not_found(e.to_string()))?;
        if !meta.is_file() {
            return Err(not_found(format!("{rel} is not a file")));
        }
        if meta.len() > MAX_FETCH {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{rel} is over {MAX_FETCH} bytes"),
            ));
        }
        std::fs::read(&path).map_err(|e| not_found(e.to_string()))
    })
    .await;
    match read {
        Ok(Ok(bytes)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        Ok(Err((status, why))) => text(status, why),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::take_text;

    #[test]
    fn a_character_cut_by_a_read_waits_for_its_end() {
        let euro = "€".as_bytes();
        let mut buf = b"ab".to_vec();
        buf.extend_from_slice(&euro[..2]);
        assert_eq!(take_text(&mut buf), "ab");
        assert_eq!(buf, &euro[..2]);
        buf.extend_from_slice(&euro[2..]);
        assert_eq!(take_text(&mut buf), "€");
        assert!(buf.is_empty());
        let mut bad = vec![b'x', 0xff, b'y'];
        assert_eq!(take_text(&mut bad), "x\u{fffd}y");
    }
}
