//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, installed
//! by scripts/setup-cluster-tests.sh) signs in with the token and renders each page of
//! a running two-node cluster: the nodes, the running job, task counts by function, a
//! failed task's error and node, the named actor, the log files and the timeline. A
//! JavaScript error on any page fails the test; screenshots are saved under
//! `target/release/dashboard/` (README shows one). Also `rayish timeline -o` writes the tasks'
//! Chrome trace. A second test restarts the head and finds the restart on the
//! overview, with the node back as itself, then its next incarnation after a pause.

use rayish_suite::{rand_u64, target_dir, TestCluster};
use serde_json::Value;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> &'static str {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(c).exists() {
            return c;
        }
    }
    panic!("no chromium (scripts/setup-cluster-tests.sh installs Debian's)")
}

/// A page, readable by this user only, that sends the browser to the dashboard's
/// `/?token=` sign-in link and on to `view`: the token never goes on a command line.
fn sign_in_page(dir: &Path, cluster: &TestCluster, view: &str) -> PathBuf {
    let path = dir.join(format!("open-{:x}.html", rand_u64()));
    let url = format!("{}/?token={}#{view}", cluster.dashboard, cluster.token);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("sign-in page");
    use std::io::Write;
    write!(
        f,
        "<!doctype html><script>location.replace({});</script>",
        serde_json::to_string(&url).expect("json")
    )
    .expect("write");
    path
}

/// Chromium's rendering of the dashboard's `view` once its data has loaded; with a
/// screenshot of it saved too.
fn render(dir: &Path, cluster: &TestCluster, view: &str) -> String {
    render_as(dir, cluster, view, view.split('?').next().unwrap_or(view))
}

/// As [`render`], the screenshot saved as `<shot>.png`.
fn render_as(dir: &Path, cluster: &TestCluster, view: &str, shot: &str) -> String {
    let page = sign_in_page(dir, cluster, view);
    let profile = dir.join(format!("profile-{:x}", rand_u64()));
    let shots = target_dir().join("dashboard");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let common = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1500,1000",
            // Long enough for the sign-in redirect and a few refreshes.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    };
    let mut dump = Command::new(chromium());
    common(&mut dump);
    let out = dump
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut screenshot = Command::new(chromium());
    common(&mut screenshot);
    let png = shots.join(format!("{shot}.png"));
    let out = screenshot
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "screenshot of {view} failed");
    let bytes = std::fs::read(&png).expect("screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{view}.png"
    );
    assert!(
        !dom.contains("<div class=\"js-error\">"),
        "JavaScript error on {view}:\n{dom}"
    );
    let updated = dom
        .split_once("<span id=\"updated\">")
        .and_then(|(_, rest)| rest.split_once('<'))
        .map(|(text, _)| text)
        .unwrap_or_default();
    assert!(
        updated.starts_with("updated "),
        "the {view} page did not load its data ({updated:?}):\n{dom}"
    );
    dom
}

