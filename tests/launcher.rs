//! The cluster launcher: `rayish up --dry-run` on Ray's own local-provider files, and
//! `rayish up / exec / submit / down` against three "machines" (network namespaces with
//! their own addresses, host names, home, /tmp, /srv and /dev/shm, each running sshd;
//! tests/support/machines.sh), running the faces job across them.
//!
//! Needs root (network namespaces) and scripts/setup-cluster-tests.sh (sshd, rsync);
//! tests/run.sh runs it.

use rayish_suite::cluster_cli as rayish;
use rayish_suite::{assert_same_faces, local_faces_job, submit_faces_job, target_dir, Machines};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cluster")
        .join(name)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "rayish-launcher-{tag}-{:x}",
        rayish_suite::rand_u64()
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn dry_run_accepts_ray_s_local_provider_files_with_rayish_start_commands() {
    let state = temp_dir("dry");
    // Ray's python/ray/autoscaler/local/defaults.yaml and example-full.yaml (container
    // mode), with `ray` → `rayish` in the start commands and their placeholders filled,
    // and example-minimal-manual.yaml as it is.
    for (file, expect) in [
        ("ray-local-defaults.yaml", "workers 0..2 from 2 machine(s)"),
        (
            "ray-local-minimal-manual.yaml",
            "workers 2..2 from 2 machine(s)",
        ),
        (
            "ray-local-example-full.yaml",
            "workers 2..2 from 2 machine(s)",
        ),
    ] {
        let path = fixture(file);
        let out = rayish(&["up", "--dry-run", path.to_str().expect("path")], &state);
        let t = text(&out);
        assert!(out.status.success(), "{file}: {t}");
        assert!(t.contains("valid") && t.contains(expect), "{file}: {t}");
        assert!(
            t.contains("rayish start --address=$RAY_HEAD_IP:6379"),
            "{file}: worker start command: {t}"
        );
        if file.contains("example-full") {
            assert!(
                t.contains("run in container ray_container of rayproject/ray-ml:latest-gpu"),
                "{t}"
            );
        }
    }
}

#[test]
fn dry_run_names_a_misspelled_field_and_its_line() {
    let state = temp_dir("dry-bad");
    let good = std::fs::read_to_string(fixture("ray-local-defaults.yaml")).expect("fixture");
    let dir = temp_dir("dry-bad-file");
    for (from, to, field) in [
        (
            "idle_timeout_minutes:",
            "idle_timout_minutes:",
            "idle_timout_minutes",
        ),
        ("    worker_ips:", "    worker_ip:", "worker_ip"),
        (
            "head_start_ray_commands:",
            "head_start_commands:",
            "head_start_commands",
        ),
    ] {
        assert!(good.contains(from), "{from}");
        let bad = good.replacen(from, to, 1);
        let line = bad
            .lines()
            .position(|l| l.contains(to.trim()))
            .expect("changed line")
            + 1;
        let path = dir.join(format!("{field}.yaml"));
        std::fs::write(&path, bad).expect("write");
        let out = rayish(&["up", "--dry-run", path.to_str().expect("path")], &state);
        let t = text(&out);
        assert!(!out.status.success(), "{field}: accepted: {t}");
        assert!(
            t.contains(&format!("unknown field `{field}`")) && t.contains(&format!("line {line}")),
            "{field} (line {line}): {t}"
        );
    }
    // A start command left as Ray's is named too.
    let path = dir.join("ray-start.yaml");
    std::fs::write(
        &path,
        good.replace("rayish start --address", "ray start --address"),
    )
    .expect("write");
    let t = text(&rayish(
        &["up", "--dry-run", path.to_str().expect("path")],
        &state,
    ));
    assert!(
        t.contains("worker_start_ray_commands") && t.contains("rayish start"),
        "{t}"
    );
}

