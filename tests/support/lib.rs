//! Test harness: a real cluster of `rayish` processes on distinct loopback addresses.
//!
//! The head listens on 127.0.0.2; node i on 127.0.0.(3+i). Every cluster gets its own
//! temp root, so tests never see each other's files, and clusters are started one at a
//! time (a process-wide lock) because the machine has two cores.

pub mod fuzz;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Holds the machine for one test (clusters are started one at a time).
pub fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// The directory holding the built binaries (`target/<profile>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> or target/<profile>/<bench>
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The `rayish` binary.
pub fn rayish_bin() -> PathBuf {
    let p = target_dir().join("rayish");
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build --release --workspace)",
        p.display()
    );
    p
}

/// An example binary (a user's program in `examples/`).
pub fn example_bin(name: &str) -> PathBuf {
    let p = target_dir().join("examples").join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the examples first",
        p.display()
    );
    p
}

/// The test drivers in `tests/drivers/`, built as this package's binaries.
pub const TEST_DRIVERS: [&str; 2] = ["cluster_driver", "actor_driver"];

/// A test driver's binary (one of [`TEST_DRIVERS`]).
pub fn driver_bin(name: &str) -> PathBuf {
    assert!(TEST_DRIVERS.contains(&name), "{name} is not a test driver");
    let p = target_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the workspace's binaries first",
        p.display()
    );
    p
}

/// A test driver's binary, or else an example's.
pub fn program_bin(name: &str) -> PathBuf {
    if TEST_DRIVERS.contains(&name) {
        driver_bin(name)
    } else {
        example_bin(name)
    }
}

/// A running test cluster.
pub struct TestCluster {
    /// Its temp root.
    pub root: PathBuf,
    /// The head's address.
    pub address: String,
    /// The token.
    pub token: String,
    /// The head's dashboard, `http://HOST:PORT`.
    pub dashboard: String,
    /// Node processes: index 0 is the head.
    pub nodes: Vec<Child>,
    /// The head's `rayish start` arguments, for [`Self::restart_head`].
    head_args: Vec<String>,
    _lock: MutexGuard<'static, ()>,
}

/// A UDP port free on `ip` now.
pub fn free_port(ip: &str) -> u16 {
    let sock = std::net::UdpSocket::bind((ip, 0)).expect("bind for a free port");
    sock.local_addr().expect("local addr").port()
}

/// A TCP port free on `ip` now.
pub fn free_tcp_port(ip: &str) -> u16 {
    let sock = std::net::TcpListener::bind((ip, 0)).expect("bind for a free port");
    sock.local_addr().expect("local addr").port()
}

impl TestCluster {
    /// Starts a head and `workers` more nodes, each with `cpus` CPUs.
    pub fn start(workers: usize, cpus: u32, node_timeout_ms: u64) -> Self {
        Self::start_with(workers, cpus, node_timeout_ms, &[])
    }

    /// As `start`, with `extra` arguments to every node's `rayish start`.
    pub fn start_with(workers: usize, cpus: u32, node_timeout_ms: u64, extra: &[&str]) -> Self {
        Self::start_at("127.0.0.2", workers, cpus, node_timeout_ms, extra)
    }