#[test]
fn the_dashboard_shows_a_running_cluster_in_a_browser() {
    let cluster = TestCluster::start(1, 2, 5000);
    let dir = std::env::temp_dir().join(format!("rayish-dashboard-{:x}", rand_u64()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .expect("private scratch dir");
    let go = dir.join("go");
    let (mut driver, result) = cluster.start_state_scenario(40, &go);
    let actor = result["actor"].as_str().expect("actor id");

    let overview = render(&dir, &cluster, "overview");
    for want in [
        "127.0.0.2",
        "127.0.0.3",
        "(head)",
        "ALIVE",
        "tasks finished",
        "GiB",
    ] {
        assert!(
            overview.contains(want),
            "overview lacks {want:?}:\n{overview}"
        );
    }

    let tasks = render(&dir, &cluster, "tasks");
    for want in [
        "where_am_i",
        "negative input -7",
        "TASK_EXECUTION_EXCEPTION",
        "FAILED",
        "FINISHED",
    ] {
        assert!(tasks.contains(want), "tasks page lacks {want:?}:\n{tasks}");
    }
    // The failed task's row names its node by IP.
    let failed_row = tasks
        .split("<tr>")
        .find(|row| row.contains("negative input -7"))
        .expect("the failed task's row");
    assert!(
        failed_row.contains("127.0.0.2") || failed_row.contains("127.0.0.3"),
        "{failed_row}"
    );

    let actors = render(&dir, &cluster, "actors");
    for want in ["state-board", "Board", "ALIVE", &actor[..12]] {
        assert!(
            actors.contains(want),
            "actors page lacks {want:?}:\n{actors}"
        );
    }

    let jobs = render(&dir, &cluster, "jobs");
    assert!(
        jobs.contains("RUNNING") && jobs.contains("cluster_driver"),
        "{jobs}"
    );

    let logs = render(&dir, &cluster, "logs");
    assert!(
        logs.contains("worker_out") && logs.contains("worker-"),
        "{logs}"
    );
    // A file opened from the page streams in: the head's log, whose last line the
    // page must show.
    let head_log = format!("rayish-head-{}.log", cluster.nodes[0].id());
    let on_disk = std::fs::read_to_string(cluster.session_of(0).join("logs").join(&head_log))
        .expect("read the head's log");
    let last = on_disk.lines().last().expect("a line in the head's log");
    let opened = render(&dir, &cluster, &format!("logs?file={head_log}"));
    let shown = opened
        .split_once("<pre id=\"log-text\">")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let escaped = last
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(shown.contains(&escaped), "{last:?} not shown:\n{opened}");

    let timeline = render(&dir, &cluster, "timeline");
    assert!(
        timeline.contains("<svg") && timeline.contains("<rect"),
        "{timeline}"
    );
    assert!(timeline.contains("worker:"), "{timeline}");

    let objects = render(&dir, &cluster, "objects");
    assert!(objects.contains("Spilled to disk"), "{objects}");

    // `rayish timeline -o` writes the same trace: spans of the tasks that ran.
    let trace = dir.join("trace.json");
    let out = Command::new(rayish_suite::rayish_bin())
        .args(["timeline", "--address", &cluster.dashboard, "-o"])
        .arg(&trace)
        .env("RAYISH_TOKEN", &cluster.token)
        .output()
        .expect("rayish timeline");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&trace).expect("trace")).expect("json");
    let spans = events
        .iter()
        .filter(|e| {
            e["ph"] == "X"
                && e["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("where_am_i"))
        })
        .count();
    assert_eq!(spans, 40, "{events:?}");

    std::fs::write(&go, b"").expect("go");
    assert!(driver.wait().expect("driver").success());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_dashboard_shows_head_restarts_and_node_incarnations() {
    let mut cluster = TestCluster::start(1, 1, 5000);
    let dir = std::env::temp_dir().join(format!("rayish-dashboard-{:x}", rand_u64()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .expect("private scratch dir");
    let node_row = |page: &str, ip: &str, state: &str| -> String {
        page.split("<tr>")
            .find(|row| row.contains(&format!("<td>{ip}</td>")) && row.contains(state))
            .unwrap_or_else(|| panic!("no {state} row for {ip}:\n{page}"))
            .to_string()
    };

    let before = render_as(&dir, &cluster, "overview", "overview-first-start");
    assert!(
        before.contains("head restarts (up since"),
        "no restart card:\n{before}"
    );
    let row = node_row(&before, "127.0.0.3", "s-ALIVE");
    assert!(row.contains("ALIVE</span></td><td>1</td>"), "{row}");

    cluster.restart_head(2);
    let after = render_as(&dir, &cluster, "overview", "overview-restarted");
    assert!(
        after.contains("<div class=\"n s-RESTARTING\">1</div><div class=\"l\">head restarts, last"),
        "the restart is not shown:\n{after}"
    );
    // The node waited for the head and came back as itself, with its work.
    let row = node_row(&after, "127.0.0.3", "s-ALIVE");
    assert!(row.contains("ALIVE</span></td><td>1</td>"), "{row}");
    assert!(
        !after
            .split("<tr>")
            .any(|row| row.contains("<td>127.0.0.3</td>") && row.contains("s-DEAD")),
        "the node is listed as dead too:\n{after}"
    );

    // Paused past the node timeout, it is declared dead and joins again as its next
    // incarnation; the one before is listed as dead, with the cause.
    let pid = cluster.nodes[1].id() as i32;
    // SAFETY: kill(2) of a node process this test started (still its child).
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(std::time::Duration::from_millis(6500));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    cluster.wait_for_nodes(2);
    let later = render_as(&dir, &cluster, "overview", "overview-incarnations");
    let row = node_row(&later, "127.0.0.3", "s-ALIVE");
    assert!(row.contains("ALIVE</span></td><td>2</td>"), "{row}");
    let row = node_row(&later, "127.0.0.3", "s-DEAD");
    assert!(
        row.contains("DEAD</span></td><td>1</td>") && row.contains("no heartbeat"),
        "{row}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