#[test]
fn up_submit_down_runs_the_faces_job_across_three_ssh_machines() {
    let _one = rayish_suite::exclusive();
    let models = rayish_faces::models::data_dir().join("face_models");
    let photos = rayish_faces::models::data_dir().join("sample_photos");
    assert!(
        photos.join("obama.jpg").is_file(),
        "run scripts/setup-faces.sh first"
    );
    let machines = Machines::up("rl", 3, 78, None);
    let [head, w1, w2] = [0, 1, 2].map(|i| machines.addresses[i].clone());
    let dir = temp_dir("up");
    let state = dir.join("state");
    let config = dir.join("cluster.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster_name: launcher-test
min_workers: 2
max_workers: 2
idle_timeout_minutes: 5
provider:
    type: local
    head_ip: {head}
    worker_ips: [{w1}, {w2}]
auth:
    ssh_user: root
    ssh_private_key: {key}
file_mounts: {{
    /srv/faces/models: {models},
    /srv/faces/photos: {photos},
}}
setup_commands:
    - test -s /srv/faces/models/dlib_face_recognition_resnet_model_v1.dat
head_start_ray_commands:
    - rayish stop
    - ulimit -c unlimited && rayish start --head --port=6379 --num-cpus=1 --autoscaling-config=~/ray_bootstrap_config.yaml
worker_start_ray_commands:
    - rayish stop
    - rayish start --address=$RAY_HEAD_IP:6379 --num-cpus=1
",
            key = machines.key.display(),
            models = models.display(),
            photos = photos.display(),
        ),
    )
    .expect("cluster.yaml");
    let cfg = config.to_str().expect("path");

    // Up from nothing: all three set up and joined.
    let out = rayish(&["up", cfg], &state);
    assert!(out.status.success(), "rayish up: {}", text(&out));
    assert!(
        text(&out).contains("3 machine(s) set up and started, 0 unchanged"),
        "{}",
        text(&out)
    );
    let status = head_status(cfg, &state);
    let alive: BTreeSet<String> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["alive"] == true)
        .map(|n| {
            n["address"]
                .as_str()
                .expect("address")
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        alive,
        BTreeSet::from([head.clone(), w1.clone(), w2.clone()])
    );
    let out = rayish(&["get-head-ip", cfg], &state);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), head);

    // Up again: nothing to change, nothing restarted.
    let head_pids = |m: &Machines| -> Vec<String> {
        m.processes(0)
            .into_iter()
            .filter(|c| c.contains("rayish start"))
            .collect()
    };
    let before = head_pids(&machines);
    let out = rayish(&["up", cfg], &state);
    assert!(out.status.success(), "second up: {}", text(&out));
    assert!(
        text(&out).contains("0 machine(s) set up and started, 3 unchanged"),
        "{}",
        text(&out)
    );
    assert_eq!(head_pids(&machines), before);

    // The faces job, submitted to the head, spread over the machines.
    let remote = submit_faces_job(cfg, &state);
    let nodes: BTreeSet<String> = remote.values().map(|r| r["node"].to_string()).collect();
    assert!(nodes.len() >= 2, "all images ran on one node: {nodes:?}");

    // The same job in local mode here gives the same boxes and encodings.
    let local = local_faces_job(&photos, &models, &dir.join("local"));
    assert_same_faces(&local, &remote, 1e-9);

    // Down: no rayish process left on any machine, and no ssh connection left here.
    let out = rayish(&["down", cfg], &state);
    assert!(out.status.success(), "down: {}", text(&out));
    // Workers notice their node is gone within moments; allow them a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for i in 0..3 {
        loop {
            let left: Vec<String> = machines
                .processes(i)
                .into_iter()
                .filter(|c| !c.starts_with("sshd") && !c.starts_with("/usr/sbin/sshd"))
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "machine {i} still runs {left:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    assert!(
        !state.join("launcher-test.json").exists(),
        "local state kept"
    );
    let ps = Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    let masters: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.starts_with("ssh") && l.contains("rayish-ssh-"))
        .map(str::to_string)
        .collect();
    assert!(masters.is_empty(), "ssh connections left: {masters:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `rayish status --json` on the head, through `rayish exec`.
fn head_status(cfg: &str, state: &Path) -> Value {
    let out = rayish(&["exec", cfg, "rayish status --json"], state);
    assert!(out.status.success(), "exec status: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout[stdout.find('{').expect("status json")..]).expect("status")
}

fn alive_count(status: &Value) -> usize {
    status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["alive"] == true)
        .count()
}

#[test]
fn the_autoscaler_starts_workers_for_a_burst_and_stops_them_once_idle() {
    let _one = rayish_suite::exclusive();
    let machines = Machines::up("ra", 3, 77, None);
    let [head, w1, w2] = [0, 1, 2].map(|i| machines.addresses[i].clone());
    let dir = temp_dir("autoscale");
    let state = dir.join("state");
    let config = dir.join("cluster.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster_name: autoscale-test
max_workers: 2
upscaling_speed: 1.0
idle_timeout_minutes: 0.1
provider:
    type: local
    head_ip: {head}
    worker_ips: [{w1}, {w2}]
auth:
    ssh_user: root
    ssh_private_key: {key}
available_node_types:
    head:
        resources: {{CPU: 1}}
        node_config: {{}}
    worker:
        resources: {{CPU: 2}}
        min_workers: 0
        max_workers: 2
        node_config: {{}}
head_node_type: head
head_start_ray_commands:
    - rayish stop
    - rayish start --head --port=6379 --autoscaling-config=~/ray_bootstrap_config.yaml
worker_start_ray_commands:
    - rayish stop
    - rayish start --address=$RAY_HEAD_IP:6379
",
            key = machines.key.display(),
        ),
    )
    .expect("cluster.yaml");
    let cfg = config.to_str().expect("path");

    // min_workers 0: only the head comes up, its autoscaler idle.
    let out = rayish(&["up", cfg], &state);
    assert!(out.status.success(), "rayish up: {}", text(&out));
    assert!(
        text(&out).contains("1 machine(s) set up and started, 0 unchanged"),
        "{}",
        text(&out)
    );
    let status = head_status(cfg, &state);
    assert_eq!(alive_count(&status), 1);
    assert_eq!(status["nodes"][0]["total"]["CPU"], 1000, "{status}");

    // A burst the head's one CPU would take 36 s for: the autoscaler adds workers.
    let driver = target_dir().join("cluster_driver");
    let out = rayish(
        &[
            "submit",
            cfg,
            driver.to_str().expect("path"),
            "burst",
            "--n",
            "24",
            "--ms",
            "1500",
        ],
        &state,
    );
    assert!(out.status.success(), "submit: {}", text(&out));
    let result: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|r| serde_json::from_str(r).expect("result json"))
        .expect("RESULT line");
    assert_eq!(result["wrong"], 0, "{result}");
    let nodes = result["nodes"].as_object().expect("nodes");
    assert!(
        nodes.len() >= 2,
        "the burst ran on the head alone: {result}"
    );
    let status = head_status(cfg, &state);
    let recent = status["autoscaler"]["recent"].to_string();
    assert!(
        recent.contains("launching a worker") && recent.contains("waiting for resources"),
        "{status}"
    );
    let text_status = text(&rayish(&["exec", cfg, "rayish status"], &state));
    assert!(
        text_status.contains("Autoscaler") && text_status.contains("launching a worker"),
        "{text_status}"
    );
    eprintln!("{text_status}");

    // Idle for 6 s: the workers are stopped, down to min_workers (0).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let status = head_status(cfg, &state);
        let machines_idle = status["autoscaler"]["machines"]
            .as_array()
            .expect("machines")
            .iter()
            .all(|m| m["state"] == "idle");
        if alive_count(&status) == 1 && machines_idle {
            assert!(
                status["autoscaler"]["recent"]
                    .to_string()
                    .contains("stopping its worker (idle"),
                "{status}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers not stopped: {status}"
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    for i in 1..3 {
        let left: Vec<String> = machines
            .processes(i)
            .into_iter()
            .filter(|c| !c.starts_with("sshd") && !c.starts_with("/usr/sbin/sshd"))
            .collect();
        assert!(left.is_empty(), "machine {i} still runs {left:?}");
    }

    let out = rayish(&["down", cfg], &state);
    assert!(out.status.success(), "down: {}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