    /// As `start_with`, with the head on `head_ip` (the other nodes on 127.0.0.3 on).
    pub fn start_at(
        head_ip: &str,
        workers: usize,
        cpus: u32,
        node_timeout_ms: u64,
        extra: &[&str],
    ) -> Self {
        let lock = exclusive();
        let root = std::env::temp_dir().join(format!("rayish-test-{:x}", rand_u64()));
        std::fs::create_dir_all(&root).expect("temp root");
        let port = free_port(head_ip);
        let address = format!("{head_ip}:{port}");
        let token = format!("{:016x}{:016x}", rand_u64(), rand_u64());
        let common_args = |ip: &str| -> Vec<String> {
            let mut args: Vec<String> = vec![
                "--block".into(),
                "--node-ip-address".into(),
                ip.into(),
                "--num-cpus".into(),
                cpus.to_string(),
                "--node-timeout-ms".into(),
                node_timeout_ms.to_string(),
                "--temp-dir".into(),
                root.to_string_lossy().into_owned(),
            ];
            args.extend(extra.iter().map(|a| a.to_string()));
            args
        };
        let common = |cmd: &mut Command, ip: &str| {
            cmd.args(common_args(ip))
                // The token in the environment, as README says: never on a command line.
                .env("RAYISH_TOKEN", &token)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        };
        let dashboard_port = free_tcp_port(head_ip);
        let mut head_args: Vec<String> = ["start", "--head", "--port", &port.to_string()]
            .iter()
            .map(|a| a.to_string())
            .collect();
        head_args.extend(
            [
                "--dashboard-host",
                head_ip,
                "--dashboard-port",
                &dashboard_port.to_string(),
            ]
            .map(String::from),
        );
        head_args.extend(common_args(head_ip));
        let mut head = Command::new(rayish_bin());
        head.args(&head_args)
            .env("RAYISH_TOKEN", &token)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut nodes = vec![head.spawn().expect("start head")];
        let mut cluster = Self {
            root: root.clone(),
            address,
            token: token.clone(),
            dashboard: format!("http://{head_ip}:{dashboard_port}"),
            nodes: Vec::new(),
            head_args,
            _lock: lock,
        };
        cluster.wait_for_nodes(1);
        for i in 0..workers {
            let ip = format!("127.0.0.{}", 3 + i);
            let mut node = Command::new(rayish_bin());
            node.args(["start", "--address", &cluster.address]);
            common(&mut node, &ip);
            nodes.push(node.spawn().expect("start node"));
        }
        cluster.nodes = nodes;
        cluster.wait_for_nodes(1 + workers);
        cluster
    }

    /// Joins one more node on `ip` with extra `rayish start` arguments.
    pub fn join(&mut self, ip: &str, cpus: u32, extra: &[&str]) {
        self.join_with(Command::new(rayish_bin()), ip, cpus, extra);
    }

    /// Joins one more node, as `join` does, on `host`'s inside address and inside its
    /// network namespace.
    pub fn join_in(&mut self, host: &NetnsHost, cpus: u32, extra: &[&str]) {
        self.join_with(host.command(&rayish_bin()), &host.inside, cpus, extra);
    }

    /// Starts `rayish` (`cmd`, with any wrapper) as a node on `ip` and waits for it.
    fn join_with(&mut self, mut cmd: Command, ip: &str, cpus: u32, extra: &[&str]) {
        let child = cmd
            .args(["start", "--block", "--address", &self.address])
            .env("RAYISH_TOKEN", &self.token)
            .args(["--node-ip-address", ip, "--num-cpus", &cpus.to_string()])
            .args(extra)
            .arg("--temp-dir")
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node");
        self.nodes.push(child);
        self.wait_for_nodes(self.nodes.len());
    }

