//! `rayish job submit|status|logs|stop|list|delete`: Ray's `ray job` CLI, as a client
//! of the head's Jobs API, with Ray's flags and exit codes (`submit` without
//! `--no-wait` follows the logs and exits 1 if the job FAILED). `rayish job fetch`
//! adds what Ray has no command for: copying a file a job wrote in its working dir.

use super::state::{Api, ApiArgs, Body};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `rayish job ...`.
#[derive(Args, Debug)]
pub struct JobArgs {
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Subcommand, Debug)]
enum JobCommand {
    /// Submit a job: its entrypoint (after `--`) runs on the head node.
    Submit(SubmitArgs),
    /// Print a job's status.
    Status(IdArgs),
    /// Print a job's logs (`--follow` until it ends).
    Logs(LogsArgs),
    /// Stop a job (SIGTERM to its processes, SIGKILL after the grace period).
    Stop(StopArgs),
    /// List the jobs.
    List(ListArgs),
    /// Forget an ended job: its record, working dir and log.
    Delete(IdArgs),
    /// Copy a file the job wrote in its working dir (on the head) to here.
    Fetch(FetchArgs),
}

/// Arguments of `rayish job submit`.
#[derive(Args, Debug)]
struct SubmitArgs {
    /// The id to submit under (default: one is made, raysubmit_...).
    #[arg(long)]
    submission_id: Option<String>,
    /// Ray's old name for --submission-id.
    #[arg(long, hide = true)]
    job_id: Option<String>,
    /// A YAML file with the runtime environment (working_dir, env_vars).
    #[arg(long)]
    runtime_env: Option<PathBuf>,
    /// The runtime environment as JSON; fields here win over --runtime-env's.
    #[arg(long)]
    runtime_env_json: Option<String>,
    /// A local directory to upload and run the entrypoint in (it wins over the
    /// runtime environment's working_dir).
    #[arg(long)]
    working_dir: Option<PathBuf>,
    /// Labels for the job, as a JSON object of strings.
    #[arg(long)]
    metadata_json: Option<String>,
    /// CPUs the entrypoint holds while it runs.
    #[arg(long)]
    entrypoint_num_cpus: Option<f64>,
    /// GPUs the entrypoint holds.
    #[arg(long)]
    entrypoint_num_gpus: Option<f64>,
    /// Memory (bytes) the entrypoint holds.
    #[arg(long)]
    entrypoint_memory: Option<u64>,
    /// Other resources the entrypoint holds, as JSON: '{"disk": 1}'.
    #[arg(long)]
    entrypoint_resources: Option<String>,
    /// Return once submitted instead of following the logs.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    api: ApiArgs,
    /// The entrypoint command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    entrypoint: Vec<String>,
}

/// A job id and where to find it.
#[derive(Args, Debug)]
struct IdArgs {
    /// The job's submission id (or its driver's job id).
    id: String,
    #[command(flatten)]
    api: ApiArgs,
}

/// Arguments of `rayish job logs`.
#[derive(Args, Debug)]
struct LogsArgs {
    /// The job's submission id.
    id: String,
    /// Follow the log until the job ends.
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// Arguments of `rayish job stop`.
#[derive(Args, Debug)]
struct StopArgs {
    /// The job's submission id.
    id: String,
    /// Return once asked instead of waiting for the job to end.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// Arguments of `rayish job list`.
#[derive(Args, Debug)]
struct ListArgs {
    /// Print JSON (Ray's `JobDetails` objects) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// Arguments of `rayish job fetch`.
#[derive(Args, Debug)]
struct FetchArgs {
    /// The job's submission id.
    id: String,
    /// The file's path in the job's working dir (e.g. out/average.json).
    path: String,
    /// Where to write it (default: its file name, here; `-` for stdout).
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
}

/// Runs a `rayish job` command; the process's exit code.
pub fn run(args: JobArgs) -> Result<i32> {
    match args.command {
        JobCommand::Submit(a) => submit(a),
        JobCommand::Status(a) => status(a).map(|_| 0),
        JobCommand::Logs(a) => logs(a).map(|_| 0),
        JobCommand::Stop(a) => stop(a).map(|_| 0),
        JobCommand::List(a) => list(a).map(|_| 0),
        JobCommand::Delete(a) => delete(a).map(|_| 0),
        JobCommand::Fetch(a) => fetch(a).map(|_| 0),
    }
}

/// Quotes `arg` for a POSIX shell when it needs it (Python's `shlex.quote`, which
/// Ray's CLI joins the entrypoint with).
fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\"'\"'"))
    }
}

fn json_object(flag: &str, text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(text).with_context(|| format!("{flag} is not JSON"))? {
        Value::Object(m) => Ok(m),
        other => bail!("{flag} must be a JSON object, not {other}"),
    }
}

