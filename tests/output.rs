//! Worker output in the driver (Ray's `log_to_driver`): lines that tasks on two nodes
//! print appear in the driver's terminal prefixed with the function, `pid=` and
//! `ip=`, a line every task prints folded as Ray folds it (`[repeated Nx across
//! cluster]`), stderr to stderr; `Config::log_to_driver(false)` turns it off, and the
//! workers' log files keep every line either way.

use rayish_suite::TestCluster;
use std::collections::BTreeSet;
use std::process::Output;

const SAME: &str = "the same line from every task";

/// Lines ending with `suffix` in the workers' log files of every session under
/// `root` (`session_latest` is a link to one of them: not counted twice).
fn worker_lines(root: &std::path::Path, suffix: &str) -> usize {
    let mut n = 0;
    for session in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if session.file_type().map_or(true, |t| t.is_symlink()) {
            continue;
        }
        for f in std::fs::read_dir(session.path().join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.file_name().to_string_lossy().starts_with("worker-") {
                let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                n += text.lines().filter(|l| l.ends_with(suffix)).count();
            }
        }
    }
    n
}

fn run(cluster: &TestCluster, quiet: bool) -> Output {
    let mut cmd = cluster.driver("cluster_driver");
    cmd.args(["print", "--n", "24"]);
    if quiet {
        cmd.env("TEST_NO_LOG_TO_DRIVER", "1");
    }
    let out = cmd.output().expect("run the driver");
    assert!(
        out.status.success(),
        "driver failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn what_tasks_print_appears_in_the_driver_prefixed_and_folded() {
    let cluster = TestCluster::start(1, 2, 5000);
    let out = run(&cluster, false);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();

    // Each task's own line, once, prefixed `(cluster_driver::chatter pid=N, ip=IP)`.
    let own: Vec<&str> = stdout
        .lines()
        .filter(|l| l.ends_with(" says hello"))
        .collect();
    assert_eq!(own.len(), 24, "{stdout}");
    let mut ips = BTreeSet::new();
    for line in &own {
        let prefix = line.split(')').next().expect("prefix");
        assert!(
            prefix.starts_with("(cluster_driver::chatter pid="),
            "{line}"
        );
        let ip = prefix.split("ip=").nth(1).expect("ip=");
        ips.insert(ip.to_string());
    }
    assert_eq!(
        ips,
        BTreeSet::from(["127.0.0.2".to_string(), "127.0.0.3".to_string()]),
        "tasks ran on both nodes: {stdout}"
    );

    // The line every task printed: shown as it came until a second process printed
    // it, then counted, and the count printed once (here as the driver exits).
    let shown = stdout.lines().filter(|l| l.ends_with(SAME)).count();
    let folded: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(SAME) && l.contains("[repeated "))
        .collect();
    assert_eq!(folded.len(), 1, "{stdout}");
    let repeats: usize = folded[0]
        .split("[repeated ")
        .nth(1)
        .and_then(|r| r.split('x').next())
        .and_then(|n| n.parse().ok())
        .expect("a repeat count");
    assert!(folded[0].ends_with("x across cluster]"), "{}", folded[0]);
    assert!(repeats >= 1, "{stdout}");
    assert_eq!(shown + repeats, 24, "{stdout}");

    // stderr to stderr, prefixed too.
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("(cluster_driver::chatter pid=")
                && l.ends_with(") a line to stderr")),
        "{stderr}"
    );
    assert!(!stdout.contains("a line to stderr"), "{stdout}");

    // Off: nothing in the driver, everything still in the workers' log files.
    let quiet = run(&cluster, true);
    let quiet_out = String::from_utf8_lossy(&quiet.stdout);
    assert!(!quiet_out.contains("says hello"), "{quiet_out}");
    assert!(!quiet_out.contains(SAME), "{quiet_out}");
    assert_eq!(
        worker_lines(cluster.root(), " says hello"),
        48,
        "both runs' lines in the workers' log files"
    );
}
