//! Actors on a cluster of separate `rayish` node processes over QUIC, driven by
//! `tests/drivers/actor_driver.rs`: call order under concurrent callers, named and detached
//! actors seen from other drivers, restarts after SIGKILL and after a node's death,
//! `kill`, failing constructors, dropped handles, resources held for life.

use rayish_suite::{run_for_result, TestCluster};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn actor_driver(cluster: &TestCluster, args: &[&str]) -> Value {
    run_for_result(cluster.driver("actor_driver").args(args))
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn process_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn calls_from_concurrent_callers_keep_each_callers_order() {
    let cluster = TestCluster::start(2, 2, 3000);
    let r = actor_driver(&cluster, &["basics", "--callers", "6", "--calls", "100"]);
    assert_eq!(r["in_order"], true, "{r}");
    assert_eq!(r["entries"], 600, "{r}");
    assert_eq!(r["callers_seen"], 6, "{r}");
    assert_eq!(r["totals"], serde_json::json!([11, 13, 16, 20, 25]), "{r}");
    // A handle inside a Vec reached a task, which called both actors.
    assert_eq!(r["sums"], serde_json::json!([1025, 1100]), "{r}");
    assert_eq!(r["byte_sum_ok"], true, "a 3 MB reference argument: {r}");
    assert!(text(&r["odd"]).contains("3 is odd"), "{r}");
    assert_eq!(r["even"], 4, "{r}");
    assert!(text(&r["panic"]).contains("actor method exploded"), "{r}");
    assert_eq!(
        r["after_panic"], 1025,
        "the actor lives on after a panic: {r}"
    );
}

#[test]
fn named_actors_are_found_from_other_drivers_and_detached_ones_outlive_their_creator() {
    let cluster = TestCluster::start(1, 2, 3000);
    // Detached: the creating driver exits; the actor stays, with its state.
    let created = actor_driver(&cluster, &["named", "--name", "keeper", "--detached"]);
    assert_eq!(created["total"], 5, "{created}");
    assert!(
        text(&created["twin"]).contains("already taken by a live actor"),
        "{created}"
    );
    let pid = created["pid"].as_u64().expect("pid");
    let found = actor_driver(&cluster, &["lookup", "--name", "keeper"]);
    assert_eq!(found["found"], true, "{found}");
    assert_eq!(found["total"], 6, "state kept across drivers: {found}");
    assert_eq!(found["pid"], pid, "{found}");
    assert!(process_alive(pid));
    let status = cluster.status().expect("status");
    assert_eq!(status["actors"], 1, "{status}");
    // Killed by a third driver: gone, and its name free.
    let killed = actor_driver(&cluster, &["lookup", "--name", "keeper", "--kill"]);
    assert_eq!(killed["total"], 7, "{killed}");
    wait_until("the detached actor's process to end", || {
        !process_alive(pid)
    });
    let gone = actor_driver(&cluster, &["lookup", "--name", "keeper"]);
    assert_eq!(gone["found"], false, "{gone}");
    assert!(text(&gone["error"]).contains("no live actor"), "{gone}");

    // Not detached: found while its creator runs, gone with it.
    let go = cluster.root().join("go-ephemeral");
    let go_arg = go.to_string_lossy().into_owned();
    let (mut creator, mut lines) = cluster.spawn_driver(
        "actor_driver",
        ["named", "--name", "ephemeral", "--go", go_arg.as_str()],
    );
    let line = lines
        .find_map(|l| l.strip_prefix("RESULT ").map(str::to_string))
        .expect("the creator's RESULT");
    let created: Value = serde_json::from_str(&line).expect("json");
    let pid = created["pid"].as_u64().expect("pid");
    let found = actor_driver(&cluster, &["lookup", "--name", "ephemeral"]);
    assert_eq!(found["found"], true, "{found}");
    assert_eq!(found["total"], 6, "{found}");
    std::fs::write(&go, b"").expect("go");
    assert!(creator.wait().expect("creator exits").success());
    wait_until("the actor to end with its driver", || !process_alive(pid));
    let gone = actor_driver(&cluster, &["lookup", "--name", "ephemeral"]);
    assert_eq!(gone["found"], false, "{gone}");
    let status = cluster.status().expect("status");
    assert_eq!(status["actors"], 0, "{status}");
}

#[test]
fn a_sigkilled_actor_restarts_until_max_restarts_then_calls_get_actor_died() {
    let cluster = TestCluster::start(1, 2, 3000);
    let r = actor_driver(&cluster, &["restart", "--max-restarts", "2"]);
    let pids: Vec<u64> = r["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(pids.len(), 3, "{r}");
    assert!(
        pids[0] != pids[1] && pids[1] != pids[2],
        "a new process each time: {r}"
    );
    // A restarted actor starts again from its constructor.
    assert_eq!(r["totals_after_restart"], serde_json::json!([0, 0]), "{r}");
    let pending = r["pending"].as_array().expect("pending");
    assert_eq!(pending.len(), 10);
    let died = pending
        .iter()
        .map(text)
        .filter(|t| t.contains("died") && t.contains("no restart is left"))
        .count();
    let finished = pending.iter().map(text).filter(|t| t == "ok: 200").count();
    assert_eq!(
        died + finished,
        10,
        "every pending call ended, none hung: {r}"
    );
    assert!(died >= 1, "{r}");
    let after = text(&r["after"]);
    assert!(
        after.contains("no restart is left") && after.contains("SIGKILL"),
        "{r}"
    );
}

#[test]
fn kill_failed_constructors_and_dropped_handles_end_actors() {
    let cluster = TestCluster::start(1, 2, 3000);
    let r = actor_driver(&cluster, &["kill"]);
    for p in r["pending"].as_array().expect("pending") {
        assert!(text(p).contains("killed with rayish::kill"), "{r}");
    }
    assert!(
        text(&r["after_kill"]).contains("killed with rayish::kill"),
        "{r}"
    );
    assert_eq!(r["killed_process_gone"], true, "{r}");
    assert!(text(&r["broken_ready"]).contains("no good reason"), "{r}");
    assert!(
        text(&r["broken_call"]).contains("ActorDied")
            || text(&r["broken_call"]).contains("died: its creation failed"),
        "{r}"
    );
    assert_eq!(r["dropped_process_gone"], true, "{r}");
    let status = cluster.status().expect("status");
    assert_eq!(status["actors"], 0, "{status}");
}

#[test]
fn an_actor_holds_its_resources_for_life() {
    let mut cluster = TestCluster::start(0, 2, 3000);
    cluster.join("127.0.0.5", 1, &["--resources", r#"{"special": 1}"#]);
    let special = cluster.node_id_at("127.0.0.5").expect("the special node");
    let r = actor_driver(&cluster, &["placed"]);
    assert_eq!(r["node"], special.as_str(), "{r}");
    assert_eq!(r["second_waited"], true, "one unit, held by the first: {r}");
    assert_eq!(r["second_node"], special.as_str(), "{r}");
}

#[test]
fn an_actor_whose_node_dies_is_restarted_on_another() {
    let mut cluster = TestCluster::start(0, 1, 1500);
    cluster.join("127.0.0.5", 1, &["--resources", r#"{"spot": 1}"#]);
    cluster.join("127.0.0.6", 1, &["--resources", r#"{"spot": 1}"#]);
    let at5 = cluster.node_id_at("127.0.0.5").expect("node 5");
    let go = cluster.root().join("go-survive");
    let go_arg = go.to_string_lossy().into_owned();
    let (driver, mut lines) =
        cluster.spawn_driver("actor_driver", ["survive", "--go", go_arg.as_str()]);
    let first = lines
        .find_map(|l| l.strip_prefix("NODE ").map(str::to_string))
        .expect("the actor's first node");
    let victim = if first == at5 { 1 } else { 2 };
    cluster.kill_node(victim);
    std::fs::write(&go, b"").expect("go");
    let r = rayish_suite::finish_scenario(driver, lines);
    assert_eq!(r["first"], first.as_str(), "{r}");
    assert!(r["second"] != r["first"], "restarted elsewhere: {r}");
    assert_eq!(
        r["total_after"], 0,
        "a restart starts from the constructor: {r}"
    );
}

#[test]
fn a_driver_s_named_actor_keeps_its_state_across_a_head_restart() {
    // The head's own node has no `spot`: the actor lives on the other node, which
    // outlives the head.
    let mut cluster = TestCluster::start(0, 1, 2000);
    cluster.join("127.0.0.5", 1, &["--resources", r#"{"spot": 1}"#]);
    let go = cluster.root().join("go-restart");
    let go_arg = go.to_string_lossy().into_owned();
    let (driver, mut lines) = cluster.spawn_driver(
        "actor_driver",
        ["survive", "--go", go_arg.as_str(), "--name", "journal"],
    );
    let first = lines
        .find_map(|l| l.strip_prefix("NODE ").map(str::to_string))
        .expect("the actor's first node");
    cluster.restart_head_after(2, Duration::from_secs(2));
    // Calls made before the driver is back would be lost (see README): wait for it.
    wait_until("the driver to reconnect", || {
        cluster
            .status()
            .is_some_and(|s| s["drivers"].as_u64() == Some(1))
    });
    std::fs::write(&go, b"").expect("go");
    let r = rayish_suite::finish_scenario(driver, lines);
    assert_eq!(r["first"], first.as_str(), "{r}");
    assert_eq!(r["second"], first.as_str(), "the same node: {r}");
    assert_eq!(r["total_after"], 5, "its count survived the restart: {r}");
    assert_eq!(r["by_name"], 5, "its name too: {r}");
    assert_eq!(r["ready"], "ok: ()", "its handle object too: {r}");
    // Its driver is gone: the actor ends with the job.
    wait_until("the driver's actor to end", || {
        cluster
            .status()
            .is_some_and(|s| s["actors"].as_u64() == Some(0))
    });
}

/// How the head restart goes in [`calls_across_a_head_restart`].
enum Restart {
    /// Killed, started again 2 s later; the actor's node reconnects at once.
    Plain,
    /// The actor's node is stopped from the kill until the driver is back.
    NodeAfterDriver,
}

/// The `in-flight` scenario: 30 slow calls in flight when the head is killed, 30
/// more made while it is away; each must run once, in order, in the same process.
fn calls_across_a_head_restart(restart: Restart) {
    // The head's own node has no `spot`: the actor lives on the other node, which
    // outlives the head.
    let mut cluster = TestCluster::start(0, 1, 4000);
    cluster.join("127.0.0.5", 1, &["--resources", r#"{"spot": 1}"#]);
    let go = cluster.root().join("go-in-flight");
    let go_arg = go.to_string_lossy().into_owned();
    let (driver, mut lines) =
        cluster.spawn_driver("actor_driver", ["in-flight", "--go", go_arg.as_str()]);
    assert!(lines.any(|l| l == "SENT"), "the driver sent its calls");
    // Some calls have run, one runs, the rest wait on the node when the head dies.
    std::thread::sleep(Duration::from_millis(700));
    let node = cluster.nodes[1].id() as i32;
    cluster.kill_node(0);
    match restart {
        Restart::Plain => {
            std::fs::write(&go, b"").expect("go");
            std::thread::sleep(Duration::from_secs(2));
            cluster.start_head_again(2);
        }
        Restart::NodeAfterDriver => {
            // SAFETY: kill(2) of a node process this test started (still its child).
            unsafe { libc::kill(node, libc::SIGSTOP) };
            std::fs::write(&go, b"").expect("go");
            std::thread::sleep(Duration::from_millis(500));
            cluster.start_head_again(1);
            wait_until("the driver to reconnect", || {
                cluster
                    .status()
                    .is_some_and(|s| s["drivers"].as_u64() == Some(1))
            });
            // SAFETY: as above.
            unsafe { libc::kill(node, libc::SIGCONT) };
        }
    }
    let r = rayish_suite::finish_scenario(driver, lines);
    let expected: Vec<String> = (1..=60).map(|n| n.to_string()).collect();
    assert_eq!(r["counts"], json!(expected), "each call ran once: {r}");
    assert_eq!(
        r["order"],
        json!((0..60).collect::<Vec<u64>>()),
        "in order: {r}"
    );
    assert_eq!(r["same_process"], true, "{r}");
}

#[test]
fn actor_calls_in_flight_or_made_while_the_head_is_away_run_once_each_in_order() {
    calls_across_a_head_restart(Restart::Plain);
}

#[test]
fn actor_calls_that_end_while_their_node_is_away_run_once_when_the_driver_is_back_first() {
    // The driver's calls wait for the node; calls the actor finished meanwhile reach
    // the new head only after the node's inventory (they are in none), so they must
    // not be run again.
    calls_across_a_head_restart(Restart::NodeAfterDriver);
}

#[test]
fn a_detached_actor_keeps_its_state_across_a_head_restart_and_is_restarted_if_its_node_is_gone() {
    // The head's own node has no `spot`: the actor lives on the other node.
    let mut cluster = TestCluster::start(0, 1, 2000);
    cluster.join("127.0.0.5", 1, &["--resources", r#"{"spot": 1}"#]);
    let created = actor_driver(
        &cluster,
        &[
            "named",
            "--name",
            "counter",
            "--detached",
            "--max-restarts",
            "1",
            "--resource",
            "spot",
        ],
    );
    assert_eq!(created["total"], 5, "{created}");
    let pid = created["pid"].as_u64().expect("pid");

    // The head killed and back 2 s later: its node kept the actor, with its count.
    cluster.restart_head_after(2, Duration::from_secs(2));
    let found = actor_driver(&cluster, &["lookup", "--name", "counter"]);
    assert_eq!(found["found"], true, "{found}");
    assert_eq!(found["total"], 6, "the count survived: {found}");
    assert_eq!(found["pid"], pid, "the same process: {found}");

    // The head killed again, and the actor's node with it: the restarted head
    // creates the actor again (its one restart) on a node that has `spot`.
    cluster.kill_node(0);
    // Killed and reaped, then off the list, so that the cluster counts one node less.
    let mut gone = cluster.nodes.remove(1);
    let _ = gone.kill();
    let _ = gone.wait();
    wait_until("the actor's process to end with its node", || {
        !process_alive(pid)
    });
    cluster.start_head_again(1);
    cluster.join("127.0.0.6", 1, &["--resources", r#"{"spot": 1}"#]);
    let found = actor_driver(&cluster, &["lookup", "--name", "counter"]);
    assert_eq!(found["found"], true, "{found}");
    assert_eq!(
        found["total"], 1,
        "a restart starts from the constructor: {found}"
    );
    assert_ne!(found["pid"], pid, "{found}");
    let status = cluster.status().expect("status");
    assert_eq!(status["actors"], 1, "{status}");
}