/// Zips and uploads `dir` unless the head has it already; its package URI.
fn upload_working_dir(api: &Api, dir: &Path) -> Result<String> {
    if !dir.is_dir() {
        bail!("working dir {} is not a directory", dir.display());
    }
    let (bytes, name) = rayish_core::jobs::packages::zip_directory(dir)
        .with_context(|| format!("packing {}", dir.display()))?;
    let path = format!("/api/packages/gcs/{name}");
    if api.exists(&path)? {
        eprintln!("Package gcs://{name} already exists, skipping upload.");
    } else {
        eprintln!(
            "Uploading package gcs://{name} ({:.1} MiB).",
            bytes.len() as f64 / (1 << 20) as f64
        );
        api.send("PUT", &path, Body::Bytes(&bytes))?;
    }
    Ok(format!("gcs://{name}"))
}

fn submit(a: SubmitArgs) -> Result<i32> {
    let api = Api::new(&a.api)?;
    let mut runtime_env = Map::new();
    if let Some(file) = &a.runtime_env {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let yaml: Value = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{} is not YAML", file.display()))?;
        match yaml {
            Value::Object(m) => runtime_env.extend(m),
            Value::Null => {}
            other => bail!("{} must hold a mapping, not {other}", file.display()),
        }
    }
    if let Some(text) = &a.runtime_env_json {
        runtime_env.extend(json_object("--runtime-env-json", text)?);
    }
    let local_dir = match (&a.working_dir, runtime_env.get("working_dir")) {
        (Some(dir), _) => Some(dir.clone()),
        // A local path in the runtime environment is uploaded as Ray's CLI does.
        (None, Some(Value::String(w))) if !w.contains("://") => Some(PathBuf::from(w)),
        _ => None,
    };
    if let Some(dir) = local_dir {
        let uri = upload_working_dir(&api, &dir)?;
        runtime_env.insert("working_dir".into(), json!(uri));
    }
    let mut body = Map::new();
    body.insert(
        "entrypoint".into(),
        json!(a
            .entrypoint
            .iter()
            .map(|s| shell_quote(s))
            .collect::<Vec<_>>()
            .join(" ")),
    );
    if let Some(id) = a.submission_id.or(a.job_id) {
        body.insert("submission_id".into(), json!(id));
    }
    if !runtime_env.is_empty() {
        body.insert("runtime_env".into(), Value::Object(runtime_env));
    }
    if let Some(m) = &a.metadata_json {
        body.insert(
            "metadata".into(),
            Value::Object(json_object("--metadata-json", m)?),
        );
    }
    if let Some(c) = a.entrypoint_num_cpus {
        body.insert("entrypoint_num_cpus".into(), json!(c));
    }
    if let Some(g) = a.entrypoint_num_gpus {
        body.insert("entrypoint_num_gpus".into(), json!(g));
    }
    if let Some(m) = a.entrypoint_memory {
        body.insert("entrypoint_memory".into(), json!(m));
    }
    if let Some(r) = &a.entrypoint_resources {
        body.insert(
            "entrypoint_resources".into(),
            Value::Object(json_object("--entrypoint-resources", r)?),
        );
    }
    let answer: Value =
        serde_json::from_str(&api.send("POST", "/api/jobs/", Body::Json(Value::Object(body)))?)
            .context("the answer is not JSON")?;
    let id = answer["submission_id"]
        .as_str()
        .context("the answer has no submission_id")?
        .to_string();
    println!("Job '{id}' submitted successfully");
    if a.no_wait {
        println!("Query its logs with `rayish job logs {id}`, its status with `rayish job status {id}`, stop it with `rayish job stop {id}`.");
        return Ok(0);
    }
    println!("Tailing logs until the job exits (disable with --no-wait):");
    follow(&api, &id)?;
    let status = report(&api, &id)?;
    Ok(if status == "FAILED" { 1 } else { 0 })
}

/// The job's record (Ray's `JobDetails`).
fn job_info(api: &Api, id: &str) -> Result<Value> {
    serde_json::from_str(&api.send("GET", &format!("/api/jobs/{id}"), Body::None)?)
        .context("the answer is not JSON")
}

/// Prints how a job ended (or where it is), as Ray's CLI does; its status.
fn report(api: &Api, id: &str) -> Result<String> {
    let info = job_info(api, id)?;
    let status = info["status"].as_str().unwrap_or("UNKNOWN").to_string();
    match status.as_str() {
        "SUCCEEDED" => println!("Job '{id}' succeeded"),
        "STOPPED" => println!("Job '{id}' was stopped"),
        "FAILED" => {
            println!("Job '{id}' failed");
            if let Some(m) = info["message"].as_str() {
                println!("Status message: {m}");
            }
        }
        other => {
            println!("Status for job '{id}': {other}");
            if let Some(m) = info["message"].as_str() {
                println!("Status message: {m}");
            }
        }
    }
    Ok(status)
}

