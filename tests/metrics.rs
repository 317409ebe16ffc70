//! Metrics: a real Prometheus (Debian's, installed by scripts/setup-cluster-tests.sh)
//! scrapes a 3-node cluster through the head's file service discovery list while the
//! faces job runs, and the queries of Ray's default Grafana dashboard answer with
//! what the cluster did.

use rayish_suite::{free_port, rand_u64, target_dir, TestCluster};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Prometheus server on a free loopback port, stopped on drop.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    /// Scrapes every second the targets listed in `sd_file`, with `token_file`'s
    /// token as the bearer token.
    fn start(dir: &Path, sd_file: &Path, token_file: &Path) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n\
                 - job_name: ray\n\
                 \x20 authorization:\n\
                 \x20   type: Bearer\n\
                 \x20   credentials_file: {}\n\
                 \x20 file_sd_configs:\n\
                 \x20 - files: ['{}']\n\
                 \x20   refresh_interval: 1s\n",
                token_file.display(),
                sd_file.display()
            ),
        )
        .expect("prometheus.yml");
        let port = free_port("127.0.0.1");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("start prometheus (scripts/setup-cluster-tests.sh installs it)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The result of an instant PromQL query (empty while Prometheus is not up).
    fn query(&self, promql: &str) -> Vec<Value> {
        let Ok(resp) = ureq::get(&format!("{}/api/v1/query", self.url))
            .query("query", promql)
            .call()
        else {
            return Vec::new();
        };
        let text = resp.into_string().expect("prometheus answer");
        let body: Value = serde_json::from_str(&text).expect("prometheus json");
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `promql` gives series that `done` accepts; returns them.
    fn wait_for(&self, promql: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let result = self.query(promql);
            if done(&result) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} never gave what was expected; last: {result:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A series' value as a number.
fn value(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("a sample value")
}

/// The sum of the values of `result`.
fn total(result: &[Value]) -> f64 {
    result.iter().map(value).sum()
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
        if entry.file_type().ok()?.is_dir() && !entry.file_type().ok()?.is_symlink() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        }
    }
    None
}

/// Ray's dashboard queries with their Grafana variables at "all".
fn ray_panel(expr: &str) -> String {
    all_variables(expr)
}

/// `expr` with every Grafana variable of Ray's dashboards at "All" (`.*`).
fn all_variables(expr: &str) -> String {
    ["$SessionName", "$Instance", "$Cluster", "$RayNodeType"]
        .iter()
        .fold(expr.to_string(), |e, v| e.replace(v, ".*"))
}

/// The panels of Ray's default dashboard that a cluster of CPU nodes running tasks
/// (no actors) must show. The others are about GPUs and TPUs, OOM kills and worker
/// failures (none happened), actors and disk I/O speeds.
const CPU_CLUSTER_PANELS: [&str; 21] = [
    "Node Count",
    "Cluster Utilization",
    "Node CPU Usage",
    "Node CPU Usage %",
    "Node Memory Usage (heap + object store)",
    "Node Memory Usage % (heap + object store)",
    "Node Disk Usage",
    "Node Disk Usage %",
    "Node Network",
    "Node Memory Usage by Component",
    "Node CPU Usage by Component",
    "Logical CPUs Usage",
    "Object Store Memory Usage",
    "Object Store Memory Usage %",
    "Object Store Memory Spilled to Disk",
    "All Tasks by State",
    "Active Tasks by Name",
    "Running Tasks by Name",
    "Running Tasks by Node",
    "All Placement Groups by State",
    "Object Store Memory by Location",
];

/// (title, queries) of every panel of Ray's default Grafana dashboard, generated by
/// the `ray` wheel that scripts/setup-cluster-tests.sh installs.
fn ray_default_dashboard() -> Vec<(String, Vec<String>)> {
    let python = rayish_faces::models::data_dir().join("ray-cli/bin/python");
    let out = Command::new(&python)
        .arg("-c")
        .arg(
            "from ray.dashboard.modules.metrics.grafana_dashboard_factory import \
             generate_default_grafana_dashboard as g; print(g()[0])",
        )
        .output()
        .expect("the ray CLI's python (scripts/setup-cluster-tests.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dashboard: Value = serde_json::from_slice(&out.stdout).expect("dashboard json");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            let exprs = p["targets"]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .filter_map(|t| t["expr"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (title, exprs)
        })
        .collect()
}

