//! `rayish microbenchmark`: Ray's benchmark names in Ray's output format, JSON,
//! Ray's TESTS_TO_RUN / TESTS_TO_SKIP filters, local mode and a cluster. Short
//! (`--quick`) runs: these check what runs and what is printed, never speed.

use rayish_suite::{rayish_bin, TestCluster};
use std::collections::BTreeSet;
use std::process::{Command, Output};

/// The benchmarks of Ray 2.60's ray_perf.py that rayish runs (all but the threaded
/// and async actors', placement groups' and Ray Client's).
const RAY_NAMES: &[&str] = &[
    "single client get calls (Plasma Store)",
    "single client put calls (Plasma Store)",
    "multi client put calls (Plasma Store)",
    "single client put gigabytes",
    "single client tasks and get batch",
    "multi client put gigabytes",
    "single client get object containing 10k refs",
    "single client wait 1k refs",
    "single client tasks sync",
    "single client tasks async",
    "multi client tasks async",
    "1:1 actor calls sync",
    "1:1 actor calls async",
    "1:n actor calls async",
    "n:n actor calls async",
    "n:n actor calls with arg async",
];

/// rayish's own lines, for the gigabytes-per-second targets.
const EXTRA_NAMES: &[&str] = &[
    "memcpy gigabytes",
    "single client put gigabytes (non-zero data)",
    "single client get gigabytes",
    "single client get gigabytes (copied)",
];

fn microbenchmark(envs: &[(&str, &str)], args: &[&str]) -> Output {
    let out = Command::new(rayish_bin())
        .args(["microbenchmark", "--quick"])
        .args(args)
        .env_remove("TESTS_TO_RUN")
        .env_remove("TESTS_TO_SKIP")
        .env_remove("RAYISH_ADDRESS")
        .envs(envs.iter().copied())
        .output()
        .expect("run rayish microbenchmark");
    assert!(
        out.status.success(),
        "rayish microbenchmark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `<name> per second <mean> +- <sd>` lines of `text`, as (name, mean, sd).
fn ray_lines(text: &str) -> Vec<(String, f64, f64)> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(" per second ")?;
            let (mean, sd) = rest.split_once(" +- ")?;
            Some((name.to_string(), mean.parse().ok()?, sd.parse().ok()?))
        })
        .collect()
}

#[test]
fn runs_every_ray_benchmark_it_supports_in_ray_s_format() {
    let out = microbenchmark(&[], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = ray_lines(&stdout);
    let names: BTreeSet<&str> = lines.iter().map(|(n, _, _)| n.as_str()).collect();
    let expected: BTreeSet<&str> = RAY_NAMES.iter().chain(EXTRA_NAMES).copied().collect();
    assert_eq!(names, expected, "{stdout}");
    assert_eq!(
        lines.len(),
        expected.len(),
        "each benchmark once:\n{stdout}"
    );
    for (name, mean, sd) in &lines {
        assert!(
            *mean > 0.0 && sd.is_finite() && *sd >= 0.0,
            "{name}: {mean} +- {sd}"
        );
    }
    // Every line of stdout is a result line (Ray's tip and the list of benchmarks
    // left out go to stderr).
    assert_eq!(stdout.lines().count(), lines.len(), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not run: 1:1 actor calls concurrent"),
        "{stderr}"
    );
}

#[test]
fn filters_as_ray_and_prints_json_against_a_cluster() {
    let cluster = TestCluster::start(1, 1, 5000);
    let out = microbenchmark(
        &[
            ("TESTS_TO_RUN", "tasks"),
            ("TESTS_TO_SKIP", "multi"),
            ("RAYISH_TOKEN", &cluster.token),
        ],
        &["--json", "--address", &cluster.address],
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    let results = doc["results"].as_array().expect("results");
    let names: Vec<&str> = results.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "single client tasks and get batch",
            "single client tasks sync",
            "single client tasks async"
        ]
    );
    for r in results {
        assert!(r["per_second"].as_f64().is_some_and(|v| v > 0.0), "{r}");
        assert!(r["sd"].as_f64().is_some_and(|v| v >= 0.0), "{r}");
    }
    // The human lines still come, on stderr, and say the same.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = ray_lines(&stderr);
    assert_eq!(lines.len(), 3, "{stderr}");
    for ((name, mean, _), r) in lines.iter().zip(results) {
        assert_eq!(Some(name.as_str()), r["name"].as_str());
        let json_mean = r["per_second"].as_f64().unwrap_or(f64::NAN);
        assert!(
            (mean - json_mean).abs() <= 0.006,
            "{name}: {mean} vs {json_mean}"
        );
    }
    // The tasks ran on the cluster: the head counted them (each benchmark at least
    // its warm-up's thousands of tasks).
    let status = cluster.status().expect("status");
    let finished = status["finished_tasks"].as_u64().unwrap_or(0);
    assert!(
        finished >= 1000,
        "the cluster ran {finished} tasks: {status}"
    );
}