    /// The id (hex) of the node listening on `ip`, from `rayish status`.
    pub fn node_id_at(&self, ip: &str) -> Option<String> {
        let status = String::from_utf8_lossy(&self.rayish(&["status"]).stdout).into_owned();
        let needle = format!(" {ip}:");
        status
            .lines()
            // Node lines only (the title names the head's address too).
            .filter(|l| !l.starts_with('='))
            .find(|l| l.contains(&needle))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string)
    }

    /// `rayish status --json`, parsed.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.rayish(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Runs a `rayish` subcommand against this cluster.
    pub fn rayish(&self, args: &[&str]) -> Output {
        Command::new(rayish_bin())
            .args(args)
            .args(["--address", &self.address])
            .env("RAYISH_TOKEN", &self.token)
            .env("RAYISH_TEMP_DIR", &self.root)
            .output()
            .expect("run rayish")
    }

    /// Number of live nodes the head reports.
    pub fn alive_nodes(&self) -> usize {
        self.status()
            .and_then(|s| {
                s["nodes"]
                    .as_array()
                    .map(|n| n.iter().filter(|n| n["alive"] == true).count())
            })
            .unwrap_or(0)
    }

    /// Waits (up to a minute) until `n` nodes are alive.
    pub fn wait_for_nodes(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.alive_nodes() < n {
            assert!(
                Instant::now() < deadline,
                "cluster did not reach {n} live nodes"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A command for a test driver or an example, pointed at this cluster.
    pub fn driver(&self, program: &str) -> Command {
        self.driver_env(Command::new(program_bin(program)))
    }

    /// [`Self::driver`] run inside `host`'s network namespace.
    pub fn driver_in(&self, host: &NetnsHost, program: &str) -> Command {
        self.driver_env(host.command(&program_bin(program)))
    }

    fn driver_env(&self, mut cmd: Command) -> Command {
        cmd.env("RAYISH_ADDRESS", &self.address)
            .env("RAYISH_TOKEN", &self.token)
            .env("RAYISH_TEMP_DIR", &self.root);
        cmd
    }

    /// Runs a `cluster_driver` scenario to completion against this cluster, checks it
    /// succeeded, and returns its `RESULT` JSON.
    pub fn scenario<I, S>(&self, args: I) -> serde_json::Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        run_for_result(self.driver("cluster_driver").args(args))
    }

    /// Starts a `cluster_driver` scenario in the background; returns the process and
    /// its stdout lines (its stderr is piped too, for failure messages).
    pub fn spawn_scenario<I, S>(&self, args: I) -> (Child, Box<dyn Iterator<Item = String>>)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.spawn_driver("cluster_driver", args)
    }

    /// Starts a test driver or an example in the background; returns the process and its stdout
    /// lines (its stderr is piped too, for failure messages).
    pub fn spawn_driver<I, S>(
        &self,
        program: &str,
        args: I,
    ) -> (Child, Box<dyn Iterator<Item = String>>)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.spawn_driver_with(program, args, &[])
    }

    /// [`Self::spawn_driver`] with more environment variables.
    pub fn spawn_driver_with<I, S>(
        &self,
        program: &str,
        args: I,
        env: &[(&str, &str)],
    ) -> (Child, Box<dyn Iterator<Item = String>>)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut child = self
            .driver(program)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the driver");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok);
        (child, Box::new(lines))
    }

    /// Kills the head with SIGKILL and starts it again with the same arguments and
    /// storage, but no token: it must take the one its storage kept. Waits until
    /// `nodes` nodes (its own included) are alive again.
    pub fn restart_head(&mut self, nodes: usize) {
        self.restart_head_after(nodes, std::time::Duration::ZERO);
    }

    /// As [`Self::restart_head`], with the head away for `away` between its death
    /// and its new start.
    pub fn restart_head_after(&mut self, nodes: usize, away: std::time::Duration) {
        self.kill_node(0);
        std::thread::sleep(away);
        self.start_head_again(nodes);
    }

    /// Starts the head killed by [`Self::kill_node`]`(0)` again, as
    /// [`Self::restart_head`] does.
    pub fn start_head_again(&mut self, nodes: usize) {
        self.nodes[0] = Command::new(rayish_bin())
            .args(&self.head_args)
            .env_remove("RAYISH_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restart head");
        self.wait_for_nodes(nodes);
    }

    /// The head's storage directory (`--storage-path`'s default).
    pub fn storage_dir(&self) -> PathBuf {
        let port = self.address.rsplit(':').next().unwrap_or_default();
        self.root.join(format!("head_storage_{port}"))
    }

    /// Kills node `i` (0 is the head) with SIGKILL.
    pub fn kill_node(&mut self, i: usize) {
        let _ = self.nodes[i].kill();
        let _ = self.nodes[i].wait();
    }

    /// The temp root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The session directory of node `i` (0 is the head): named after its pid.
    pub fn session_of(&self, i: usize) -> PathBuf {
        let suffix = format!("_{}", self.nodes[i].id());
        std::fs::read_dir(&self.root)
            .expect("temp root")
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("session_") && n.ends_with(&suffix))
            })
            .unwrap_or_else(|| panic!("no session directory of node {i}"))
    }

    /// Starts the `state` scenario (tasks, two failures, a named actor; it then waits
    /// for the file `go`) and returns it with its `RESULT`.
    pub fn start_state_scenario(&self, n: u32, go: &Path) -> (Child, serde_json::Value) {
        let (driver, mut lines) = self.spawn_scenario([
            "state",
            "--n",
            &n.to_string(),
            "--go",
            go.to_str().expect("utf-8 path"),
        ]);
        let result = lines
            .by_ref()
            .find_map(|l| {
                l.strip_prefix("RESULT ")
                    .map(|j| serde_json::from_str(j).expect("result json"))
            })
            .expect("the driver printed no RESULT");
        (driver, result)
    }
}

