//! The log API: `rayish logs` and Ray's endpoints (`/api/v0/logs`,
//! `/api/v0/logs/{file,stream}`) list a node's log files as they are on its disk,
//! print a worker's log by name, pid or tail, and follow a file as it grows; a name
//! outside the log directory and requests without a node or the token are refused.

use rayish_suite::{http_get, stdout_of, TestCluster};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn rayish_logs(cluster: &TestCluster, args: &[&str]) -> Command {
    let mut cmd = Command::new(rayish_suite::rayish_bin());
    cmd.arg("logs")
        .args(args)
        .args(["--address", &cluster.dashboard])
        .env("RAYISH_TOKEN", &cluster.token);
    cmd
}

fn get(cluster: &TestCluster, path: &str, with_token: bool) -> (u16, String) {
    let bearer = format!("Bearer {}", cluster.token);
    let headers: &[(&str, &str)] = if with_token {
        &[("Authorization", &bearer)]
    } else {
        &[]
    };
    http_get(&format!("{}{path}", cluster.dashboard), headers)
}

#[test]
fn logs_are_listed_printed_and_followed_as_rays_are() {
    let cluster = TestCluster::start(1, 2, 5000);
    let out = cluster
        .driver("cluster_driver")
        .args(["print", "--n", "24"])
        .env("TEST_NO_LOG_TO_DRIVER", "1")
        .output()
        .expect("driver");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node = cluster.node_id_at("127.0.0.3").expect("node id");
    let dir = cluster.session_of(1).join("logs");

    // The listing is the node's log directory, by Ray's categories.
    let (code, body) = get(
        &cluster,
        &format!("/api/v0/logs?node_id={node}&glob=worker-*"),
        true,
    );
    assert_eq!(code, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).expect("json");
    let listed = &listed["data"]["result"];
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("logs")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("worker-"))
        .collect();
    on_disk.sort();
    let mut got: Vec<String> = ["worker_out", "worker_err"]
        .iter()
        .flat_map(|c| listed[c].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    got.sort();
    assert!(!on_disk.is_empty(), "no worker logs in {}", dir.display());
    assert_eq!(got, on_disk);

    // A worker's stdout that has the tasks' lines, named as Ray names it.
    let (file, text) = on_disk
        .iter()
        .filter(|f| f.ends_with(".out"))
        .map(|f| {
            (
                f.clone(),
                std::fs::read_to_string(dir.join(f)).unwrap_or_default(),
            )
        })
        .find(|(_, t)| t.contains("says hello"))
        .expect("a worker log with the tasks' lines");
    let pid: u32 = file
        .trim_end_matches(".out")
        .rsplit('-')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{file} is not worker-<id>-<job>-<pid>.out"));
    let last_two: Vec<&str> = text.lines().rev().take(2).collect();

    // By name, tailed: the last line only.
    let tail = stdout_of(
        rayish_logs(&cluster, &["--node-id", &node, &file, "--tail", "1"])
            .output()
            .expect("rayish logs"),
        "rayish logs FILE",
    );
    assert_eq!(tail.trim_end(), last_two[0], "{tail}");
    // By pid, whole: the file as it is on disk.
    let whole = stdout_of(
        rayish_logs(
            &cluster,
            &[
                "--node-id",
                &node,
                "--pid",
                &pid.to_string(),
                "--tail",
                "-1",
            ],
        )
        .output()
        .expect("rayish logs --pid"),
        "rayish logs --pid",
    );
    assert_eq!(whole, text);
    // Several matches: listed, not printed.
    let many = stdout_of(
        rayish_logs(&cluster, &["--node-id", &node, "worker-*"])
            .output()
            .expect("rayish logs GLOB"),
        "rayish logs GLOB",
    );
    assert!(
        many.contains("worker_out:") && many.contains(&file),
        "{many}"
    );

    // Ray's endpoint as Ray's SDK calls it (`ray logs` itself first asks a GCS for
    // the dashboard's address, which a rayish head does not serve).
    let (code, body) = get(
        &cluster,
        &format!("/api/v0/logs/file?node_id={node}&filename={file}&lines=2&timeout=30&suffix=out"),
        true,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, format!("{}\n{}\n", last_two[1], last_two[0]));

    // Following a file of the head as it grows.
    let head_logs = cluster.session_of(0).join("logs");
    let followed = head_logs.join("follow-test.log");
    std::fs::write(&followed, "before\n").expect("write");
    let mut follower = rayish_logs(
        &cluster,
        &["follow-test.log", "--follow", "--interval", "0.1"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("rayish logs --follow");
    let (tx, rx) = mpsc::channel();
    let stdout = follower.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let expect = |want: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line == want => return,
                Ok(_) => continue,
                Err(_) => panic!("the follower did not print {want:?}"),
            }
        }
    };
    expect("before");
    for line in ["appended 1", "appended 2"] {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&followed)
            .expect("open");
        writeln!(f, "{line}").expect("append");
        expect(line);
    }
    let _ = follower.kill();
    let _ = follower.wait();

    // Refusals: no node, a path out of the log directory, no token.
    let (code, body) = get(&cluster, "/api/v0/logs", true);
    assert_eq!(code, 400, "{body}");
    let (code, body) = get(
        &cluster,
        &format!("/api/v0/logs/file?node_id={node}&filename=..%2F..%2F..%2Fetc%2Fpasswd"),
        true,
    );
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("not a log file"), "{body}");
    assert!(!body.contains("root:"), "{body}");
    let (code, _) = get(
        &cluster,
        &format!("/api/v0/logs/file?node_id={node}&filename={file}"),
        false,
    );
    assert_eq!(code, 401);
}
