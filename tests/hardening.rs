//! Issue 17's findings, each reproduced against real `rayish` processes: pauses of
//! the head and of nodes, the binary cache, secrets, weak tokens, memory and log
//! growth under repeated or hostile requests, leftovers, bound addresses.

use rayish_suite::{rayish_bin, rss_bytes, TestCluster};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child process of this test.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Stops process `pid` for `pause`, then lets it go on.
fn pause(pid: u32, pause: Duration) {
    signal(pid, libc::SIGSTOP);
    std::thread::sleep(pause);
    signal(pid, libc::SIGCONT);
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// (id, alive) of every node `rayish status` lists at `ip`.
/// The nodes listed at `ip`: id, alive, incarnation.
fn nodes_at(cluster: &TestCluster, ip: &str) -> Vec<(String, bool, u64)> {
    let Some(status) = cluster.status() else {
        return Vec::new();
    };
    status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            n["address"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("{ip}:")))
        })
        .map(|n| {
            (
                n["node_id"].to_string(),
                n["alive"] == true,
                n["incarnation"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn hello_works(cluster: &TestCluster) {
    let out = rayish_suite::output_within(
        cluster
            .driver("hello")
            .args(["--address", &cluster.address]),
        Duration::from_secs(60),
    )
    .expect("a new driver hung");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("hello from rayish"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_paused_head_loses_no_node_and_serves_new_drivers() {
    // Finding 1: a 7 s SIGSTOP of the head took the whole cluster down for good.
    let cluster = TestCluster::start(2, 1, 2000);
    let head = cluster.nodes[0].id();
    for secs in [7, 30] {
        pause(head, Duration::from_secs(secs));
        // A stalled head must not hold its own silence against the nodes.
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(
            cluster.alive_nodes(),
            3,
            "after a {secs} s pause of the head"
        );
        hello_works(&cluster);
        for (i, node) in cluster.nodes.iter().enumerate() {
            assert!(
                std::fs::metadata(format!("/proc/{}", node.id())).is_ok(),
                "node {i} exited after a {secs} s pause of the head"
            );
        }
    }
    assert!(rayish_suite::read_logs(cluster.root()).contains("the head was stalled"));
}

#[test]
fn a_paused_node_rejoins_as_a_new_node() {
    // Finding 2: a node paused past the node timeout exited with status 0 and never
    // came back.
    let mut cluster = TestCluster::start(1, 1, 2000);
    let before = nodes_at(&cluster, "127.0.0.3");
    assert_eq!(before.len(), 1, "{before:?}");
    let old_id = before[0].0.clone();
    pause(cluster.nodes[1].id(), Duration::from_secs(7));
    wait_until(
        "a new incarnation of the paused node",
        Duration::from_secs(30),
        || {
            let now = nodes_at(&cluster, "127.0.0.3");
            now.iter().any(|(id, alive, _)| id == &old_id && !alive)
                && now.iter().any(|(id, alive, _)| id != &old_id && *alive)
        },
    );
    // The same process, its next incarnation.
    let mut lives: Vec<(bool, u64)> = nodes_at(&cluster, "127.0.0.3")
        .into_iter()
        .map(|(_, alive, incarnation)| (alive, incarnation))
        .collect();
    lives.sort();
    assert_eq!(lives, vec![(false, 1), (true, 2)]);
    assert!(
        cluster.nodes[1].try_wait().expect("try_wait").is_none(),
        "the node process must live on"
    );
    assert_eq!(cluster.alive_nodes(), 2);
    hello_works(&cluster);
}

#[test]
fn a_running_driver_outlives_pauses_of_the_head_and_of_itself() {
    // "The driver side likewise": a job in flight while the head stalls past the node
    // timeout, and while the driver itself stalls, finishes with every result right.
    let cluster = TestCluster::start(2, 1, 2000);
    let go = cluster.root().join("go");
    let (driver, mut lines) = cluster.spawn_scenario([
        std::ffi::OsStr::new("long"),
        std::ffi::OsStr::new("--n"),
        std::ffi::OsStr::new("300"),
        std::ffi::OsStr::new("--go"),
        go.as_os_str(),
    ]);
    lines.find(|l| l.starts_with("STAGE1")).expect("stage 1");
    pause(cluster.nodes[0].id(), Duration::from_secs(7));
    pause(driver.id(), Duration::from_secs(7));
    std::fs::write(&go, b"").expect("write the go file");
    let r = rayish_suite::finish_scenario(driver, lines);
    assert_eq!(r["wrong"], 0, "{r}");
    assert_eq!(r["sum_wrong"], 0, "{r}");
    assert_eq!(cluster.alive_nodes(), 3);
}

#[test]
fn a_node_that_gives_up_on_the_head_exits_with_an_error() {
    let mut cluster = TestCluster::start_with(1, 1, 2000, &["--head-reconnect-timeout", "3"]);
    cluster.kill_node(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = cluster.nodes[1].try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the node waits for the head forever"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.success(), "gave up, so not status 0: {status:?}");
}

#[test]
fn a_binary_planted_in_the_cache_is_refused_not_run() {
    // Finding 3: a file planted under the SHA-256 name of a driver was executed.
    let cluster = TestCluster::start(1, 1, 5000);
    let hello = rayish_suite::example_bin("hello");
    let hash = rayish_core::binaries::hash_file(&hello).expect("hash").0;
    let marker = cluster.root().join("planted-ran");
    let cache = cluster.root().join("binaries");
    std::fs::create_dir_all(&cache).expect("cache dir");
    let planted = cache.join(&hash);
    std::fs::write(
        &planted,
        format!("#!/bin/sh\ntouch {}\nexit 1\n", marker.display()),
    )
    .expect("plant");
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    hello_works(&cluster);
    assert!(!marker.exists(), "the planted file ran");
    assert_eq!(
        rayish_core::binaries::hash_file(&planted).expect("hash").0,
        hash,
        "the cache holds the real binary now"
    );
    assert!(rayish_suite::read_logs(cluster.root()).contains("refusing a cached binary"));
}

/// Every file under `root` whose bytes contain `secret`.
fn files_holding(root: &Path, secret: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file()
                && std::fs::read(e.path())
                    .is_ok_and(|b| b.windows(secret.len()).any(|w| w == secret.as_bytes()))
            {
                found.push(e.path());
            }
        }
    }
    found
}

fn all_command_lines() -> String {
    let mut all = String::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            all += &String::from_utf8_lossy(&c).replace('\0', " ");
            all.push('\n');
        }
    }
    all
}

#[test]
fn a_cluster_started_as_the_readme_says_keeps_its_token_secret() {
    // Finding 4: the start output file was 0644 with the token in it, and the join
    // command put the token on nodes' command lines.
    let _machine = rayish_suite::exclusive();
    let root = std::env::temp_dir().join(format!("rayish-secret-{:x}", rayish_suite::rand_u64()));
    let port = rayish_suite::free_port("127.0.0.2").to_string();
    let address = format!("127.0.0.2:{port}");
    let rayish = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(rayish_bin())
            .args(args)
            .env("RAYISH_TEMP_DIR", &root)
            .env_remove("RAYISH_TOKEN")
            .envs(env.iter().copied())
            .output()
            .expect("run rayish");
        assert!(
            out.status.success(),
            "rayish {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let printed = rayish(
        &[
            "start",
            "--head",
            "--port",
            &port,
            "--node-ip-address",
            "127.0.0.2",
            "--num-cpus",
            "1",
        ],
        &[],
    );
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("current_cluster.json")).expect("cluster record"),
    )
    .expect("record json");
    let token = record["token"].as_str().expect("token").to_string();
    assert!(token.len() >= 32, "{token}");
    let join = printed
        .lines()
        .find(|l| l.contains("rayish start --address"))
        .expect("a join command");
    assert!(
        !join.contains(&token),
        "the join command holds the token: {join}"
    );
    // Join as README says: the token in the environment.
    rayish(
        &[
            "start",
            "--address",
            &address,
            "--node-ip-address",
            "127.0.0.3",
            "--num-cpus",
            "1",
        ],
        &[("RAYISH_TOKEN", &token)],
    );
    let status = rayish(&["status"], &[]);
    assert!(status.contains("127.0.0.3:"), "{status}");

    assert!(
        !all_command_lines().contains(&token),
        "the token is on a command line"
    );
    let holders = files_holding(&root, &token);
    assert!(!holders.is_empty(), "the cluster record holds it");
    for f in &holders {
        let mode = std::fs::metadata(f).expect("stat").mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", f.display());
    }
    let root_mode = std::fs::metadata(&root).expect("stat").mode() & 0o777;
    assert_eq!(root_mode, 0o700, "the temp root is mode {root_mode:o}");
    assert!(
        !std::fs::read_dir(&root)
            .expect("root")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("rayish-start-")),
        "the start output (with the token) was left behind"
    );

    let pids: Vec<u32> = rayish_suite::read_registered_pids(&root);
    assert_eq!(pids.len(), 2, "{pids:?}");
    rayish(&["stop"], &[]);
    // Finding 8: no shared-memory directory of theirs is left.
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| pids.iter().any(|p| n.starts_with(&format!("rayish-{p}-"))))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn weak_tokens_are_refused_unless_allowed() {
    // Finding 5: `--token a` worked.
    let _machine = rayish_suite::exclusive();
    let root = std::env::temp_dir().join(format!("rayish-weak-{:x}", rayish_suite::rand_u64()));
    let port = rayish_suite::free_port("127.0.0.2").to_string();
    let start = |extra: &[&str]| {
        rayish_suite::output_within(
            Command::new(rayish_bin())
                .args(["start", "--head", "--block", "--port", &port])
                .args(["--node-ip-address", "127.0.0.2", "--num-cpus", "1"])
                .args(extra)
                .env("RAYISH_TOKEN", "a")
                .env("RAYISH_TEMP_DIR", &root),
            Duration::from_secs(5),
        )
    };
    let refused = start(&[]).expect("a weak token must be refused at once");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("could be guessed"), "{err}");
    // With --allow-weak-token it starts (and runs until the limit kills it).
    assert!(
        start(&["--allow-weak-token"]).is_none(),
        "it should have kept running"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn token_files_must_be_private() {
    let _machine = rayish_suite::exclusive();
    let root = std::env::temp_dir().join(format!("rayish-tf-{:x}", rayish_suite::rand_u64()));
    std::fs::create_dir_all(&root).expect("root");
    let file = root.join("token");
    std::fs::write(
        &file,
        format!("{:016x}{:016x}\n", rayish_suite::rand_u64(), 7u64),
    )
    .expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = Command::new(rayish_bin())
        .args([
            "start",
            "--block",
            "--address",
            "127.0.0.2:1",
            "--token-file",
        ])
        .arg(&file)
        .env("RAYISH_TEMP_DIR", &root)
        .env_remove("RAYISH_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn status_calls_cost_the_head_no_lasting_memory_and_log_nothing() {
    // Finding 6: 1,600 `rayish status` calls took the head from 8.7 MB to 430 MB, and
    // each logged a false "bad frame" warning.
    let cluster = TestCluster::start(0, 1, 5000);
    let head = cluster.nodes[0].id();
    let call = || {
        let out = cluster.rayish(&["status", "--json"]);
        assert!(out.status.success());
    };
    for _ in 0..50 {
        call();
    }
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_bytes(head);
    for _ in 0..2000 {
        call();
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_bytes(head);
    let growth = after.saturating_sub(before);
    eprintln!("head RSS {before} -> {after} bytes over 2,000 status calls");
    assert!(growth < 20 << 20, "head RSS grew by {growth} bytes");
    let logs = rayish_suite::read_logs(cluster.root());
    assert!(
        !logs.contains("bad frame"),
        "false bad-frame warnings:\n{logs}"
    );
}

#[test]
fn a_flood_of_refused_handshakes_and_junk_packets_barely_grows_the_log() {
    // Finding 7: each refused packet could add a warning line, without bound.
    let cluster = TestCluster::start(0, 1, 5000);
    let head: std::net::SocketAddr = cluster.address.parse().expect("address");
    let log_bytes = || rayish_suite::read_logs(cluster.root()).len();
    let before = log_bytes();
    // 100,000 junk datagrams, many shaped like QUIC long-header packets.
    let sock = std::net::UdpSocket::bind("127.0.0.9:0").expect("bind");
    let mut junk = [0u8; 1200];
    for i in 0..100_000u32 {
        junk[0] = 0xc0 | (i as u8 & 0x3f);
        junk[1..5].copy_from_slice(&1u32.to_be_bytes());
        junk[5..9].copy_from_slice(&i.to_le_bytes());
        let _ = sock.send_to(&junk[..(64 + (i as usize % 1136))], head);
    }
    // 3,000 real handshakes with another cluster's token, from one address.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let tls = rayish_core::transport::tls::ClusterTls::from_token(
            &rayish_core::transport::tls::new_token(),
        )
        .expect("tls");
        let endpoint = rayish_core::transport::make_client_endpoint(
            "127.0.0.9:0".parse().expect("bind"),
            &tls,
            Duration::from_secs(5),
        )
        .expect("endpoint");
        for _ in 0..30 {
            let attempts: Vec<_> = (0..100)
                .map(|_| rayish_core::transport::connect(&endpoint, head, Duration::from_secs(5)))
                .collect();
            for a in attempts {
                assert!(a.await.is_err(), "a wrong token got in");
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let grown = log_bytes().saturating_sub(before);
    eprintln!("the head's log grew by {grown} bytes");
    assert!(grown < 100_000, "log grew by {grown} bytes");
    assert!(
        rayish_suite::read_logs(cluster.root()).contains("refused a connection"),
        "the refusals are still reported"
    );
    assert_eq!(cluster.alive_nodes(), 1, "the head still serves");
}

#[test]
fn drivers_and_workers_bind_the_nodes_address_not_every_interface() {
    // Finding 9: they bound UDP on 0.0.0.0 whatever --node-ip-address said. (And
    // workers' environment holds the derived key, not the token.)
    let cluster = TestCluster::start(0, 1, 5000);
    let (mut driver, mut lines) = cluster.spawn_scenario(["head-dies"]);
    assert!(lines.by_ref().any(|l| l == "WAITING"));
    std::thread::sleep(Duration::from_millis(500));
    let ss = Command::new("ss")
        .args(["-uanp"])
        .output()
        .expect("ss (iproute2)");
    let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
    let worker_pids: Vec<u32> = rayish_suite::children_of(cluster.nodes[0].id());
    assert!(!worker_pids.is_empty(), "no worker process found");
    // Workers get the derived cluster key, never the token itself.
    for pid in &worker_pids {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let environ = String::from_utf8_lossy(&environ);
        assert!(environ.contains("RAYISH_CLUSTER_KEY="), "worker {pid}");
        assert!(
            !environ.contains(&cluster.token),
            "worker {pid} holds the token"
        );
    }
    let mut checked = 0;
    for pid in worker_pids.iter().copied().chain([driver.id()]) {
        for line in ss.lines().filter(|l| l.contains(&format!("pid={pid},"))) {
            checked += 1;
            // State, Recv-Q, Send-Q, Local Address:Port, Peer Address:Port, Process
            let local = line.split_whitespace().nth(3).unwrap_or_default();
            assert!(
                !["0.0.0.0:", "*:", "[::]:"]
                    .iter()
                    .any(|any| local.starts_with(any)),
                "pid {pid} binds every interface: {line}"
            );
        }
    }
    assert!(
        checked >= 2,
        "no sockets of the driver and workers in:\n{ss}"
    );
    let _ = driver.kill();
    let _ = driver.wait();
}

#[test]
fn an_open_client_connection_costs_the_head_little_memory() {
    // Why 1,600 status calls held 430 MB: every connection reserved quinn state for
    // 4,096 concurrent streams (~500 KiB). A status client now closes its connection,
    // and one held open (a client that died, within the idle timeout) costs ~70 KiB.
    let cluster = TestCluster::start(0, 1, 5000);
    let head_pid = cluster.nodes[0].id();
    let head: std::net::SocketAddr = cluster.address.parse().expect("address");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let before = rss_bytes(head_pid);
    let token = cluster.token.clone();
    let conns = rt.block_on(async {
        let tls = rayish_core::transport::tls::ClusterTls::from_token(&token).expect("tls");
        let endpoint = rayish_core::transport::make_client_endpoint(
            "127.0.0.9:0".parse().expect("bind"),
            &tls,
            Duration::from_secs(60),
        )
        .expect("endpoint");
        let mut keep = Vec::new();
        for _ in 0..500 {
            let conn = rayish_core::transport::connect(&endpoint, head, Duration::from_secs(5))
                .await
                .expect("connect");
            let hello = rayish_core::protocol::Hello {
                role: rayish_core::protocol::PeerRole::Client,
                software_version: "0.1.0".into(),
            };
            let mut control = rayish_core::transport::open_control(&conn, hello)
                .await
                .expect("control");
            control
                .sender
                .send(rayish_core::protocol::ToHead::StatusRequest);
            let _ = control.reader.next().await;
            keep.push((conn, control));
        }
        (endpoint, keep)
    });
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_bytes(head_pid);
    let each = after.saturating_sub(before) / 500;
    eprintln!(
        "500 open client connections: head RSS {before} -> {after} ({} KiB each)",
        each / 1024
    );
    assert!(each < 160 << 10, "{} KiB per open connection", each / 1024);
    drop(conns);
}