/// The stdout of a finished command, which must have succeeded.
pub fn stdout_of(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A GET of a plain-HTTP URL with `headers`: status and body.
pub fn http_get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = ureq::get(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Waits for a scenario started with [`TestCluster::spawn_scenario`], checks it
/// succeeded and returns its `RESULT` JSON.
pub fn finish_scenario(
    mut child: Child,
    lines: Box<dyn Iterator<Item = String>>,
) -> serde_json::Value {
    let rest: Vec<String> = lines.collect();
    let status = child.wait().expect("wait for the driver");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(status.success(), "driver failed:\n{rest:?}\n{stderr}");
    let line = rest
        .iter()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line:\n{rest:?}\n{stderr}"));
    serde_json::from_str(line).expect("RESULT json")
}

/// Runs a driver to completion, checks it succeeded, and returns its `RESULT` JSON.
pub fn run_for_result(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().expect("run the driver");
    assert!(
        out.status.success(),
        "driver failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    result_of(&out)
}

/// Runs `cmd` to completion, or kills it after `limit`: `None` if it had to be
/// killed (a hang), else its output.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Read both pipes on threads so that a chatty child cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    status.map(|status| Output {
        status,
        stdout,
        stderr,
    })
}

/// Parses the `RESULT {json}` line a driver (cluster_driver, faces_custom) prints.
pub fn result_of(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "no RESULT line; stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).expect("RESULT json")
}

/// Every log file of every session under `root`, concatenated.
pub fn read_logs(root: &Path) -> String {
    let mut logs = String::new();
    for session in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if let Ok(dir) = std::fs::read_dir(session.path().join("logs")) {
            for f in dir.flatten() {
                logs += &std::fs::read_to_string(f.path()).unwrap_or_default();
            }
        }
    }
    logs
}

/// A `/proc/<pid>/status` field given in kB, in bytes (0 if unreadable).
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let prefix = format!("{field}:");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS")
}

/// The pids `rayish stop` would act on under temp root `root`.
pub fn read_registered_pids(root: &Path) -> Vec<u32> {
    std::fs::read_dir(root.join("processes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
        .collect()
}

/// The pids whose parent is `pid` (a node's worker processes).
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let after = &s[s.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// A random number from the OS.
pub fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    u64::from_le_bytes(b)
}

/// "Machines" for one test (tests/support/machines.sh): network namespaces with their
/// own address, host name, home, /tmp, /srv and /dev/shm, each running sshd (and, with
/// an image, its own Docker daemon holding it); removed on drop. Needs root.
pub struct Machines {
    name: &'static str,
    /// Their addresses, in order.
    pub addresses: Vec<String>,
    /// The private key that logs in as root on all of them.
    pub key: PathBuf,
}

impl Machines {
    /// Starts `count` machines on 10.`subnet`.0.0/24.
    pub fn up(name: &'static str, count: usize, subnet: u8, image: Option<&str>) -> Self {
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "the launcher test needs root (it makes network namespaces); CI runs as root"
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/machines.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args(["up", name, &count.to_string(), &subnet.to_string()])
            .args(image)
            .output()
            .expect("machines.sh");
        assert!(
            out.status.success(),
            "machines.sh up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let addresses: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(
            addresses.len(),
            count,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            name,
            addresses,
            key: PathBuf::from(format!("/run/rayish-machines/{name}/id_ed25519")),
        }
    }

    /// Command lines of the processes running in machine `i` (0-based).
    pub fn processes(&self, i: usize) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "pids", &format!("{}-m{}", self.name, i + 1)])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .collect()
    }
}

impl Machines {
    /// Runs a shell command as root on machine `i` (0-based) over ssh; its stdout.
    pub fn ssh(&self, i: usize, command: &str) -> String {
        let out = Command::new("ssh")
            .args(["-i", &self.key.display().to_string()])
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .arg(format!("root@{}", self.addresses[i]))
            .arg(format!("bash --login -c '{command}'"))
            .output()
            .expect("ssh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/machines.sh");
        let _ = Command::new("bash")
            .arg(script)
            .args(["down", self.name])
            .status();
    }
}

