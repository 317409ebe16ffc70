//! The Docker image (cluster/Dockerfile, built by cluster/build-image.sh on a base made
//! with debootstrap, as there is no registry here): a head and two workers as
//! containers on a private Docker network run the faces job; one worker container is
//! stopped mid-job and the job still completes, with the same output as local mode;
//! in another run the head's container is restarted (`docker restart`) mid-job and
//! the job goes on.
//!
//! Needs Docker and root (debootstrap); tests/run.sh runs it.

use rayish_suite::{
    assert_same_faces, cluster_cli, faces_by_file, local_faces_job, submit_faces_job, target_dir,
    Machines,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Containers and the network of one test, removed on drop.
struct Deployment {
    tag: String,
    containers: Vec<String>,
    network: String,
    /// The cluster token, handed to each container as `RAYISH_TOKEN` from docker's
    /// environment (`-e RAYISH_TOKEN`), never on a command line.
    token: String,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}

impl Deployment {
    /// A head and two workers of image `tag` on a network of their own, each with 1
    /// CPU and `photos` at /photos; returns once all three nodes are alive.
    fn start(tag: &str, photos: &Path) -> Deployment {
        let network = format!("rayish-t{:x}", rayish_suite::rand_u64() & 0xffff_ffff);
        docker_ok(&["network", "create", &network]);
        let mut d = Deployment {
            tag: tag.to_string(),
            containers: Vec::new(),
            network,
            token: rayish_core::transport::tls::new_token(),
        };
        d.run(
            "head",
            photos,
            &["start", "--head", "--block", "--num-cpus", "1"],
        );
        for w in ["worker1", "worker2"] {
            d.run(
                w,
                photos,
                &[
                    "start",
                    "--address",
                    "head:6379",
                    "--block",
                    "--num-cpus",
                    "1",
                ],
            );
        }
        d.wait_for_alive(3);
        d
    }

    /// Waits (up to a minute) until `n` nodes are alive.
    fn wait_for_alive(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let alive = self.status()["nodes"]
                .as_array()
                .map_or(0, |n| n.iter().filter(|n| n["alive"] == true).count());
            if alive == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} nodes are not alive: {}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `rayish-faces encode /photos` from container `name` against the head, in the
    /// background, its output to /tmp/out there.
    fn start_job(&self, name: &str) -> std::process::Child {
        Command::new("docker")
            .args([
                "exec",
                &format!("{}-{name}", self.network),
                "rayish-faces",
                "encode",
                "/photos",
                "--address",
                "head:6379",
            ])
            .args(["--out", "/tmp/out", "--quiet"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the job")
    }

    /// Checks the job run from container `name` did every image as local mode does
    /// here.
    fn assert_same_faces_as_local(&self, name: &str, photos: &Path) {
        let remote = self.exec(name, &["cat", "/tmp/out/encodings.jsonl"]);
        assert!(remote.status.success(), "{}", text(&remote));
        let remote = faces_by_file(&String::from_utf8_lossy(&remote.stdout));
        let local_out = photos.with_extension("local-out");
        let local = Command::new(target_dir().join("rayish-faces"))
            .args([
                "encode",
                photos.to_str().expect("path"),
                "--out",
                local_out.to_str().expect("path"),
                "--quiet",
            ])
            .env_remove("RAYISH_ADDRESS")
            .output()
            .expect("local run");
        assert!(local.status.success(), "{}", text(&local));
        let local = faces_by_file(
            &std::fs::read_to_string(local_out.join("encodings.jsonl")).expect("local jsonl"),
        );
        assert_eq!(remote.len(), 70);
        let failed: Vec<String> = remote
            .iter()
            .filter(|(file, r)| {
                r["status"] != *local.get(*file).map_or(&Value::Null, |l| &l["status"])
            })
            .map(|(file, r)| {
                let mut r = r.clone();
                r["encodings"] = Value::Null;
                format!("{file}: {r}")
            })
            .collect();
        assert!(
            failed.is_empty(),
            "images whose outcome differs: {failed:?}"
        );
        assert_same_faces(&local, &remote, 1e-9);
        let _ = std::fs::remove_dir_all(&local_out);
    }

    fn run(&mut self, name: &str, photos: &Path, args: &[&str]) {
        let full = format!("{}-{name}", self.network);
        let volume = format!("{}:/photos:ro", photos.display());
        let mut all = vec![
            "run",
            "-d",
            "--name",
            &full,
            "--hostname",
            name,
            "--network",
            &self.network,
            "--network-alias",
            name,
            "--shm-size",
            "1g",
            "-v",
            &volume,
            "-e",
            "RAYISH_TOKEN",
            &self.tag,
        ];
        all.extend_from_slice(args);
        let out = Command::new("docker")
            .args(&all)
            .env("RAYISH_TOKEN", &self.token)
            .output()
            .expect("run docker");
        assert!(out.status.success(), "docker {all:?}: {}", text(&out));
        self.containers.push(full);
    }

    fn exec(&self, name: &str, args: &[&str]) -> Output {
        let full = format!("{}-{name}", self.network);
        let mut all = vec!["exec", full.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }

    fn status(&self) -> Value {
        let out = self.exec("head", &["rayish", "status", "--json"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .find('{')
            .and_then(|i| serde_json::from_str(&stdout[i..]).ok())
            .unwrap_or(Value::Null)
    }
}

/// Ten differently named copies of each sample photo: a job long enough to stop a
/// worker in the middle of.
fn photo_set() -> PathBuf {
    let src = rayish_faces::models::data_dir().join("sample_photos");
    assert!(
        src.join("obama.jpg").is_file(),
        "run scripts/setup-faces.sh first"
    );
    let dir = std::env::temp_dir().join(format!(
        "rayish-docker-photos-{:x}",
        rayish_suite::rand_u64()
    ));
    std::fs::create_dir_all(&dir).expect("photo dir");
    for entry in std::fs::read_dir(&src).expect("sample photos") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        for i in 0..10 {
            std::fs::copy(&path, dir.join(format!("{i:02}-{name}"))).expect("copy photo");
        }
    }
    dir
}

/// Builds the image (cached layers make a second build quick); returns its tag.
fn build_image() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let build = Command::new("bash")
        .arg(root.join("cluster/build-image.sh"))
        .arg("rayish-test")
        // tests/run.sh built everything; a cargo run from inside a test would see
        // cargo's test environment and rebuild the workspace.
        .env("RAYISH_PREBUILT", "1")
        .output()
        .expect("build-image.sh");
    assert!(build.status.success(), "build-image.sh: {}", text(&build));
    let tag = String::from_utf8_lossy(&build.stdout).trim().to_string();
    assert!(tag.starts_with("rayish-test:"), "{tag}");
    tag
}

#[test]
fn the_image_runs_a_head_and_two_workers_and_survives_a_stopped_worker() {
    let _one = rayish_suite::exclusive();
    let tag = build_image();
    // The image holds what it says: both binaries run, the models are in place.
    let version = docker_ok(&["run", "--rm", &tag, "--version"]);
    assert!(version.starts_with("rayish "), "{version}");
    docker_ok(&[
        "run", "--rm", "--entrypoint", "sh", &tag, "-c",
        "rayish-faces --help >/dev/null && test -s $RAYISH_FACE_MODELS/dlib_face_recognition_resnet_model_v1.dat",
    ]);

    let photos = photo_set();
    let d = Deployment::start(&tag, &photos);

    // The token reached every container without being on a command line.
    for c in &d.containers {
        let args = docker_ok(&["inspect", "-f", "{{json .Path}} {{json .Args}}", c]);
        assert!(
            !args.contains(&d.token),
            "{c} has the token in its arguments: {args}"
        );
    }

    // The job, driven from the head container; worker2 is stopped once tasks have run
    // on it.
    let head = format!("{}-head", d.network);
    let job = Command::new("docker")
        .args([
            "exec",
            &head,
            "rayish-faces",
            "encode",
            "/photos",
            "--address",
            "auto",
        ])
        .args(["--out", "/tmp/out", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the job");
    let deadline = Instant::now() + Duration::from_secs(300);
    let worker2_ip = loop {
        let status = d.status();
        let busy = status["nodes"].as_array().and_then(|nodes| {
            nodes
                .iter()
                .find(|n| n["hostname"] == "worker2" && n["finished_tasks"].as_u64() >= Some(2))
                .map(|n| n["address"].as_str().unwrap_or_default().to_string())
        });
        if let Some(ip) = busy {
            break ip;
        }
        assert!(
            Instant::now() < deadline,
            "worker2 never ran a task: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    docker_ok(&["stop", &format!("{}-worker2", d.network)]);
    let out = job.wait_with_output().expect("the job");
    assert!(
        out.status.success(),
        "the job failed after worker2 ({worker2_ip}) stopped: {}",
        text(&out)
    );
    let status = d.status();
    let dead: Vec<&Value> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["alive"] == false)
        .collect();
    assert_eq!(dead.len(), 1, "worker2 is not seen dead: {status}");

    // Every image done, as local mode does it here.
    d.assert_same_faces_as_local("head", &photos);
    drop(d);
    let _ = std::fs::remove_dir_all(&photos);
}

#[test]
fn the_image_s_cluster_outlives_a_docker_restart_of_its_head_mid_job() {
    let _one = rayish_suite::exclusive();
    let tag = build_image();
    let photos = photo_set();
    let d = Deployment::start(&tag, &photos);
    // Driven from worker1's container, so that the driver outlives the head's.
    let job = d.start_job("worker1");
    let deadline = Instant::now() + Duration::from_secs(300);
    while d.status()["nodes"].as_array().map_or(0, |n| {
        n.iter()
            .filter_map(|n| n["finished_tasks"].as_u64())
            .sum::<u64>()
    }) < 6
    {
        assert!(Instant::now() < deadline, "no task ran: {}", d.status());
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGTERM, then the same container and command again: same storage, same token
    // (in its environment), same name on the network.
    docker_ok(&["restart", &format!("{}-head", d.network)]);
    let out = job.wait_with_output().expect("the job");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the job failed across the head's restart: {}",
        text(&out)
    );
    assert!(
        stderr.contains("reconnected to the head"),
        "the driver did not go on through the restart: {stderr}"
    );
    // The workers kept their work and came back as themselves.
    let status = d.status();
    for w in ["worker1", "worker2"] {
        let lives: Vec<(bool, u64)> = status["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter(|n| n["hostname"] == w)
            .map(|n| (n["alive"] == true, n["incarnation"].as_u64().unwrap_or(0)))
            .collect();
        assert_eq!(lives, vec![(true, 1)], "{w}: {status}");
    }
    assert_eq!(status["head_starts"]["count"], 2, "{status}");
    d.assert_same_faces_as_local("worker1", &photos);
    drop(d);
    let _ = std::fs::remove_dir_all(&photos);
}

#[test]
fn the_pipeline_runs_here_with_push_and_upgrade_skipped() {
    let _one = rayish_suite::exclusive();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("cluster/pipeline.sh"))
        .env("IMAGE_REPO_NAME", "rayish-pipeline-test")
        .env("REGISTRY", "registry.example.internal")
        .env("HELM_RELEASE", "faces")
        .env("RAYISH_PREBUILT", "1")
        .env_remove("PUSH")
        .env_remove("DEPLOY")
        .output()
        .expect("pipeline.sh");
    let log = text(&out);
    assert!(out.status.success(), "pipeline.sh: {log}");
    let sha = String::from_utf8_lossy(
        &Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(root)
            .output()
            .expect("git")
            .stdout,
    )
    .trim()
    .to_string();
    let target = format!("registry.example.internal/rayish-pipeline-test:{sha}");
    // Built and tagged with the commit; push and upgrade skipped, with what they would run.
    docker_ok(&["image", "inspect", &target]);
    assert!(
        log.contains(&format!("pipeline: skipped: docker push {target}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("--set image.tag={sha}"))
            && log.contains("skipped: helm upgrade -i faces"),
        "{log}"
    );
    // The chart rendered with that image, both Deployments.
    let manifest = std::fs::read_to_string(root.join(format!("target/pipeline/faces-{sha}.yaml")))
        .expect("rendered chart");
    assert_eq!(
        manifest.matches(&format!("image: {target}")).count(),
        2,
        "{manifest}"
    );
    // The CodeBuild spec runs the same script with push and upgrade on.
    let spec: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join("cluster/buildspec.yml")).expect("buildspec"),
    )
    .expect("buildspec yaml");
    let build = spec["phases"]["build"]["commands"][0]
        .as_str()
        .expect("build command");
    assert_eq!(build, "PUSH=1 DEPLOY=1 bash cluster/pipeline.sh");
    let _ = docker(&["rmi", &target]);
}

#[test]
fn rayish_up_in_ray_s_container_mode_runs_every_node_in_the_image() {
    let _one = rayish_suite::exclusive();
    let tag = build_image();
    let machines = Machines::up("rk", 3, 75, Some(&tag));
    let [head, w1, w2] = [0, 1, 2].map(|i| machines.addresses[i].clone());
    let dir = std::env::temp_dir().join(format!("rayish-docker-up-{:x}", rayish_suite::rand_u64()));
    std::fs::create_dir_all(&dir).expect("dir");
    let state = dir.join("state");
    let config = dir.join("cluster.yaml");
    // The docker section of Ray's local example-full.yaml, with this image (pulling is
    // off: there is no registry here) and a label for run_options (its `--ulimit
    // nofile=65536` is above this machine's hard limit).
    std::fs::write(
        &config,
        format!(
            "cluster_name: docker-mode
docker:
    image: \"{tag}\"
    container_name: \"ray_container\"
    pull_before_run: False
    run_options:
        - --label rayish-test=container-mode
provider:
    type: local
    head_ip: {head}
    worker_ips: [{w1}, {w2}]
auth:
    ssh_user: root
    ssh_private_key: {key}
min_workers: 2
max_workers: 2
head_start_ray_commands:
    - rayish stop
    - ulimit -c unlimited && rayish start --head --port=6379 --num-cpus=1 --autoscaling-config=~/ray_bootstrap_config.yaml
worker_start_ray_commands:
    - rayish stop
    - rayish start --address=$RAY_HEAD_IP:6379 --num-cpus=1
",
            key = machines.key.display()
        ),
    )
    .expect("cluster.yaml");
    let cfg = config.to_str().expect("path");
    let rayish = |args: &[&str]| cluster_cli(args, &state);
    let out = rayish(&["up", cfg]);
    assert!(out.status.success(), "up: {}", text(&out));
    assert!(
        text(&out).contains("3 machine(s) set up and started, 0 unchanged"),
        "{}",
        text(&out)
    );
    for i in 0..3 {
        assert_eq!(
            machines
                .ssh(
                    i,
                    "docker ps --filter label=rayish-test=container-mode --format {{.Names}}"
                )
                .trim(),
            "ray_container"
        );
        // The node runs inside the container: its process is the container's child.
        let inside = machines.ssh(i, "docker exec ray_container ps -eo args");
        assert!(inside.contains("rayish start"), "machine {i}: {inside}");
    }
    let out = rayish(&["up", cfg]);
    assert!(
        text(&out).contains("0 machine(s) set up and started, 3 unchanged"),
        "{}",
        text(&out)
    );

    // A driver submitted to the head runs in its container and uses all three nodes.
    let driver = target_dir().join("cluster_driver");
    let out = rayish(&[
        "submit",
        cfg,
        driver.to_str().expect("path"),
        "many",
        "--n",
        "300",
    ]);
    assert!(out.status.success(), "submit: {}", text(&out));
    let result: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|r| serde_json::from_str(r).expect("result"))
        .expect("RESULT line");
    assert_eq!(result["wrong"], 0, "{result}");
    assert!(
        result["nodes"].as_object().expect("nodes").len() >= 2,
        "{result}"
    );

    // Down: containers removed, nothing of rayish left on any machine.
    let out = rayish(&["down", cfg]);
    assert!(out.status.success(), "down: {}", text(&out));
    for i in 0..3 {
        assert_eq!(
            machines.ssh(i, "docker ps -a --format {{.Names}}").trim(),
            "",
            "machine {i}"
        );
        let left: Vec<String> = machines
            .processes(i)
            .into_iter()
            .filter(|c| !c.starts_with("sshd") && !c.starts_with("/usr/sbin/sshd"))
            .filter(|c| {
                c.contains("rayish") || c.contains("sleep infinity") || c.contains("cluster_driver")
            })
            .collect();
        assert!(left.is_empty(), "machine {i} still runs {left:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The python of `scripts/setup-cluster-tests.sh`'s venv with Ray's CLI.
fn ray_python() -> PathBuf {
    let python = rayish_faces::models::data_dir().join("ray-cli/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/setup-cluster-tests.sh",
        python.display()
    );
    python
}

#[test]
fn cluster_setup_yaml_passes_rays_check_and_runs_the_faces_job_in_the_image() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = root.join("cluster/cluster-setup.yaml");
    // Ray's own check, as `ray up` runs it: defaults filled in, then its schema.
    let check = Command::new(ray_python())
        .args([
            "-c",
            "import sys, yaml\n\
             from ray.autoscaler._private.util import prepare_config, validate_config\n\
             validate_config(prepare_config(yaml.safe_load(open(sys.argv[1]))))\n\
             print('valid')",
        ])
        .arg(&shipped)
        .output()
        .expect("ray's python");
    assert!(
        check.status.success() && text(&check).contains("valid"),
        "Ray refuses cluster-setup.yaml: {}",
        text(&check)
    );

    // The walk-through of README, on three network-namespace machines: the file with
    // its EDIT lines filled in, up, the faces job submitted, its output fetched, down.
    let _one = rayish_suite::exclusive();
    let tag = build_image();
    let machines = Machines::up("rf", 3, 73, Some(&tag));
    let [head, w1, w2] = [0, 1, 2].map(|i| machines.addresses[i].clone());
    let data = rayish_faces::models::data_dir();
    let photos = data.join("sample_photos");
    let models = data.join("face_models");
    let mut yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&shipped).expect("yaml")).expect("parse");
    let set = |yaml: &mut serde_yaml_ng::Value, path: &[&str], value: serde_yaml_ng::Value| {
        let mut at = yaml;
        for key in &path[..path.len() - 1] {
            at = at
                .get_mut(*key)
                .unwrap_or_else(|| panic!("{key} in cluster-setup.yaml"));
        }
        at[path[path.len() - 1]] = value;
    };
    let s = |v: &str| serde_yaml_ng::Value::String(v.to_string());
    set(&mut yaml, &["docker", "image"], s(&tag));
    set(&mut yaml, &["provider", "head_ip"], s(&head));
    set(
        &mut yaml,
        &["provider", "worker_ips"],
        serde_yaml_ng::Value::Sequence(vec![s(&w1), s(&w2)]),
    );
    set(
        &mut yaml,
        &["auth", "ssh_private_key"],
        s(&machines.key.to_string_lossy()),
    );
    set(
        &mut yaml,
        &["file_mounts", "/srv/faces/photos"],
        s(&photos.to_string_lossy()),
    );
    set(
        &mut yaml,
        &["file_mounts", "/srv/faces/models"],
        s(&models.to_string_lossy()),
    );
    // One core a machine here: the three share this machine's two.
    let text_yaml = serde_yaml_ng::to_string(&yaml)
        .expect("yaml")
        .replace("--num-cpus=2", "--num-cpus=1");
    let dir = std::env::temp_dir().join(format!("rayish-setup-{:x}", rayish_suite::rand_u64()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("cluster-setup.yaml");
    std::fs::write(&cfg, text_yaml).expect("write");
    let cfg = cfg.to_str().expect("path");
    let state = dir.join("state");
    let rayish = |args: &[&str]| cluster_cli(args, &state);
    let out = rayish(&["up", cfg]);
    assert!(out.status.success(), "up: {}", text(&out));
    assert!(
        text(&out).contains("3 machine(s) set up and started"),
        "{}",
        text(&out)
    );
    let remote = submit_faces_job(cfg, &state);
    assert_eq!(remote.len(), 7, "{remote:?}");
    let local = local_faces_job(&photos, &models, &dir.join("local"));
    assert_same_faces(&local, &remote, 1e-9);

    let out = rayish(&["down", cfg]);
    assert!(out.status.success(), "down: {}", text(&out));
    for i in 0..3 {
        assert_eq!(
            machines.ssh(i, "docker ps -a --format {{.Names}}").trim(),
            "",
            "machine {i}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
