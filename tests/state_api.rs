//! The state API: Ray's own `ray list`, `ray get` and `ray summary` (the `ray` 2.60
//! CLI from PyPI, installed by scripts/setup-cluster-tests.sh) and `rayish list` print
//! a two-node rayish cluster's nodes, tasks (a failed one with its error and node),
//! actors, workers and jobs; the HTTP server refuses requests without the token and
//! answers bad ones with a 4xx and a reason.

use rayish_suite::{http_get, rand_u64, stdout_of, TestCluster};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

/// Ray's CLI, with the cluster token as Ray's token authentication reads it.
fn ray(cluster: &TestCluster, args: &[&str]) -> Output {
    let bin = rayish_faces::models::data_dir().join("ray-cli/bin/ray");
    Command::new(&bin)
        .args(args)
        .args(["--address", &cluster.dashboard])
        .env("RAY_AUTH_MODE", "token")
        .env("RAY_AUTH_TOKEN", &cluster.token)
        .env_remove("RAY_ADDRESS")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "run {} (scripts/setup-cluster-tests.sh installs it): {e}",
                bin.display()
            )
        })
}

#[test]
fn rays_state_cli_prints_a_rayish_cluster() {
    let cluster = TestCluster::start(1, 2, 5000);
    let dir = std::env::temp_dir().join(format!("rayish-state-{:x}", rand_u64()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let go: PathBuf = dir.join("go");
    let (mut driver, result) = cluster.start_state_scenario(40, &go);
    let refused = result["refused"]
        .as_str()
        .expect("the refusing task failed");
    assert!(refused.contains("negative input -7"), "{refused}");
    let actor = result["actor"].as_str().expect("actor id");
    let node_ids: Vec<String> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|ip| cluster.node_id_at(ip).expect("node id"))
        .collect();

    // Nodes: both, alive, the head marked.
    let nodes = stdout_of(ray(&cluster, &["list", "nodes"]), "ray list nodes");
    for id in &node_ids {
        assert!(nodes.contains(id.as_str()), "{id} not in:\n{nodes}");
    }
    assert_eq!(nodes.matches("ALIVE").count(), 2, "{nodes}");
    assert!(nodes.contains("127.0.0.3"), "{nodes}");

    // Failed tasks: exactly the two that failed, each with its node, worker and type.
    let failed = stdout_of(
        ray(
            &cluster,
            &[
                "list",
                "tasks",
                "--filter",
                "state=FAILED",
                "--format",
                "json",
            ],
        ),
        "ray list tasks --filter state=FAILED",
    );
    let failed: Vec<Value> = serde_json::from_str(&failed).expect("json list");
    let names: Vec<&str> = failed.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(names.iter().any(|n| n.ends_with("refuse")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("explode")), "{names:?}");
    for t in &failed {
        assert_eq!(t["error_type"], "TASK_EXECUTION_EXCEPTION", "{t}");
        let node = t["node_id"].as_str().expect("failed task's node");
        assert!(
            node_ids.iter().any(|n| n == node),
            "{t} not on {node_ids:?}"
        );
        assert!(t["worker_pid"].as_u64().is_some_and(|p| p > 0), "{t}");
    }
    // `ray get tasks ID` shows the error message (a detail column).
    let refuse_id = failed
        .iter()
        .find(|t| t["name"].as_str().is_some_and(|n| n.ends_with("refuse")))
        .and_then(|t| t["task_id"].as_str())
        .expect("refuse's id");
    let got = stdout_of(ray(&cluster, &["get", "tasks", refuse_id]), "ray get tasks");
    assert!(got.contains("negative input -7"), "{got}");

    // The summary counts every task by function.
    let summary = stdout_of(ray(&cluster, &["summary", "tasks"]), "ray summary tasks");
    assert!(summary.contains("where_am_i"), "{summary}");
    assert!(summary.contains("FINISHED: 40"), "{summary}");
    assert!(summary.contains("FAILED: 1"), "{summary}");

    // The actor, alive, by name and class, on one of the nodes.
    let actors = stdout_of(
        ray(&cluster, &["list", "actors", "--format", "json"]),
        "ray list actors",
    );
    let actors: Vec<Value> = serde_json::from_str(&actors).expect("json list");
    let board = actors
        .iter()
        .find(|a| a["actor_id"] == actor)
        .unwrap_or_else(|| panic!("actor {actor} not in {actors:?}"));
    assert_eq!(board["state"], "ALIVE");
    assert_eq!(board["name"], "state-board");
    assert!(board["class_name"]
        .as_str()
        .is_some_and(|c| c.contains("Board")));
    assert!(board["pid"].as_u64().is_some_and(|p| p > 0), "{board}");
    let actor_summary = stdout_of(ray(&cluster, &["summary", "actors"]), "ray summary actors");
    assert!(actor_summary.contains("ALIVE: 1"), "{actor_summary}");

    // Workers: processes on both nodes; jobs: the driver's, running.
    let workers = stdout_of(
        ray(&cluster, &["list", "workers", "--format", "json"]),
        "ray list workers",
    );
    let workers: Vec<Value> = serde_json::from_str(&workers).expect("json list");
    assert!(
        workers.iter().all(|w| w["worker_type"] == "WORKER"),
        "{workers:?}"
    );
    assert!(workers.len() >= 2, "{workers:?}");
    let jobs = stdout_of(ray(&cluster, &["list", "jobs"]), "ray list jobs");
    assert!(jobs.contains("RUNNING"), "{jobs}");
    assert!(jobs.contains("cluster_driver"), "{jobs}");

    // rayish's own CLI reads the same API.
    let ours = Command::new(rayish_suite::rayish_bin())
        .args(["list", "tasks", "--filter", "state=FAILED", "--address"])
        .arg(&cluster.dashboard)
        .env("RAYISH_TOKEN", &cluster.token)
        .output()
        .expect("rayish list");
    let ours = stdout_of(ours, "rayish list tasks");
    assert!(ours.contains("Total: 2"), "{ours}");
    assert!(ours.contains("TASK_EXECUTION_EXCEPTION"), "{ours}");

    std::fs::write(&go, b"").expect("go");
    let status = driver.wait().expect("driver");
    assert!(status.success(), "driver: {status}");
    // The driver gone, its job is listed as ended.
    let jobs = stdout_of(
        ray(&cluster, &["list", "jobs", "--format", "json"]),
        "ray list jobs",
    );
    let jobs: Vec<Value> = serde_json::from_str(&jobs).expect("json list");
    assert!(
        jobs.iter()
            .any(|j| j["status"] == "SUCCEEDED" && j["end_time"].is_number()),
        "{jobs:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_state_api_needs_the_token_and_refuses_bad_requests() {
    let cluster = TestCluster::start(0, 1, 5000);
    let url = |path: &str| format!("{}{path}", cluster.dashboard);
    let bearer = format!("Bearer {}", cluster.token);
    let auth = [("Authorization", bearer.as_str())];

    // No token: 401; a wrong one: 403 (Ray's answers); the token: 200.
    assert_eq!(http_get(&url("/api/v0/nodes"), &[]).0, 401);
    assert_eq!(
        http_get(&url("/api/v0/nodes"), &[("Authorization", "Bearer nope")]).0,
        403
    );
    assert_eq!(http_get(&url("/api/version"), &[]).0, 401);
    let (code, body) = http_get(&url("/api/v0/nodes"), &auth);
    assert_eq!(code, 200, "{body}");
    // Also as the cookie a browser keeps, and as Ray's proxy header.
    let cookie = format!("ray-authentication-token={}", cluster.token);
    assert_eq!(
        http_get(&url("/api/v0/nodes"), &[("Cookie", &cookie)]).0,
        200
    );
    assert_eq!(
        http_get(&url("/api/v0/nodes"), &[("X-Ray-Authorization", &bearer)]).0,
        200
    );
    // The public pages: a login page without the token, no data on it.
    let (code, page) = http_get(&url("/"), &[]);
    assert_eq!(code, 401);
    assert!(page.contains("token") && !page.contains(&cluster.token));
    assert_eq!(http_get(&url("/api/healthz"), &[]).0, 200);

    // Bad requests: 4xx with a reason, and the server keeps serving.
    for (path, code, reason) in [
        ("/api/v0/secrets", 404, "unknown resource"),
        ("/api/v0/tasks?limit=100001", 400, "exceeds"),
        ("/api/v0/tasks?limit=lots", 400, "whole number"),
        ("/api/v0/tasks?detail=perhaps", 400, "true or false"),
        (
            "/api/v0/tasks?filter_keys=state&filter_predicates=%3D",
            400,
            "as many times",
        ),
        (
            "/api/v0/tasks?filter_keys=nope&filter_predicates=%3D&filter_values=1",
            400,
            "not supported",
        ),
        (
            "/api/v0/tasks?filter_keys=state&filter_predicates=%3E&filter_values=1",
            400,
            "predicate",
        ),
        ("/api/v0/nodes/summarize", 404, "no summary"),
        ("/no/such/thing", 404, "no such endpoint"),
    ] {
        let (got, body) = http_get(&url(path), &auth);
        assert_eq!(got, code, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).expect("json error");
        assert_eq!(body["result"], false, "{path}");
        assert!(
            body["msg"].as_str().is_some_and(|m| m.contains(reason)),
            "{path}: {body}"
        );
    }
    let (code, body) = http_get(&url("/api/version"), &auth);
    assert_eq!(code, 200);
    let version: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(version["ray_version"], "2.60.0");
}