/// `rayish ARGS` with the cluster launcher's local state in `state`
/// (`RAYISH_CLUSTERS_DIR`), as the `up/submit/exec/down` tests run it.
pub fn cluster_cli(args: &[&str], state: &Path) -> Output {
    Command::new(rayish_bin())
        .args(args)
        .env("RAYISH_CLUSTERS_DIR", state)
        .output()
        .expect("run rayish")
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Submits the faces job over the cluster file's mounts (`/srv/faces/photos`,
/// `/srv/faces/models`) to the cluster of `cfg`, and fetches its encodings.jsonl from
/// the head, by image file name.
pub fn submit_faces_job(
    cfg: &str,
    state: &Path,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let faces = target_dir().join("rayish-faces");
    let out = cluster_cli(
        &[
            "submit",
            cfg,
            faces.to_str().expect("path"),
            "encode",
            "/srv/faces/photos",
            "--models",
            "/srv/faces/models",
            "--out",
            "/srv/faces/out",
            "--quiet",
        ],
        state,
    );
    assert!(out.status.success(), "submit: {}", output_text(&out));
    let fetched = cluster_cli(&["exec", cfg, "cat /srv/faces/out/encodings.jsonl"], state);
    assert!(fetched.status.success(), "{}", output_text(&fetched));
    faces_by_file(&String::from_utf8_lossy(&fetched.stdout))
}

/// The faces job in local mode on this machine, writing to `out`: its encodings.jsonl
/// by image file name.
pub fn local_faces_job(
    photos: &Path,
    models: &Path,
    out: &Path,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let res = Command::new(target_dir().join("rayish-faces"))
        .arg("encode")
        .arg(photos)
        .arg("--models")
        .arg(models)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .env_remove("RAYISH_ADDRESS")
        .output()
        .expect("local faces");
    assert!(res.status.success(), "local faces: {}", output_text(&res));
    faces_by_file(&std::fs::read_to_string(out.join("encodings.jsonl")).expect("local jsonl"))
}

/// `rayish-faces` output (encodings.jsonl) by image file name, one record each.
pub fn faces_by_file(jsonl: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("jsonl line");
            let name = Path::new(v["path"].as_str().expect("path"))
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name, v)
        })
        .collect()
}

/// Checks that two runs' records agree image by image: the same images, statuses and
/// boxes, and encodings within `tolerance` in every component.
pub fn assert_same_faces(
    expected: &std::collections::BTreeMap<String, serde_json::Value>,
    got: &std::collections::BTreeMap<String, serde_json::Value>,
    tolerance: f64,
) {
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (name, e) in expected {
        let g = &got[name];
        assert_eq!(
            (&e["status"], &e["boxes"]),
            (&g["status"], &g["boxes"]),
            "{name}"
        );
        let d = max_abs_diff(&e["encodings"], &g["encodings"]);
        assert!(d < tolerance, "{name}: encodings differ by {d}");
    }
}

/// The largest difference between two equally shaped JSON arrays of numbers.
pub fn max_abs_diff(a: &serde_json::Value, b: &serde_json::Value) -> f64 {
    use serde_json::Value;
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "shapes differ: {a} vs {b}");
            x.iter()
                .zip(y)
                .map(|(p, q)| max_abs_diff(p, q))
                .fold(0.0, f64::max)
        }
        _ => (a.as_f64().expect("number") - b.as_f64().expect("number")).abs(),
    }
}

/// A host of its own for a test: a network namespace joined to this one by a veth
/// pair, reachable from here at `inside` and reaching this one at `outside`, that the
/// test can cut off (both ends stay up as processes; only the link goes).
pub struct NetnsHost {
    /// The namespace's name.
    pub name: String,
    /// This side's end of the pair.
    veth: String,
    /// This side's address on the link.
    pub outside: String,
    /// The namespace's address.
    pub inside: String,
}

fn ip_cmd(args: &[&str]) {
    run_checked("ip", args);
}