/// Prints the job's log as it grows, until the job ends (the server closes the
/// WebSocket then).
fn follow(api: &Api, id: &str) -> Result<()> {
    use tungstenite::client::IntoClientRequest;
    let (url, auth) = api.websocket(&format!("/api/jobs/{id}/logs/tail"));
    let mut request = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("{url} is not a WebSocket URL"))?;
    request.headers_mut().insert(
        "Authorization",
        auth.parse().context("the token is not a valid header")?,
    );
    let (mut socket, _) =
        tungstenite::connect(request).with_context(|| format!("following {url}"))?;
    let mut out = std::io::stdout().lock();
    loop {
        match socket.read() {
            Ok(tungstenite::Message::Text(t)) => {
                out.write_all(t.as_str().as_bytes())?;
                out.flush()?;
            }
            Ok(tungstenite::Message::Binary(b)) => {
                out.write_all(&b)?;
                out.flush()?;
            }
            Ok(tungstenite::Message::Close(_))
            | Err(tungstenite::Error::ConnectionClosed)
            | Err(tungstenite::Error::AlreadyClosed) => return Ok(()),
            Ok(_) => {}
            Err(e) => bail!("following {url}: {e}"),
        }
    }
}

fn status(a: IdArgs) -> Result<()> {
    let api = Api::new(&a.api)?;
    let info = job_info(&api, &a.id)?;
    println!(
        "Status for job '{}': {}",
        a.id,
        info["status"].as_str().unwrap_or("UNKNOWN")
    );
    if let Some(m) = info["message"].as_str() {
        println!("Status message: {m}");
    }
    Ok(())
}

fn logs(a: LogsArgs) -> Result<()> {
    let api = Api::new(&a.api)?;
    if a.follow {
        return follow(&api, &a.id);
    }
    let answer: Value =
        serde_json::from_str(&api.send("GET", &format!("/api/jobs/{}/logs", a.id), Body::None)?)
            .context("the answer is not JSON")?;
    print!("{}", answer["logs"].as_str().unwrap_or_default());
    Ok(())
}

fn stop(a: StopArgs) -> Result<()> {
    let api = Api::new(&a.api)?;
    println!("Attempting to stop job '{}'", a.id);
    let answer: Value =
        serde_json::from_str(&api.send("POST", &format!("/api/jobs/{}/stop", a.id), Body::None)?)
            .context("the answer is not JSON")?;
    if answer["stopped"] == Value::Bool(false) {
        println!("Job '{}' had already ended", a.id);
    }
    if a.no_wait {
        return Ok(());
    }
    println!(
        "Waiting for job '{}' to exit (disable with --no-wait):",
        a.id
    );
    loop {
        let info = job_info(&api, &a.id)?;
        let status = info["status"].as_str().unwrap_or("UNKNOWN");
        if matches!(status, "STOPPED" | "SUCCEEDED" | "FAILED") {
            report(&api, &a.id)?;
            return Ok(());
        }
        println!("Job has not exited yet. Status: {status}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn list(a: ListArgs) -> Result<()> {
    let api = Api::new(&a.api)?;
    let jobs: Value = serde_json::from_str(&api.send("GET", "/api/jobs/", Body::None)?)
        .context("the answer is not JSON")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    let rows = jobs.as_array().cloned().unwrap_or_default();
    let columns = ["submission_id", "job_id", "type", "status", "entrypoint"];
    let cell = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let header: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
    print!("{}", super::state::aligned(&header, &cells));
    Ok(())
}

fn delete(a: IdArgs) -> Result<()> {
    let api = Api::new(&a.api)?;
    api.send("DELETE", &format!("/api/jobs/{}", a.id), Body::None)?;
    println!("Job '{}' deleted successfully", a.id);
    Ok(())
}

fn fetch(a: FetchArgs) -> Result<()> {
    let api = Api::new(&a.api)?;
    let path = format!(
        "/api/rayish/jobs/{}/files/{}",
        a.id,
        a.path.trim_start_matches('/')
    );
    let bytes = api.get_bytes(&path)?;
    let output = a.output.unwrap_or_else(|| {
        PathBuf::from(
            Path::new(&a.path)
                .file_name()
                .map_or_else(|| "fetched".into(), |n| n.to_os_string()),
        )
    });
    if output.as_os_str() == "-" {
        std::io::stdout().write_all(&bytes)?;
    } else {
        std::fs::write(&output, &bytes).with_context(|| format!("writing {}", output.display()))?;
        eprintln!(
            "{} ({} bytes) from {}",
            output.display(),
            bytes.len(),
            api.base()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn arguments_are_quoted_as_shlex_quotes_them() {
        assert_eq!(shell_quote("./rayish-faces"), "./rayish-faces");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\"'\"'s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