#[test]
fn prometheus_scrapes_every_node_and_rays_dashboard_queries_answer() {
    let cluster = TestCluster::start(2, 1, 2000);
    // The head lists every live node's endpoint.
    let deadline = Instant::now() + Duration::from_secs(30);
    let sd_file = loop {
        let listed = find_file(&cluster.root, "prom_metrics_service_discovery.json").filter(|f| {
            std::fs::read_to_string(f)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v[0]["targets"].as_array().map(|t| t.len()))
                == Some(3)
        });
        if let Some(f) = listed {
            break f;
        }
        assert!(Instant::now() < deadline, "no targets file with 3 nodes");
        std::thread::sleep(Duration::from_millis(200));
    };
    let sd: Value =
        serde_json::from_str(&std::fs::read_to_string(&sd_file).expect("sd")).expect("json");
    let target = sd[0]["targets"][0].as_str().expect("a target").to_string();
    // Without the cluster token, nobody reads a node's metrics.
    match ureq::get(&format!("http://{target}/metrics")).call() {
        Err(ureq::Error::Status(code, _)) => assert_eq!(code, 401),
        other => panic!("a scrape without the token: {other:?}"),
    }
    match ureq::get(&format!("http://{target}/metrics"))
        .set("Authorization", "Bearer not-the-token")
        .call()
    {
        Err(ureq::Error::Status(code, _)) => assert_eq!(code, 401),
        other => panic!("a scrape with a wrong token: {other:?}"),
    }

    let dir = std::env::temp_dir().join(format!("rayish-prometheus-{:x}", rand_u64()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token_file = dir.join("token");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)
            .expect("token file");
        f.write_all(cluster.token.as_bytes()).expect("token");
    }
    let prometheus = Prometheus::start(&dir, &sd_file, &token_file);
    prometheus.wait_for("up", |r| r.len() == 3 && total(r) == 3.0);

    // The faces job on the sample photos: one task per image.
    let photos = rayish_faces::models::data_dir().join("sample_photos");
    let images = std::fs::read_dir(&photos).expect("sample photos").count();
    let out = dir.join("faces-out");
    let status = Command::new(target_dir().join("rayish-faces"))
        .arg("encode")
        .arg(&photos)
        .arg("--out")
        .arg(&out)
        .args(["--quiet", "--address", &cluster.address])
        .env("RAYISH_TOKEN", &cluster.token)
        .env("RAYISH_TEMP_DIR", &cluster.root)
        .stdout(Stdio::null())
        .status()
        .expect("rayish-faces");
    assert!(status.success());

    // Ray's "Scheduler Task State" panel: every image's task FINISHED, none FAILED.
    let states = prometheus.wait_for(
        &ray_panel(
            r#"sum(max_over_time(ray_tasks{IsRetry="0",State=~"FINISHED|FAILED",instance=~"$Instance"}[14d])) by (State) or clamp_min(sum(ray_tasks{IsRetry="0",State!~"FINISHED|FAILED",instance=~"$Instance"}) by (State), 0)"#,
        ),
        |r| {
            r.iter()
                .any(|s| s["metric"]["State"] == "FINISHED" && value(s) == images as f64)
        },
    );
    assert!(
        !states.iter().any(|s| s["metric"]["State"] == "FAILED"),
        "{states:?}"
    );
    let by_name = prometheus.query(r#"sum(ray_tasks{State="FINISHED"}) by (Name)"#);
    assert!(
        by_name.iter().any(|s| s["metric"]["Name"]
            .as_str()
            .is_some_and(|n| n.ends_with("run_stages"))),
        "{by_name:?}"
    );

    // The nodes report the tasks they run, as Ray's executors do: a node seen running
    // one of the faces tasks at a scrape has its series, falling to 0 once the job is
    // over (at the first scrape after it: Prometheus' last sample may predate its end).
    let executors =
        prometheus.query(r#"count(ray_tasks{Source="executor",State="RUNNING"}) by (instance)"#);
    assert!(!executors.is_empty(), "{executors:?}");
    prometheus.wait_for(r#"sum(ray_tasks{State=~"RUNNING.*"})"#, |r| {
        !r.is_empty() && total(r) == 0.0
    });

    // Node panels: one series per node.
    for metric in [
        "ray_node_cpu_utilization",
        "ray_node_cpu_count",
        "ray_node_mem_used_host",
        "ray_node_mem_total_host",
        "ray_node_disk_usage",
        "ray_node_disk_free",
        "ray_node_network_receive_speed",
        "ray_node_network_send_speed",
    ] {
        let per_node = prometheus.wait_for(
            &ray_panel(&format!(
                r#"sum({metric}{{instance=~"$Instance", RayNodeType=~"$RayNodeType"}}) by (instance, RayNodeType)"#
            )),
            |r| r.len() == 3,
        );
        let heads = per_node
            .iter()
            .filter(|s| s["metric"]["RayNodeType"] == "head")
            .count();
        assert_eq!(heads, 1, "{metric}: {per_node:?}");
    }
    // Ray's "Logical CPUs" panel's MAX: the cluster's 3 CPUs.
    let cpus = prometheus.query(&ray_panel(
        r#"sum(ray_resources{Name="CPU",instance=~"$Instance"})"#,
    ));
    assert_eq!(total(&cpus), 3.0, "{cpus:?}");
    // "Object Store Memory" and the memory of rayish's processes.
    let store = prometheus.query(&ray_panel(
        r#"sum(ray_object_store_memory{instance=~"$Instance"}) by (Location)"#,
    ));
    assert!(!store.is_empty(), "{store:?}");
    let rss = prometheus.query(r#"sum(ray_component_rss_bytes) by (Component)"#);
    assert!(
        rss.iter()
            .any(|s| s["metric"]["Component"] == "raylet" && value(s) > 0.0),
        "{rss:?}"
    );
    // rayish's own: every task's run time, and the bytes moved (the job's binary,
    // at least, went from the head to the other nodes).
    let runs = prometheus.query("sum(rayish_task_run_seconds_count)");
    assert!(total(&runs) >= images as f64, "{runs:?}");
    let moved = prometheus.query(r#"sum(rayish_object_transfer_bytes_total{Direction="sent"})"#);
    assert!(total(&moved) > 0.0, "{moved:?}");
    // The driver's own metrics (rayish::metrics, as ray.util.metrics): rayish-faces
    // counts the images it finished and the faces it found.
    let counted = prometheus.wait_for(r#"sum(ray_faces_images_total) by (status)"#, |r| {
        total(r) == images as f64
    });
    assert!(
        counted.iter().all(|s| s["metric"]["status"] == "ok"),
        "{counted:?}"
    );
    prometheus.wait_for("sum(ray_faces_found_total)", |r| total(r) >= images as f64);
    // Metrics recorded in tasks, on the workers, and a driver's gauge sent as it exits.
    let calls = cluster.scenario(["metrics", "--n", "20"]);
    assert_eq!(calls["n"], 20);
    let parity = prometheus.wait_for("sum(ray_test_task_calls_total) by (parity)", |r| {
        total(r) == 20.0
    });
    assert_eq!(parity.len(), 2, "{parity:?}");
    prometheus.wait_for("ray_test_driver_gauge", |r| total(r) == 20.0);
    // Arguments 0..19 in buckets up to 5, up to 10, and above: 6, 5 and 9 of them.
    prometheus.wait_for("sum(ray_test_task_values_count)", |r| total(r) == 20.0);
    let upto5 = prometheus.query(r#"sum(ray_test_task_values_bucket{le="5.0"})"#);
    assert_eq!(total(&upto5), 6.0, "{upto5:?}");
    let upto10 = prometheus.query(r#"sum(ray_test_task_values_bucket{le="10.0"})"#);
    assert_eq!(total(&upto10), 11.0, "{upto10:?}");
    let sum = prometheus.query("sum(ray_test_task_values_sum)");
    assert_eq!(total(&sum), 190.0, "{sum:?}");
    let groups = prometheus.query("sum(ray_placement_groups) by (State)");
    assert_eq!(groups.len(), 4, "{groups:?}");
    let nodes = prometheus.query("sum(autoscaler_active_nodes) by (NodeType)");
    assert_eq!(total(&nodes), 3.0, "{nodes:?}");

    // Every panel of Ray's default dashboard, as the ray 2.60 wheel generates it, with
    // its variables at "All": the ones a CPU cluster feeds must answer.
    let answered: Vec<String> = ray_default_dashboard()
        .into_iter()
        .filter(|(_, exprs)| {
            exprs
                .iter()
                .any(|e| !prometheus.query(&all_variables(e)).is_empty())
        })
        .map(|(title, _)| title)
        .collect();
    eprintln!("panels of Ray's default dashboard with data: {answered:?}");
    for panel in CPU_CLUSTER_PANELS {
        assert!(
            answered.iter().any(|a| a == panel),
            "Ray's {panel:?} panel shows nothing; these do: {answered:?}"
        );
    }

    // A node that leaves is dropped from the targets.
    drop(prometheus);
    let mut cluster = cluster;
    let mut last = cluster.nodes.pop().expect("a worker node");
    let _ = last.kill();
    let _ = last.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sd: Value =
            serde_json::from_str(&std::fs::read_to_string(&sd_file).expect("sd")).expect("json");
        if sd[0]["targets"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead node is still a target: {sd}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::remove_dir_all(&dir).ok();
}