/// Runs `program` with `args`; fails the test, with its stderr, if it fails.
fn run_checked<S: AsRef<str>>(program: &str, args: &[S]) {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let out = Command::new(program)
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetnsHost {
    /// Creates namespace `rayish-<tag>` on 10.213.`subnet`.0/24 (the tests run as root).
    pub fn create(tag: &str, subnet: u8) -> Self {
        let name = format!("rayish-{tag}");
        let veth = format!("rv{tag}");
        let inner = format!("rvi{tag}");
        // Left over from a run that was killed: the namespace takes its link with it.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &veth]).output();
        let (outside, inside) = (format!("10.213.{subnet}.1"), format!("10.213.{subnet}.2"));
        ip_cmd(&["netns", "add", &name]);
        ip_cmd(&["link", "add", &veth, "type", "veth", "peer", "name", &inner]);
        ip_cmd(&["link", "set", &inner, "netns", &name]);
        ip_cmd(&["addr", "add", &format!("{outside}/24"), "dev", &veth]);
        ip_cmd(&["link", "set", &veth, "up"]);
        ip_cmd(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{inside}/24"),
            "dev",
            &inner,
        ]);
        ip_cmd(&["-n", &name, "link", "set", &inner, "up"]);
        ip_cmd(&["-n", &name, "link", "set", "lo", "up"]);
        Self {
            name,
            veth,
            outside,
            inside,
        }
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Sends everything not for this side's address through this side, so that
    /// hosts in two namespaces reach each other with this namespace as their router
    /// (see [`Forwarding`]).
    pub fn route_through_outside(&self) {
        ip_cmd(&[
            "-n",
            &self.name,
            "route",
            "add",
            "default",
            "via",
            &self.outside,
        ]);
    }

    /// Takes the link down: nothing passes either way until [`Self::heal`].
    pub fn cut(&self) {
        ip_cmd(&["link", "set", &self.veth, "down"]);
    }

    /// Brings the link back.
    pub fn heal(&self) {
        ip_cmd(&["link", "set", &self.veth, "up"]);
    }
}

impl Drop for NetnsHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

/// Two namespace hosts routed to each other through this namespace (which keeps
/// reaching both): the test can cut the route between them alone, as a partition
/// between two nodes that the head still hears from.
pub struct Forwarding {
    /// `iptables` rule specifications this inserted into `FORWARD`, removed on drop.
    rules: Vec<Vec<String>>,
    ends: (String, String),
}

impl Forwarding {
    /// Lets `a` and `b` reach each other through this namespace. (Docker's `FORWARD`
    /// policy is DROP: the two directions are accepted explicitly.)
    pub fn between(a: &NetnsHost, b: &NetnsHost) -> Self {
        a.route_through_outside();
        b.route_through_outside();
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable forwarding");
        let mut f = Self {
            rules: Vec::new(),
            ends: (a.veth.clone(), b.veth.clone()),
        };
        f.insert("ACCEPT");
        f
    }

    /// Drops everything between the two, both ways, until [`Self::heal`].
    pub fn cut(&mut self) {
        self.insert("DROP");
    }

    /// Removes the cut.
    pub fn heal(&mut self) {
        self.rules.retain(|rule| {
            if rule.last().map(String::as_str) == Some("DROP") {
                let delete: Vec<&str> = std::iter::once("-D")
                    .chain(rule.iter().map(String::as_str))
                    .collect();
                run_checked("iptables", &delete);
                false
            } else {
                true
            }
        });
    }

    fn insert(&mut self, verdict: &str) {
        let (a, b) = self.ends.clone();
        for (from, to) in [(&a, &b), (&b, &a)] {
            let rule: Vec<String> = ["FORWARD", "-i", from, "-o", to, "-j", verdict]
                .iter()
                .map(|s| s.to_string())
                .collect();
            // Inserted first: a cut goes before the accepts.
            let insert: Vec<&str> = ["-I", "FORWARD", "1"]
                .into_iter()
                .chain(rule[1..].iter().map(String::as_str))
                .collect();
            run_checked("iptables", &insert);
            self.rules.push(rule);
        }
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        for rule in self.rules.drain(..) {
            let _ = Command::new("iptables").arg("-D").args(&rule).output();
        }
    }
}
