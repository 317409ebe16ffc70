//! Jobs: Ray's Jobs API on the dashboard port, `rayish job`, Ray's own `ray job` CLI
//! and `JobSubmissionClient` (the `ray` 2.60 package from PyPI, installed by
//! scripts/setup-cluster-tests.sh) against a two-node rayish cluster. A driver from
//! this repo's examples runs as a job from an uploaded working dir; a failing
//! entrypoint is FAILED with its exit code; a stop ends the whole process group and
//! frees the job's workers and objects; a running entrypoint's CPUs are withheld
//! from tasks; twenty jobs asking for a CPU each never run more at once than the
//! head has; a package outlives its jobs by the grace period only; a client that
//! goes away changes nothing; bad input gets a 4xx and the head serves on.

use rayish_suite::{children_of, http_get, rand_u64, stdout_of, TestCluster};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The largest package the test clusters take (the head reads it at start): more
/// than an unstripped example binary, which Ray's CLI zips as it is.
const PACKAGE_LIMIT: usize = 128 << 20;

/// How long the test clusters keep a package no job names.
const PACKAGE_GRACE_SECS: u64 = 5;

fn cluster() -> TestCluster {
    // The head inherits it. Every test of this binary sets the same value, so the
    // tests running side by side cannot disagree about it.
    std::env::set_var("RAYISH_JOB_PACKAGE_MAX_BYTES", PACKAGE_LIMIT.to_string());
    // Packages no job names go after 5 s rather than Ray's 10 minutes, so a test can
    // see one collected: still far more than a client takes from upload to submit.
    std::env::set_var(
        "RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S",
        PACKAGE_GRACE_SECS.to_string(),
    );
    TestCluster::start(1, 2, 5000)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rayish-jobs-{name}-{:x}", rand_u64()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `rayish job ARGS` against the cluster's dashboard.
fn rayish_job(cluster: &TestCluster, args: &[&str]) -> Command {
    let mut cmd = Command::new(rayish_suite::rayish_bin());
    cmd.arg("job")
        .args(args)
        .env("RAYISH_ADDRESS", &cluster.dashboard)
        .env("RAYISH_TOKEN", &cluster.token)
        .env_remove("RAY_ADDRESS");
    cmd
}

/// A request to the dashboard with the token: status and body.
fn call(cluster: &TestCluster, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
    let req = ureq::request(method, &format!("{}{path}", cluster.dashboard))
        .set("Authorization", &format!("Bearer {}", cluster.token));
    let answer = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    match answer {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

fn job(cluster: &TestCluster, id: &str) -> Value {
    let (code, body) = call(cluster, "GET", &format!("/api/jobs/{id}"), None);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("job json")
}

/// Waits until `done` holds for job `id`'s record.
fn wait_job(cluster: &TestCluster, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Not there yet is fine: a client may still be submitting it.
        let (code, body) = call(cluster, "GET", &format!("/api/jobs/{id}"), None);
        let j: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if code == 200 && done(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} never {what}: {j}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ended(j: &Value) -> bool {
    matches!(
        j["status"].as_str(),
        Some("SUCCEEDED" | "FAILED" | "STOPPED")
    )
}

fn submit_json(cluster: &TestCluster, body: Value) -> String {
    let (code, answer) = call(
        cluster,
        "POST",
        "/api/jobs/",
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(code, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).expect("json");
    v["submission_id"]
        .as_str()
        .expect("submission id")
        .to_string()
}

/// A working dir holding `binaries` (copied from the build).
fn working_dir(name: &str, binaries: &[&str]) -> PathBuf {
    let dir = scratch(name);
    for b in binaries {
        let built = match *b {
            "rayish-faces" => rayish_suite::target_dir().join(b),
            _ => rayish_suite::program_bin(b),
        };
        std::fs::copy(built, dir.join(b)).expect("copy the binary");
    }
    dir
}

/// The node processes' children: workers, and on the head the job entrypoints.
/// The stored package job `id`'s working dir came from, on the head.
fn package_of(cluster: &TestCluster, id: &str) -> PathBuf {
    let uri = job(cluster, id)["runtime_env"]["working_dir"]
        .as_str()
        .expect("a working dir")
        .to_string();
    let name = uri.strip_prefix("gcs://").expect("a package URI");
    cluster
        .storage_dir()
        .join("runtime_resources/packages")
        .join(name)
}

fn node_children(cluster: &TestCluster) -> Vec<u32> {
    cluster
        .nodes
        .iter()
        .flat_map(|n| children_of(n.id()))
        .collect()
}

fn objects(cluster: &TestCluster) -> usize {
    let (code, body) = call(cluster, "GET", "/api/v0/objects?limit=10000", None);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["data"]["result"]["result"].as_array().map_or(0, Vec::len)
}

#[test]
fn a_driver_from_an_uploaded_working_dir_runs_as_a_job() {
    let cluster = cluster();
    let wd = working_dir("hello", &["hello"]);
    let out = rayish_job(&cluster, &["submit", "--submission-id", "hello-1"])
        .arg("--working-dir")
        .arg(&wd)
        .args(["--metadata-json", r#"{"owner": "tests"}"#, "--", "./hello"])
        .output()
        .expect("rayish job submit");
    let printed = stdout_of(out, "rayish job submit");
    // The driver joined with no flags (the address and token came in its
    // environment), ran its tasks on the cluster, and its output is the job's log.
    assert!(
        printed.contains("squares of 0..10: [0, 1, 4, 9"),
        "{printed}"
    );
    assert!(printed.contains("Job 'hello-1' succeeded"), "{printed}");

    let j = job(&cluster, "hello-1");
    assert_eq!(j["status"], "SUCCEEDED", "{j}");
    assert_eq!(j["type"], "SUBMISSION");
    assert_eq!(j["driver_exit_code"], 0);
    assert_eq!(j["metadata"]["owner"], "tests");
    // The head lists the driver under the job: its job id finds the job too.
    let driver_job = j["job_id"]
        .as_str()
        .expect("the driver is linked")
        .to_string();
    assert!(j["driver_info"]["pid"].as_str().is_some(), "{j}");
    assert_eq!(job(&cluster, &driver_job)["submission_id"], "hello-1");
    let (_, logs) = call(&cluster, "GET", "/api/jobs/hello-1/logs", None);
    let logs: Value = serde_json::from_str(&logs).expect("json");
    assert!(logs["logs"]
        .as_str()
        .is_some_and(|l| l.contains("squares of 0..10")));

    // `rayish list jobs` (the state API) shows it with its driver, once.
    let out = Command::new(rayish_suite::rayish_bin())
        .args([
            "list",
            "jobs",
            "--format",
            "json",
            "--address",
            &cluster.dashboard,
        ])
        .env("RAYISH_TOKEN", &cluster.token)
        .output()
        .expect("rayish list jobs");
    let listed = stdout_of(out, "rayish list jobs");
    let listed: Value = serde_json::from_str(&listed).expect("json");
    let rows: Vec<&Value> = listed
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["job_id"] == driver_job.as_str())
        .collect();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["submission_id"], "hello-1");

    // The records are kept in the head's storage, private to this user (a restart
    // reads them back: `a_restarted_head_keeps_its_job_history_and_token`).
    use std::os::unix::fs::PermissionsExt;
    for path in [
        cluster.storage_dir(),
        cluster.storage_dir().join("head.redb"),
    ] {
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is private: {mode:o}", path.display());
    }

    // A failing entrypoint: FAILED with its exit code and the end of its log;
    // `submit` exits 1, as Ray's does.
    let out = rayish_job(
        &cluster,
        &["submit", "--", "sh", "-c", "echo 'about to fail'; exit 3"],
    )
    .output()
    .expect("rayish job submit");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("about to fail") && printed.contains("failed"),
        "{printed}"
    );
    let id = printed
        .lines()
        .find_map(|l| l.strip_prefix("Job '")?.split('\'').next())
        .expect("the id")
        .to_string();
    let j = job(&cluster, &id);
    assert_eq!(
        (j["status"].as_str(), j["driver_exit_code"].as_i64()),
        (Some("FAILED"), Some(3))
    );
    assert_eq!(j["error_type"], "JOB_ENTRYPOINT_COMMAND_ERROR");
    assert!(j["message"]
        .as_str()
        .is_some_and(|m| m.contains("exit code 3") && m.contains("about to fail")));

    // Its package outlived the job by the grace period only, as Ray's does.
    let package = package_of(&cluster, &driver_job);
    let deadline = Instant::now() + Duration::from_secs(PACKAGE_GRACE_SECS * 6);
    while package.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        !package.exists(),
        "{} was never collected",
        package.display()
    );

    // Deleting an ended job forgets it and its directory.
    let out = rayish_job(&cluster, &["delete", "hello-1"])
        .output()
        .expect("delete");
    stdout_of(out, "rayish job delete");
    assert_eq!(call(&cluster, "GET", "/api/jobs/hello-1", None).0, 404);
    assert!(!cluster.storage_dir().join("jobs/hello-1").exists());
    let _ = std::fs::remove_dir_all(&wd);
}

#[test]
fn stop_ends_the_process_group_and_frees_the_jobs_workers_and_objects() {
    let cluster = cluster();
    let wd = working_dir("stop", &["cluster_driver"]);
    let go = scratch("stop-go").join("go");
    // The shell ignores SIGTERM, and so do the processes it starts (an ignored
    // signal stays ignored across exec): only the SIGKILL after the grace period
    // ends them.
    let entrypoint = format!(
        "trap '' TERM; ./cluster_driver free --go {} & sleep 300 & wait",
        go.display()
    );
    let id = submit_json(
        &cluster,
        serde_json::json!({
            "entrypoint": entrypoint,
            "runtime_env": {"working_dir": upload(&cluster, &wd)},
        }),
    );
    wait_job(&cluster, &id, "held its objects", |_| {
        let (_, logs) = call(&cluster, "GET", &format!("/api/jobs/{id}/logs"), None);
        logs.contains("HOLDING")
    });
    assert!(objects(&cluster) > 0, "the job holds objects");
    assert!(!node_children(&cluster).is_empty());

    let out = rayish_job(&cluster, &["stop", &id]).output().expect("stop");
    let printed = stdout_of(out, "rayish job stop");
    assert!(printed.contains("was stopped"), "{printed}");
    let j = job(&cluster, &id);
    assert_eq!(j["status"], "STOPPED", "{j}");
    assert_eq!(j["driver_exit_code"], 128 + 9, "SIGKILL ended it: {j}");

    // Nothing of it is left: no entrypoint, no driver, no worker, no object.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(node_children(&cluster).is_empty() && objects(&cluster) == 0) {
        assert!(
            Instant::now() < deadline,
            "left behind: processes {:?}, {} objects",
            node_children(&cluster),
            objects(&cluster)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Stopping it again: Ray's answer for an ended job.
    let (code, body) = call(&cluster, "POST", &format!("/api/jobs/{id}/stop"), Some(b""));
    assert_eq!(
        (code, body.contains("\"stopped\":false")),
        (200, true),
        "{body}"
    );
    let _ = std::fs::remove_dir_all(&wd);
}

/// Uploads `dir` as `rayish job submit` would; its package URI.
fn upload(cluster: &TestCluster, dir: &Path) -> String {
    let (bytes, name) = rayish_core::jobs::packages::zip_directory(dir).expect("zip");
    let (code, body) = call(
        cluster,
        "PUT",
        &format!("/api/packages/gcs/{name}"),
        Some(&bytes),
    );
    assert_eq!(code, 200, "{body}");
    format!("gcs://{name}")
}

/// The CPUs the head's scheduler counts free on node `node`.
fn free_cpus(cluster: &TestCluster, node: &str) -> f64 {
    let (code, body) = call(cluster, "GET", "/api/rayish/node_usage", None);
    assert_eq!(code, 200, "{body}");
    let usage: Value = serde_json::from_str(&body).expect("json");
    let free = &usage["data"]["result"][node]["resources_available"];
    assert!(free.is_object(), "node {node} not listed: {usage}");
    // A resource used up is left out.
    free["CPU"].as_f64().unwrap_or(0.0)
}

#[test]
fn a_running_entrypoint_holds_its_cpus_out_of_the_tasks_reach() {
    let cluster = cluster();
    let id = submit_json(
        &cluster,
        serde_json::json!({"entrypoint": "sleep 60", "entrypoint_num_cpus": 2}),
    );
    let j = wait_job(&cluster, &id, "RUNNING", |j| j["status"] == "RUNNING");
    let node = j["driver_node_id"]
        .as_str()
        .expect("the node it runs on")
        .to_string();
    // Both of the head node's CPUs are the entrypoint's while it runs ...
    let deadline = Instant::now() + Duration::from_secs(10);
    while free_cpus(&cluster, &node) != 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(free_cpus(&cluster, &node), 0.0);
    // ... and free again once it is stopped.
    assert_eq!(
        call(&cluster, "POST", &format!("/api/jobs/{id}/stop"), None).0,
        200
    );
    wait_job(&cluster, &id, "STOPPED", ended);
    let deadline = Instant::now() + Duration::from_secs(10);
    while free_cpus(&cluster, &node) != 2.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(free_cpus(&cluster, &node), 2.0);
}

#[test]
fn twenty_jobs_never_hold_more_cpus_than_the_head_has() {
    let cluster = cluster();
    let dir = scratch("twenty");
    let running = dir.join("running");
    std::fs::create_dir_all(&running).expect("mkdir");
    // Each entrypoint marks itself running, counts who else is, and unmarks itself.
    let entrypoint = format!(
        "touch {r}/$RAYISH_JOB_SUBMISSION_ID; echo concurrent=$(ls {r} | wc -l); \
         sleep 0.3; rm {r}/$RAYISH_JOB_SUBMISSION_ID",
        r = running.display()
    );
    let submitters: Vec<_> = (0..20)
        .map(|i| {
            let body = serde_json::json!({
                "entrypoint": entrypoint,
                "submission_id": format!("cpu-{i}"),
                "entrypoint_num_cpus": 1,
            });
            let url = format!("{}/api/jobs/", cluster.dashboard);
            let auth = format!("Bearer {}", cluster.token);
            std::thread::spawn(move || {
                ureq::post(&url)
                    .set("Authorization", &auth)
                    .send_string(&body.to_string())
                    .map(|r| r.status())
                    .unwrap_or_else(|e| panic!("submit: {e}"))
            })
        })
        .collect();
    for s in submitters {
        assert_eq!(s.join().expect("submitter"), 200);
    }
    let mut most_running = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = call(&cluster, "GET", "/api/jobs/", None);
        let jobs: Value = serde_json::from_str(&body).expect("json");
        let jobs = jobs.as_array().expect("list").clone();
        let count = |s: &str| jobs.iter().filter(|j| j["status"] == s).count();
        most_running = most_running.max(count("RUNNING"));
        if count("SUCCEEDED") == 20 {
            break;
        }
        assert!(count("FAILED") == 0, "{jobs:?}");
        assert!(Instant::now() < deadline, "not all finished: {jobs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        most_running <= 2,
        "{most_running} ran at once on a 2-CPU head"
    );
    for i in 0..20 {
        let (_, logs) = call(&cluster, "GET", &format!("/api/jobs/cpu-{i}/logs"), None);
        let logs: Value = serde_json::from_str(&logs).expect("json");
        let n: usize = logs["logs"]
            .as_str()
            .and_then(|l| l.trim().strip_prefix("concurrent="))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("job cpu-{i} printed no count: {logs}"));
        assert!(n <= 2, "job cpu-{i} saw {n} running at once");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_that_goes_away_changes_nothing() {
    let cluster = cluster();
    let mut follower = rayish_job(
        &cluster,
        &[
            "submit",
            "--submission-id",
            "orphan",
            "--",
            "sh",
            "-c",
            "echo started; sleep 2; echo finished",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("rayish job submit");
    wait_job(&cluster, "orphan", "ran", |j| j["status"] == "RUNNING");
    follower.kill().expect("kill the client");
    let _ = follower.wait();
    let j = wait_job(&cluster, "orphan", "ended", ended);
    assert_eq!(j["status"], "SUCCEEDED", "{j}");
    let out = rayish_job(&cluster, &["logs", "orphan"])
        .output()
        .expect("logs");
    let logs = stdout_of(out, "rayish job logs");
    assert_eq!(logs, "started\nfinished\n");
}

/// Ray's CLI, with the cluster token as Ray's token authentication reads it.
fn ray(cluster: &TestCluster, args: &[&str]) -> Output {
    let bin = rayish_faces::models::data_dir().join("ray-cli/bin/ray");
    Command::new(&bin)
        .args(args)
        .env("RAY_ADDRESS", &cluster.dashboard)
        .env("RAY_AUTH_MODE", "token")
        .env("RAY_AUTH_TOKEN", &cluster.token)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "run {} (scripts/setup-cluster-tests.sh installs it): {e}",
                bin.display()
            )
        })
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn rays_own_job_cli_and_sdk_drive_a_rayish_cluster() {
    let cluster = cluster();
    let wd = working_dir("ray-cli", &["hello"]);
    let out = ray(
        &cluster,
        &[
            "job",
            "submit",
            "--submission-id",
            "by-ray",
            "--working-dir",
            wd.to_str().expect("utf-8"),
            "--",
            "./hello",
        ],
    );
    let printed = both(&out);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("squares of 0..10: [0, 1, 4, 9"),
        "{printed}"
    );
    assert!(printed.contains("Job 'by-ray' succeeded"), "{printed}");

    let status = both(&ray(&cluster, &["job", "status", "by-ray"]));
    assert!(status.contains("Job 'by-ray' succeeded"), "{status}");
    let logs = both(&ray(&cluster, &["job", "logs", "by-ray"]));
    assert!(logs.contains("squares of 0..10"), "{logs}");
    let list = both(&ray(&cluster, &["job", "list"]));
    assert!(list.contains("submission_id='by-ray'"), "{list}");

    // A failing job makes `ray job submit` exit 1.
    let out = ray(&cluster, &["job", "submit", "--", "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));

    // A long job stopped by Ray's CLI, then deleted.
    let out = ray(
        &cluster,
        &[
            "job",
            "submit",
            "--no-wait",
            "--submission-id",
            "ray-long",
            "--",
            "sleep",
            "60",
        ],
    );
    assert!(out.status.success(), "{}", both(&out));
    wait_job(&cluster, "ray-long", "ran", |j| j["status"] == "RUNNING");
    let stopped = both(&ray(&cluster, &["job", "stop", "ray-long"]));
    assert!(stopped.contains("was stopped"), "{stopped}");
    let deleted = both(&ray(&cluster, &["job", "delete", "ray-long"]));
    assert!(deleted.contains("deleted successfully"), "{deleted}");
    assert_eq!(call(&cluster, "GET", "/api/jobs/ray-long", None).0, 404);

    // Ray's Python SDK: submit with env vars, follow the log, read status and logs.
    let python = rayish_faces::models::data_dir().join("ray-cli/bin/python");
    let script = r#"
import asyncio, os, sys
from ray.job_submission import JobSubmissionClient, JobStatus
client = JobSubmissionClient(os.environ["RAY_ADDRESS"])
sid = client.submit_job(entrypoint="echo from-sdk $GREETING", runtime_env={"env_vars": {"GREETING": "hi"}},
                        metadata={"via": "sdk"})
async def tail():
    return "".join([chunk async for chunk in client.tail_job_logs(sid)])
followed = asyncio.run(tail())
info = client.get_job_info(sid)
print("FOLLOWED", followed.strip())
print("STATUS", info.status, info.metadata["via"])
print("LOGS", client.get_job_logs(sid).strip())
print("LISTED", any(j.submission_id == sid for j in client.list_jobs()))
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .env("RAY_ADDRESS", &cluster.dashboard)
        .env("RAY_AUTH_MODE", "token")
        .env("RAY_AUTH_TOKEN", &cluster.token)
        .output()
        .expect("python");
    let printed = both(&out);
    assert!(out.status.success(), "{printed}");
    for line in [
        "FOLLOWED from-sdk hi",
        "STATUS SUCCEEDED sdk",
        "LOGS from-sdk hi",
        "LISTED True",
    ] {
        assert!(printed.contains(line), "{line:?} missing from:\n{printed}");
    }
    let _ = std::fs::remove_dir_all(&wd);
}

/// A zip with one entry named `name` (a symlink to `/etc` if `link`).
fn zip_with(name: &str, link: bool) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    if link {
        w.add_symlink(name, "/etc", opts).expect("link");
    } else {
        w.start_file(name, opts).expect("entry");
        w.write_all(b"planted").expect("write");
    }
    w.finish().expect("zip").into_inner()
}

#[test]
fn bad_input_is_refused_and_the_head_serves_on() {
    let cluster = cluster();
    let post = |body: &str| call(&cluster, "POST", "/api/jobs/", Some(body.as_bytes()));
    for (body, says) in [
        ("{not json", "not JSON"),
        (r#"{"entrypoint": "true", "colour": "red"}"#, "colour"),
        (r#"{"entrypoint": 7}"#, "string"),
        (r#"{"runtime_env": {}}"#, "no entrypoint"),
        (
            r#"{"entrypoint": "true", "runtime_env": {"pip": ["x"]}}"#,
            "pip",
        ),
        (
            r#"{"entrypoint": "true", "submission_id": "../escape"}"#,
            "submission_id",
        ),
        (
            r#"{"entrypoint": "true", "runtime_env": {"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip"}}"#,
            "not uploaded",
        ),
    ] {
        let (code, answer) = post(body);
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer.contains(says), "{body}: {answer}");
    }
    // Fields set to null are dropped, as Ray's server drops them.
    let (code, answer) =
        post(r#"{"entrypoint": "true", "submission_id": "dup", "entrypoint_memory": null}"#);
    assert_eq!(code, 200, "{answer}");
    let (code, answer) = post(r#"{"entrypoint": "true", "submission_id": "dup"}"#);
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("already exists"), "{answer}");

    // Packages: escaping paths, links, non-zips, bad names and oversized uploads.
    let outside = std::env::temp_dir().join(format!("rayish-planted-{:x}", rand_u64()));
    let escape = format!("../../../../../../..{}", outside.display());
    let name = "_ray_pkg_00112233445566778899aabbccddeeff.zip";
    for (bytes, says) in [
        (zip_with(&escape, false), "refused"),
        (zip_with("link", true), "symbolic link"),
        (b"not a zip".to_vec(), "not a zip"),
    ] {
        let (code, answer) = call(
            &cluster,
            "PUT",
            &format!("/api/packages/gcs/{name}"),
            Some(&bytes),
        );
        assert_eq!(code, 400, "{answer}");
        assert!(answer.contains(says), "{answer}");
    }
    assert!(!outside.exists(), "nothing was written outside");
    assert_eq!(
        call(&cluster, "GET", &format!("/api/packages/gcs/{name}"), None).0,
        404
    );
    let (code, _) = call(
        &cluster,
        "PUT",
        "/api/packages/gcs/evil.zip",
        Some(&zip_with("a", false)),
    );
    assert_eq!(code, 400);
    let (code, _) = call(
        &cluster,
        "PUT",
        "/api/packages/s3/_ray_pkg_0123456789abcdef.zip",
        Some(b""),
    );
    assert_eq!(code, 400);
    // Streamed (chunked), so neither side holds it whole.
    use std::io::Read;
    let big = std::io::repeat(7).take(PACKAGE_LIMIT as u64 + 1);
    let answer = ureq::put(&format!("{}/api/packages/gcs/{name}", cluster.dashboard))
        .set("Authorization", &format!("Bearer {}", cluster.token))
        .send(big);
    match answer {
        Err(ureq::Error::Status(413, r)) => {
            let why = r.into_string().unwrap_or_default();
            assert!(why.contains("over the limit"), "{why}");
        }
        other => panic!("an oversized upload: {other:?}"),
    }

    // A file fetched from a job's working dir must stay inside it.
    let (code, _) = call(
        &cluster,
        "GET",
        "/api/rayish/jobs/dup/files/..%2F..%2Fjob.json",
        None,
    );
    assert!(code == 400 || code == 404, "{code}");

    // Stop and delete: an unknown job is a 404; a running one cannot be deleted.
    assert_eq!(
        call(&cluster, "POST", "/api/jobs/nope/stop", Some(b"")).0,
        404
    );
    assert_eq!(call(&cluster, "DELETE", "/api/jobs/nope", None).0, 404);
    let id = submit_json(&cluster, serde_json::json!({"entrypoint": "sleep 30"}));
    wait_job(&cluster, &id, "ran", |j| j["status"] == "RUNNING");
    let (code, answer) = call(&cluster, "DELETE", &format!("/api/jobs/{id}"), None);
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("non-terminal"), "{answer}");
    let (code, _) = call(&cluster, "POST", &format!("/api/jobs/{id}/stop"), Some(b""));
    assert_eq!(code, 200);
    assert_eq!(
        wait_job(&cluster, &id, "stopped", ended)["status"],
        "STOPPED"
    );

    // Without the token: 401; with a wrong one: 403 (Ray's codes), with a message.
    let url = format!("{}/api/jobs/", cluster.dashboard);
    let (code, answer) = http_get(&url, &[]);
    assert_eq!(code, 401);
    assert!(answer.contains("Missing authentication token"), "{answer}");
    let (code, _) = http_get(&url, &[("Authorization", "Bearer wrong")]);
    assert_eq!(code, 403);
    let refused = ureq::post(&url).send_string(r#"{"entrypoint": "touch /tmp/x"}"#);
    assert!(matches!(refused, Err(ureq::Error::Status(401, _))));

    // Entrypoint resources the head node can never give fail at once; memory is
    // counted as Ray counts a node's (the machine's, less the object store's).
    let id = submit_json(
        &cluster,
        serde_json::json!({"entrypoint": "true", "entrypoint_num_cpus": 64}),
    );
    let j = wait_job(&cluster, &id, "ended", ended);
    assert_eq!(j["error_type"], "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE", "{j}");
    let id = submit_json(
        &cluster,
        serde_json::json!({"entrypoint": "true", "entrypoint_memory": 1u64 << 60}),
    );
    assert_eq!(wait_job(&cluster, &id, "ended", ended)["status"], "FAILED");
    let id = submit_json(
        &cluster,
        serde_json::json!({"entrypoint": "true", "entrypoint_memory": 1 << 20}),
    );
    assert_eq!(
        wait_job(&cluster, &id, "ended", ended)["status"],
        "SUCCEEDED"
    );

    // The head serves on: a good job runs.
    let id = submit_json(
        &cluster,
        serde_json::json!({"entrypoint": "echo still-serving"}),
    );
    let j = wait_job(&cluster, &id, "ended", ended);
    assert_eq!(j["status"], "SUCCEEDED", "{j}");
}

#[test]
fn the_faces_pipeline_runs_as_a_job_and_its_output_is_fetched() {
    let cluster = cluster();
    let photos = rayish_faces::models::data_dir().join("sample_photos");
    let models = rayish_faces::models::models_dir(None);
    // The working dir of README's example: the binary and the photos beside it.
    let wd = working_dir("faces", &["rayish-faces"]);
    let copy = Command::new("cp")
        .arg("-r")
        .arg(&photos)
        .arg(wd.join("photos"))
        .status()
        .expect("cp");
    assert!(copy.success());
    let out = rayish_job(&cluster, &["submit", "--submission-id", "faces"])
        .arg("--working-dir")
        .arg(&wd)
        .args([
            "--",
            "./rayish-faces",
            "encode",
            "photos",
            "--out",
            "out",
            "--quiet",
            "--models",
        ])
        .arg(&models)
        .output()
        .expect("rayish job submit");
    let printed = stdout_of(out, "rayish job submit");
    assert!(
        printed.contains("average face vector (7 faces)"),
        "{printed}"
    );
    // Its progress is in the drivers' metrics, which the jobs page lists.
    let (code, body) = call(&cluster, "GET", "/api/rayish/user_metrics", None);
    assert_eq!(code, 200, "{body}");
    let metrics: Value = serde_json::from_str(&body).expect("json");
    let images_ok = metrics["data"]["result"]
        .as_array()
        .expect("series")
        .iter()
        .find(|m| m["name"] == "ray_faces_images_total" && m["tags"]["status"] == "ok")
        .map(|m| m["value"].clone());
    assert_eq!(images_ok, Some(serde_json::json!(7.0)), "{metrics}");

    // `rayish job fetch` copies what the job wrote in its working dir.
    let fetched = scratch("faces-fetched").join("encodings.jsonl");
    let out = rayish_job(&cluster, &["fetch", "faces", "out/encodings.jsonl", "-o"])
        .arg(&fetched)
        .output()
        .expect("rayish job fetch");
    stdout_of(out, "rayish job fetch");
    let as_job = rayish_suite::faces_by_file(&std::fs::read_to_string(&fetched).expect("jsonl"));
    let local =
        rayish_suite::local_faces_job(&photos, &models, &scratch("faces-local").join("out"));
    rayish_suite::assert_same_faces(&local, &as_job, 1e-9);
    // Nothing outside the working dir can be fetched.
    let out = rayish_job(&cluster, &["fetch", "faces", "../job.json", "-o", "-"])
        .output()
        .expect("rayish job fetch");
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&wd);
}

/// Submits an entrypoint that sleeps `secs` after writing its pid (its process
/// group's id) into `dir`; waits until it runs. Its submission id and pid.
fn submit_sleeper(cluster: &TestCluster, dir: &Path, secs: u32) -> (String, i32) {
    let pid_file = dir.join("pid");
    let id = submit_json(
        cluster,
        serde_json::json!({
            "entrypoint": format!("echo $$ > {}; sleep {secs}", pid_file.display()),
        }),
    );
    wait_job(cluster, &id, "RUNNING", |j| j["status"] == "RUNNING");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return (id, p);
        }
        assert!(
            Instant::now() < deadline,
            "the entrypoint never wrote its pid"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_head_stopped_on_purpose_stops_its_jobs_first() {
    let mut cluster = cluster();
    let dir = scratch("head-stop");
    let (id, pid) = submit_sleeper(&cluster, &dir, 120);
    // What `rayish stop` sends.
    let head = &mut cluster.nodes[0];
    // SAFETY: kill(2) of the head process this test started (still its child).
    unsafe {
        libc::kill(head.id() as i32, libc::SIGTERM);
    }
    let status = head.wait().expect("the head exits");
    assert!(status.success(), "{status}");
    assert!(!running(pid), "the entrypoint outlived its head");
    // The record says so to the next head.
    cluster.restart_head(1);
    let j = job(&cluster, &id);
    assert_eq!(j["status"], "STOPPED", "{j}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_upload_is_stored_whole() {
    // The last piece of an upload was once still being written when the package was
    // read back to be checked (tokio's file writes on another thread until flushed):
    // now and then a whole zip was refused as "not a zip". Many uploads of
    // incompressible data, each read back at once, catch it.
    use std::io::Write;
    let cluster = cluster();
    let mut seed = rand_u64() | 1;
    for i in 0..40 {
        let len = (1 << 20) + (i * 37_123);
        let data: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("data", opts).expect("entry");
        w.write_all(&data).expect("write");
        let bytes = w.finish().expect("zip").into_inner();
        let name = format!("_ray_pkg_{:016x}{i:04x}.zip", rand_u64());
        let (code, answer) = call(
            &cluster,
            "PUT",
            &format!("/api/packages/gcs/{name}"),
            Some(&bytes),
        );
        assert_eq!(code, 200, "upload {i} ({} bytes): {answer}", bytes.len());
    }
}

/// Rewrites job `id`'s stored record as it was before its start was recorded
/// (PENDING, no process): the state a head that died between starting an
/// entrypoint and writing its record leaves. The head must be down.
fn forget_start(cluster: &TestCluster, id: &str) {
    use rayish_core::jobs::{store::JobStore, JobStatus};
    let dir = cluster.storage_dir();
    let storage = rayish_core::storage::Storage::open(&dir).expect("the head's storage");
    let (store, jobs) = JobStore::open(storage, dir.join("jobs")).expect("the job store");
    let stored = jobs
        .into_iter()
        .find(|j| j.info.submission_id == id)
        .expect("the job's record");
    let mut info = stored.info;
    // PENDING already if the head died before its queued record was committed.
    assert!(
        matches!(info.status, JobStatus::Running | JobStatus::Pending),
        "{info:?}"
    );
    info.status = JobStatus::Pending;
    info.entrypoint_pid = None;
    info.message = None;
    store.save(&info, &stored.log);
    store.flush().expect("written");
}

/// Polls `what` for up to 10 s until `done` holds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether process `pid` runs: it exists and is not a zombie (an orphaned
/// entrypoint's parent is whoever adopts orphans here, which may not reap it soon).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn logs_of(cluster: &TestCluster, id: &str) -> String {
    let (code, logs) = call(cluster, "GET", &format!("/api/jobs/{id}/logs"), None);
    assert_eq!(code, 200, "{logs}");
    logs
}

#[test]
fn a_restarted_head_keeps_its_job_history_and_token_and_takes_its_running_jobs_back() {
    let mut cluster = cluster();
    let done = submit_json(
        &cluster,
        serde_json::json!({"entrypoint": "echo kept across the restart"}),
    );
    wait_job(&cluster, &done, "SUCCEEDED", ended);
    // One that runs on through the restart, one that ends while the head is away,
    // one that is stopped by the next head, holding a CPU meanwhile.
    let goes_on = submit_json(
        &cluster,
        serde_json::json!({"entrypoint": "echo before; sleep 4; echo after"}),
    );
    // Taken back in the order of their ids: this one, found ended, once admitted
    // the waiting jobs before `unrecorded` (below) was taken back, and so started
    // it a second time.
    let ends_away = submit_json(
        &cluster,
        serde_json::json!({
            "entrypoint": "echo ending; sleep 1; exit 3",
            "submission_id": "restart-a-ends-away",
        }),
    );
    let dir = scratch("restart");
    let pid_file = dir.join("pid");
    let stopped = submit_json(
        &cluster,
        serde_json::json!({
            "entrypoint": format!("echo $$ > {}; sleep 300", pid_file.display()),
            "entrypoint_num_cpus": 1,
        }),
    );
    for id in [&goes_on, &ends_away, &stopped] {
        wait_job(&cluster, id, "RUNNING", |j| j["status"] == "RUNNING");
    }
    eventually("the first line logged", || {
        logs_of(&cluster, &goes_on).contains("before")
    });
    eventually("the sleeper's pid written", || pid_file.exists());
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");

    // One whose RUNNING record the head did not live to write: it was started, and
    // must not be started a second time.
    let runs = dir.join("runs");
    let unrecorded = submit_json(
        &cluster,
        serde_json::json!({
            "entrypoint": format!("echo run >> {}; echo started; sleep 3; echo done", runs.display()),
            "submission_id": "restart-b-unrecorded",
        }),
    );
    wait_job(&cluster, &unrecorded, "RUNNING", |j| {
        j["status"] == "RUNNING"
    });

    // kill -9, away for 2 s, then the same command without a token: the head takes
    // the one its storage kept, so the worker node, waiting for its head, comes back
    // to it as itself.
    cluster.kill_node(0);
    forget_start(&cluster, &unrecorded);
    std::thread::sleep(Duration::from_secs(2));
    cluster.start_head_again(2);
    let status = cluster.status().expect("status");
    assert_eq!(status["head_starts"]["count"], 2, "{status}");
    // The first head's own node is listed, dead, beside this head's node and the
    // worker node, which came back as itself.
    let nodes = status["nodes"].as_array().expect("nodes");
    let alive = nodes.iter().filter(|n| n["alive"] == true).count();
    assert_eq!((nodes.len(), alive), (3, 2), "{status}");
    assert!(
        nodes
            .iter()
            .any(|n| n["alive"] == false && n["address"] == cluster.address.as_str()),
        "{status}"
    );

    // The ended job is listed as it was, with its log.
    let j = job(&cluster, &done);
    assert_eq!(j["status"], "SUCCEEDED", "{j}");
    assert!(logs_of(&cluster, &done).contains("kept across the restart"));
    // The running ones were taken back: one finishes with its whole log ...
    let j = wait_job(&cluster, &goes_on, "ended", ended);
    assert_eq!(j["status"], "SUCCEEDED", "{j}");
    let logs = logs_of(&cluster, &goes_on);
    assert!(logs.contains("before") && logs.contains("after"), "{logs}");
    // ... one ended while no head watched, and its exit code is known ...
    let j = wait_job(&cluster, &ends_away, "ended", ended);
    assert_eq!(
        (j["status"].as_str(), j["driver_exit_code"].as_i64()),
        (Some("FAILED"), Some(3)),
        "{j}"
    );
    assert!(logs_of(&cluster, &ends_away).contains("ending"));
    // ... one was found running though recorded as waiting, and ran once ...
    let j = wait_job(&cluster, &unrecorded, "ended", ended);
    assert_eq!(j["status"], "SUCCEEDED", "{j}");
    let logs = logs_of(&cluster, &unrecorded);
    assert!(logs.contains("started") && logs.contains("done"), "{logs}");
    assert_eq!(std::fs::read_to_string(&runs).expect("runs"), "run\n");
    // ... and one still runs on the new head's node, holding its CPU there, until
    // it is stopped.
    let j = job(&cluster, &stopped);
    assert_eq!(j["status"], "RUNNING", "{j}");
    let node = j["driver_node_id"].as_str().expect("its node").to_string();
    eventually("the CPU held again", || free_cpus(&cluster, &node) == 1.0);
    assert_eq!(
        call(&cluster, "POST", &format!("/api/jobs/{stopped}/stop"), None).0,
        200
    );
    assert_eq!(
        wait_job(&cluster, &stopped, "STOPPED", ended)["status"],
        "STOPPED"
    );
    eventually("the entrypoint gone", || !running(pid));
    eventually("the CPU free", || free_cpus(&cluster, &node) == 2.0);
    // The restarted head takes new jobs.
    let again = submit_json(&cluster, serde_json::json!({"entrypoint": "true"}));
    assert_eq!(
        wait_job(&cluster, &again, "ended", ended)["status"],
        "SUCCEEDED"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
