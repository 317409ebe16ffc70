//! The Helm chart (cluster/helm/rayish), as far as this machine can check it without a
//! Kubernetes cluster: `helm lint --strict`, `helm template` with the values the
//! pipeline and users set, every rendered object validated strictly against the
//! Kubernetes 1.37 schemas (kubernetes-validate), and what the objects say checked.
//!
//! Needs the tools scripts/setup-cluster-tests.sh installs (tests/run.sh runs it).

use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tools() -> PathBuf {
    let dir = std::env::var_os("RAYISH_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/rayish")))
        .expect("HOME")
        .join("k8s-tools/bin");
    assert!(
        dir.join("helm").is_file(),
        "{} has no helm: run scripts/setup-cluster-tests.sh",
        dir.display()
    );
    dir
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/helm/rayish")
}

/// Renders the chart with `--set` values, validates it, and returns its objects.
fn render(sets: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(tools().join("helm"));
    cmd.args(["template", "rel", chart().to_str().expect("path")]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("helm template");
    assert!(
        out.status.success(),
        "helm template {sets:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file =
        std::env::temp_dir().join(format!("rayish-helm-{:x}.yaml", rayish_suite::rand_u64()));
    std::fs::write(&file, &out.stdout).expect("write manifest");
    let check = Command::new(tools().join("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate");
    let report = String::from_utf8_lossy(&check.stdout).into_owned();
    let _ = std::fs::remove_file(&file);
    assert!(
        check.status.success() && !report.contains("ERROR"),
        "{sets:?}: {report}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("\n---")
        .filter_map(|doc| serde_yaml_ng::from_str::<Value>(doc).ok())
        .filter(|v| v.get("kind").is_some())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn args(deployment: &Value) -> Vec<String> {
    container(deployment)["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg").to_string())
        .collect()
}

/// Decodes base64 with coreutils' `base64 -d`.
fn unbase64(s: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("base64");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(s.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("base64 -d");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_chart_lints_clean() {
    let out = Command::new(tools().join("helm"))
        .args(["lint", "--strict", chart().to_str().expect("path")])
        .output()
        .expect("helm lint");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn defaults_render_a_head_a_service_two_workers_and_a_token() {
    let objects = render(&[]);
    let head = find(&objects, "Deployment", "rel-rayish-head").expect("head deployment");
    let workers = find(&objects, "Deployment", "rel-rayish-worker").expect("worker deployment");
    let service = find(&objects, "Service", "rel-rayish-head").expect("head service");
    let secret = find(&objects, "Secret", "rel-rayish-token").expect("token secret");
    assert!(find(&objects, "HorizontalPodAutoscaler", "rel-rayish-worker").is_none());
    assert_eq!(head["spec"]["replicas"].as_u64(), Some(1));
    assert_eq!(workers["spec"]["replicas"].as_u64(), Some(2));
    assert_eq!(container(head)["image"].as_str(), Some("rayish:latest"));
    assert!(args(head).iter().any(|a| a == "--head"));
    assert!(args(workers).contains(&"--address=rel-rayish-head:6379".to_string()));
    assert_eq!(service["spec"]["ports"][0]["port"].as_u64(), Some(6379));
    assert_eq!(
        service["spec"]["ports"][0]["protocol"].as_str(),
        Some("UDP")
    );
    // The token is made at install (40 characters), never passed on a command line.
    let token = unbase64(secret["data"]["token"].as_str().expect("token"));
    assert_eq!(token.len(), 40, "{token}");
    for d in [head, workers] {
        assert!(!args(d).iter().any(|a| a.contains("token")));
        let env = container(d)["env"].as_sequence().expect("env");
        let from = env
            .iter()
            .find(|e| e["name"].as_str() == Some("RAYISH_TOKEN"))
            .expect("RAYISH_TOKEN");
        assert_eq!(
            from["valueFrom"]["secretKeyRef"]["name"].as_str(),
            Some("rel-rayish-token")
        );
        let shm = &d["spec"]["template"]["spec"]["volumes"][0];
        assert_eq!(shm["emptyDir"]["medium"].as_str(), Some("Memory"));
    }
}

#[test]
fn the_pipeline_s_values_set_the_image_and_an_hpa_owns_the_worker_count() {
    let objects = render(&[
        "image.repository=123456789012.dkr.ecr.eu-west-1.amazonaws.com/rayish",
        "image.tag=0123456789ab",
        "autoscaling.enabled=true",
        "autoscaling.maxReplicas=12",
        "token=s3cret-token",
    ]);
    let image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rayish:0123456789ab";
    for name in ["rel-rayish-head", "rel-rayish-worker"] {
        let d = find(&objects, "Deployment", name).expect(name);
        assert_eq!(container(d)["image"].as_str(), Some(image), "{name}");
    }
    let workers = find(&objects, "Deployment", "rel-rayish-worker").expect("workers");
    assert!(
        workers["spec"].get("replicas").is_none(),
        "the HPA owns replicas"
    );
    let hpa = find(&objects, "HorizontalPodAutoscaler", "rel-rayish-worker").expect("hpa");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"].as_str(),
        Some("rel-rayish-worker")
    );
    assert_eq!(hpa["spec"]["maxReplicas"].as_u64(), Some(12));
    let secret = find(&objects, "Secret", "rel-rayish-token").expect("secret");
    assert_eq!(
        unbase64(secret["data"]["token"].as_str().expect("token")),
        "s3cret-token"
    );
}

#[test]
fn an_existing_secret_is_used_instead_of_making_one() {
    let objects = render(&["existingSecret=my-token"]);
    assert!(objects.iter().all(|o| o["kind"].as_str() != Some("Secret")));
    let head = find(&objects, "Deployment", "rel-rayish-head").expect("head");
    let env = container(head)["env"].as_sequence().expect("env");
    assert!(env
        .iter()
        .any(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str() == Some("my-token")));
}
