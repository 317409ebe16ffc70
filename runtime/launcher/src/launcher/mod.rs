//! The cluster launcher: `rayish up / down / exec / submit / attach / get-head-ip` from
//! a Ray-format cluster YAML (Ray's `autoscaler/_private/commands.py` and its local
//! node provider).
//!
//! `up` brings each machine to the state the file describes: rayish's own binary in
//! `~/.rayish/bin` (put first on `PATH` for every command), the file mounts, then the
//! initialization, setup and start commands, with `$RAY_HEAD_IP` and the cluster token
//! in the environment. A machine remembers (in `~/.rayish/up/`) a digest of what it
//! was last brought up with; if that digest is unchanged and its node is alive in the
//! cluster, `up` leaves it alone, so a second `up` changes nothing that is right.
//!
//! Architecture invariant: the launcher only runs commands on machines and reads what
//! they print; it never speaks the cluster's wire protocol and never links into a
//! running node. The head learns about machines the way Ray's does, from nodes joining.

pub mod config;
pub mod ssh;

use config::{ClusterPlan, ContainerPlan, RoleCommands};
use rayish_core::protocol::ClusterStatus;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ssh::{shell_quote, Machine, SshError, SshOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a launcher command failed.
#[derive(Debug, Error)]
pub enum LaunchError {
    /// A remote step failed.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// Local state could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The cluster did not reach the state asked for.
    #[error("{0}")]
    NotReady(String),
}

/// Where `rayish up` puts the ssh key the head uses to reach the pool (Ray's name).
pub const BOOTSTRAP_KEY: &str = "~/ray_bootstrap_key.pem";

/// Where the remote side keeps rayish's binary and `up`'s digests (relative to home).
const REMOTE_BIN: &str = ".rayish/bin";
const REMOTE_UP: &str = ".rayish/up";

/// What this machine remembers of a cluster it launched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterState {
    /// The cluster token every node was started with.
    pub token: String,
    /// The head machine.
    pub head: String,
    /// Worker machines `up` started.
    pub workers: Vec<String>,
}

/// The role a machine plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The head.
    Head,
    /// A worker.
    Worker,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Head => "head",
            Role::Worker => "worker",
        }
    }
}

/// What happened to one machine during `up`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineOutcome {
    /// Already as described and alive: left alone.
    Unchanged,
    /// Set up and (re)started.
    Started,
}

/// Launches and tears down one cluster.
pub struct Launcher {
    plan: ClusterPlan,
    config_text: String,
    ssh: SshOptions,
    state_dir: PathBuf,
    log: Box<dyn Fn(&str) + Send + Sync>,
    /// Machines reached, whose shared ssh connections are closed on drop.
    used: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// Local state lives here: `~/.rayish/clusters/<name>.json`.
pub fn default_state_dir() -> PathBuf {
    config::expand_home("~/.rayish/clusters")
}

impl Launcher {
    /// A launcher for `plan`, whose file text `config_text` is copied to the head as
    /// `~/ray_bootstrap_config.yaml` (where Ray's start command points its autoscaler).
    pub fn new(plan: ClusterPlan, config_text: String, state_dir: PathBuf) -> Self {
        let control_dir = std::env::temp_dir().join(format!("rayish-ssh-{}", std::process::id()));
        let ssh = SshOptions {
            user: plan.ssh_user.clone(),
            key: plan.ssh_key.clone(),
            proxy_command: plan.ssh_proxy_command.clone(),
            control_dir,
            connect_timeout: Duration::from_secs(10),
            remote_bin: Some(REMOTE_BIN.into()),
        };
        Self {
            plan,
            config_text,
            ssh,
            state_dir,
            log: Box::new(|line| println!("{line}")),
            used: Default::default(),
        }
    }

    /// Replaces the progress printer (stdout by default).
    pub fn with_log(mut self, log: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.log = Box::new(log);
        self
    }

    /// The resolved plan.
    pub fn plan(&self) -> &ClusterPlan {
        &self.plan
    }

    fn machine(&self, host: &str) -> Machine {
        if let Ok(mut used) = self.used.lock() {
            used.insert(host.to_string());
        }
        Machine::new(host, self.ssh.clone())
    }

    fn state_file(&self) -> PathBuf {
        self.state_dir.join(format!("{}.json", self.plan.name))
    }

    /// The state saved by the last `up`, if any.
    pub fn state(&self) -> Option<ClusterState> {
        let text = std::fs::read_to_string(self.state_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn save_state(&self, state: &ClusterState) -> Result<(), LaunchError> {
        let io = |what: &str| {
            let what = format!("{what} {}", self.state_file().display());
            move |source| LaunchError::Io { what, source }
        };
        std::fs::create_dir_all(&self.state_dir).map_err(io("creating the directory of"))?;
        let text = serde_json::to_string_pretty(state).unwrap_or_default();
        let tmp = self.state_file().with_extension("json.tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            // The token is a secret: owner-only, like the node's own cluster record.
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("writing"))?;
            f.write_all(text.as_bytes()).map_err(io("writing"))?;
        }
        std::fs::rename(&tmp, self.state_file()).map_err(io("writing"))
    }

    /// The environment every remote command gets.
    fn env(&self, token: &str) -> Vec<(String, String)> {
        vec![
            ("RAY_HEAD_IP".into(), self.plan.head.clone()),
            ("RAYISH_TOKEN".into(), token.into()),
        ]
    }

    /// Brings the cluster up (or checks that it is): the head, then the first
    /// `min_workers` machines of the pool, in parallel. Returns each machine's outcome.
    pub fn up(&self, restart: bool) -> Result<Vec<(String, MachineOutcome)>, LaunchError> {
        let saved = self.state().filter(|s| s.head == self.plan.head);
        let token = saved
            .as_ref()
            .map(|s| s.token.clone())
            .unwrap_or_else(rayish_core::transport::tls::new_token);
        let mut outcomes = Vec::new();
        (self.log)(&format!(
            "Cluster {}: head {}, {} worker(s) of {} machine(s)",
            self.plan.name,
            self.plan.head,
            self.plan.min_workers,
            self.plan.worker_pool.len()
        ));
        let head_outcome = self.bring_up(&self.plan.head, Role::Head, &token, restart, None)?;
        outcomes.push((self.plan.head.clone(), head_outcome.clone()));
        // Keep the workers a previous `up` started (they may have been scaled beyond the
        // minimum), then fill up to the minimum from the pool in order.
        let mut wanted: Vec<String> = saved
            .map(|s| s.workers)
            .unwrap_or_default()
            .into_iter()
            .filter(|w| self.plan.worker_pool.contains(w))
            .collect();
        for w in &self.plan.worker_pool {
            if wanted.len() >= self.plan.min_workers {
                break;
            }
            if !wanted.contains(w) {
                wanted.push(w.clone());
            }
        }
        wanted.truncate(self.plan.max_workers.max(self.plan.min_workers));
        // A restarted head forgets its nodes: every worker must join it again.
        let restart_workers = restart || head_outcome == MachineOutcome::Started;
        let alive = self.alive_nodes(&token)?;
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = wanted
                .iter()
                .map(|w| {
                    let token = &token;
                    let alive = &alive;
                    s.spawn(move || {
                        self.bring_up(w, Role::Worker, token, restart_workers, Some(alive))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(LaunchError::NotReady(
                            "a worker's set-up thread panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        let mut first_error = None;
        for (w, r) in wanted.iter().zip(results) {
            match r {
                Ok(o) => outcomes.push((w.clone(), o)),
                Err(e) => {
                    (self.log)(&format!("  {w}: FAILED: {e}"));
                    first_error.get_or_insert(e);
                }
            }
        }
        self.save_state(&ClusterState {
            token: token.clone(),
            head: self.plan.head.clone(),
            workers: outcomes.iter().skip(1).map(|(w, _)| w.clone()).collect(),
        })?;
        if let Some(e) = first_error {
            return Err(e);
        }
        self.wait_for_nodes(&token, &wanted, Duration::from_secs(60))?;
        (self.log)(&format!(
            "Cluster {} is up: {} node(s). Head: {}",
            self.plan.name,
            1 + wanted.len(),
            self.plan.head_external
        ));
        Ok(outcomes)
    }

    /// Sets one machine up unless it already is as described and alive.
    fn bring_up(
        &self,
        host: &str,
        role: Role,
        token: &str,
        restart: bool,
        alive: Option<&[String]>,
    ) -> Result<MachineOutcome, LaunchError> {
        let m = self.machine(host);
        let log = |what: &str| (self.log)(&format!("  {host} ({}): {what}", role.name()));
        log("syncing the rayish binary and file mounts");
        let binary = std::env::current_exe().map_err(|source| LaunchError::Io {
            what: "finding this rayish binary".into(),
            source,
        })?;
        m.copy(&binary, &format!("~/{REMOTE_BIN}/rayish"), &[], &[])?;
        if role == Role::Head {
            let local = self
                .state_dir
                .join(format!("{}.bootstrap.yaml", self.plan.name));
            std::fs::create_dir_all(&self.state_dir)
                .and_then(|_| std::fs::write(&local, &self.config_text))
                .map_err(|source| LaunchError::Io {
                    what: format!("writing {}", local.display()),
                    source,
                })?;
            m.copy(&local, "~/ray_bootstrap_config.yaml", &[], &[])?;
            // The head's autoscaler reaches the pool with the same key, as Ray's does.
            if let Some(key) = &self.plan.ssh_key {
                m.copy(key, BOOTSTRAP_KEY, &[], &[])?;
            }
        }
        for (remote, local) in &self.plan.file_mounts {
            let local = config::expand_home(local);
            m.copy(
                &local,
                remote,
                &self.plan.rsync_exclude,
                &self.plan.rsync_filter,
            )?;
        }
        let commands = match role {
            Role::Head => &self.plan.head_commands,
            Role::Worker => &self.plan.worker_commands,
        };
        let container = self.container(role);
        let digest = self.digest(role, commands, token, &m)?;
        let digest_file = format!("~/{REMOTE_UP}/{}-{}.digest", self.plan.name, role.name());
        let current = m
            .run(&format!("cat {digest_file} 2>/dev/null || true"), &[])?
            .trim()
            .to_string();
        let is_alive = || -> Result<bool, LaunchError> {
            Ok(match alive {
                None => self
                    .run_role(
                        &m,
                        container,
                        "rayish status --json >/dev/null 2>&1 && echo alive || true",
                        &self.env(token),
                    )?
                    .contains("alive"),
                Some(alive) => alive.iter().any(|a| is_host(host, a)),
            })
        };
        if !restart && current == digest && is_alive()? {
            log("unchanged, running");
            return Ok(MachineOutcome::Unchanged);
        }
        let env = self.env(token);
        let mut env_role = env.clone();
        if let Some(json) = self.resources_json(role) {
            env_role.push(("RAYISH_OVERRIDE_RESOURCES".into(), json));
        }
        // Initialization commands run on the machine itself, before any container
        // (as Ray's do); set-up and start commands in the container, if there is one.
        for command in &commands.initialization {
            log(&format!("initialization: {command}"));
            m.run(command, &env_role)?;
        }
        if let Some(c) = container {
            log(&format!("container {} from {}", c.name, c.image));
            m.run(&self.container_script(role, c), &[])?;
        }
        let phases: [(&str, &Vec<String>); 2] =
            [("setup", &commands.setup), ("start", &commands.start)];
        for (phase, list) in phases {
            for command in list {
                log(&format!("{phase}: {command}"));
                self.run_role(&m, container, command, &env_role)?;
            }
        }
        m.run(
            &format!("mkdir -p ~/{REMOTE_UP} && echo {digest} > {digest_file}"),
            &[],
        )?;
        log("started");
        Ok(MachineOutcome::Started)
    }

    /// The container a role's commands run in, if the file has a `docker:` section.
    fn container(&self, role: Role) -> Option<&ContainerPlan> {
        match role {
            Role::Head => self.plan.head_container.as_ref(),
            Role::Worker => self.plan.worker_container.as_ref(),
        }
    }

    /// Runs `command` on `m`, inside `container` if given.
    fn run_role(
        &self,
        m: &Machine,
        container: Option<&ContainerPlan>,
        command: &str,
        env: &[(String, String)],
    ) -> Result<String, SshError> {
        match container {
            // `docker` itself from a login shell: the machine's profile may set
            // DOCKER_HOST and PATH for it.
            Some(c) => m.run_in(
                &[&format!(
                    "bash --login -c {}",
                    shell_quote(&format!(
                        "exec docker exec -i {} bash --login -s",
                        shell_quote(&c.name)
                    ))
                )],
                command,
                env,
            ),
            None => m.run(command, env),
        }
    }

    /// The script that (re)creates a role's container on its machine: the machine's
    /// network, the file mounts, rayish's files (`~/.rayish`, and the bootstrap file and
    /// key on the head) mounted at the same paths (`~` being /root inside), a `/dev/shm`
    /// of 30% of the machine's memory unless the options size it, kept running with
    /// `sleep infinity` for `docker exec`.
    fn container_script(&self, role: Role, c: &ContainerPlan) -> String {
        let mut paths: Vec<String> = self.plan.file_mounts.keys().cloned().collect();
        paths.push(format!("~/{}", REMOTE_BIN.trim_end_matches("/bin")));
        if role == Role::Head {
            paths.push("~/ray_bootstrap_config.yaml".into());
            if self.plan.ssh_key.is_some() {
                paths.push(BOOTSTRAP_KEY.into());
            }
        }
        let volumes: Vec<String> = paths
            .iter()
            .map(|p| match p.strip_prefix("~/") {
                Some(rest) => format!("-v \"$HOME/{rest}:/root/{rest}\""),
                None => format!("-v {}", shell_quote(&format!("{p}:{p}"))),
            })
            .collect();
        let image = shell_quote(&c.image);
        let name = shell_quote(&c.name);
        let pull = if c.pull {
            format!("docker pull {image}")
        } else {
            format!("docker image inspect {image} >/dev/null 2>&1 || docker pull {image}")
        };
        let sizes_shm = c.run_options.iter().any(|o| o.starts_with("--shm-size"));
        let shm = if c.size_shm && !sizes_shm {
            "--shm-size=$(awk '/MemTotal/ {printf \"%d\", $2 * 1024 * 0.3}' /proc/meminfo)"
        } else {
            ""
        };
        let options: Vec<String> = c.run_options.iter().map(|o| shell_quote(o)).collect();
        format!(
            "set -e\n{pull}\ndocker rm -f {name} >/dev/null 2>&1 || true\n\
             docker run -d --name {name} --net=host {shm} {} {} --entrypoint sleep {image} infinity >/dev/null",
            volumes.join(" "),
            options.join(" "),
        )
    }

    /// Sets up and (re)starts a worker on `host` (the autoscaler's launch).
    pub fn start_worker(&self, host: &str, token: &str) -> Result<(), LaunchError> {
        self.bring_up(host, Role::Worker, token, true, None)
            .map(|_| ())
    }

    /// Stops rayish on `host` (the autoscaler's scale-down).
    pub fn stop_worker(&self, host: &str) -> Result<(), LaunchError> {
        self.machine(host)
            .run(&self.stop_script(Role::Worker), &[])?;
        Ok(())
    }

    /// Stops rayish on a machine of `role`, in its container (then removed) and on the
    /// machine itself, and forgets the machine's digest.
    fn stop_script(&self, role: Role) -> String {
        let mut script = String::new();
        if let Some(c) = self.container(role) {
            let name = shell_quote(&c.name);
            script.push_str(&format!(
                "if docker inspect {name} >/dev/null 2>&1; then \
                 docker exec {name} bash --login -c 'PATH=$HOME/{REMOTE_BIN}:$PATH rayish stop' || true; \
                 docker rm -f {name} >/dev/null; fi\n"
            ));
        }
        script.push_str(&format!(
            "if [ -x ~/{REMOTE_BIN}/rayish ]; then ~/{REMOTE_BIN}/rayish stop; fi\n\
             rm -f ~/{REMOTE_UP}/{}-{}.digest\n",
            self.plan.name,
            role.name()
        ));
        script
    }

    /// `RAYISH_OVERRIDE_RESOURCES` for a role's node type (Ray's `RAY_OVERRIDE_RESOURCES`).
    fn resources_json(&self, role: Role) -> Option<String> {
        let r = match role {
            Role::Head => &self.plan.head_resources,
            Role::Worker => &self.plan.worker_resources,
        };
        (!r.is_empty()).then(|| serde_json::to_string(r).unwrap_or_default())
    }

    /// What a machine was brought up with: its commands, resources, the token, the
    /// binary and the file mounts' contents (as rsync sees them, remotely listed).
    fn digest(
        &self,
        role: Role,
        commands: &RoleCommands,
        token: &str,
        m: &Machine,
    ) -> Result<String, LaunchError> {
        let mut h = Sha256::new();
        h.update(role.name());
        for c in commands
            .initialization
            .iter()
            .chain(&commands.setup)
            .chain(&commands.start)
        {
            h.update(c.as_bytes());
            h.update([0]);
        }
        h.update(self.resources_json(role).unwrap_or_default());
        h.update(format!("{:?}", self.container(role)));
        h.update(token);
        h.update(&self.plan.head);
        // Remote paths' listing (names, sizes, times): a changed mount means set-up again.
        let mut paths: Vec<String> = self
            .plan
            .file_mounts
            .keys()
            .map(|k| shell_quote(&k.replacen("~/", "", 1)))
            .collect();
        paths.push(format!("{REMOTE_BIN}/rayish"));
        let listing = m.run(
            &format!(
                "cd ~ && find {} -printf '%p %s %T@\\n' 2>/dev/null | sort || true",
                paths.join(" ")
            ),
            &[],
        )?;
        h.update(listing);
        Ok(hex::encode(h.finalize()))
    }

    /// The machines (addresses) with a live node, as the head reports them; empty if
    /// the head is not up.
    fn alive_nodes(&self, token: &str) -> Result<Vec<String>, LaunchError> {
        let m = self.machine(&self.plan.head);
        let out = match self.run_role(
            &m,
            self.container(Role::Head),
            "rayish status --json",
            &self.env(token),
        ) {
            Ok(out) => out,
            Err(SshError::Failed { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        // Whatever a login shell printed first, the JSON document is the rest.
        let json = out.find('{').map_or("{}", |i| &out[i..]);
        Ok(serde_json::from_str::<ClusterStatus>(json)
            .map(|s| {
                s.nodes
                    .iter()
                    .filter(|n| n.alive)
                    .map(|n| n.address.ip().to_string())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until the head and every one of `workers` is alive in the cluster.
    fn wait_for_nodes(
        &self,
        token: &str,
        workers: &[String],
        limit: Duration,
    ) -> Result<(), LaunchError> {
        let deadline = Instant::now() + limit;
        loop {
            let alive = self.alive_nodes(token)?;
            let missing: Vec<&String> = std::iter::once(&self.plan.head)
                .chain(workers)
                .filter(|h| !alive.iter().any(|a| is_host(h, a)))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LaunchError::NotReady(format!(
                    "after {limit:?} these machines have no live node in the cluster: {} \
                     (their start commands ran; see /tmp/rayish/session_latest/logs there)",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Stops rayish on every machine of the file (the head first, so that its
    /// autoscaler starts nothing more, then every machine of the pool) and forgets the
    /// cluster. Unreachable workers are reported, not fatal.
    pub fn down(&self) -> Result<(), LaunchError> {
        let mut hosts: Vec<String> = self.plan.worker_pool.clone();
        if let Some(s) = self.state() {
            for w in s.workers {
                if !hosts.contains(&w) {
                    hosts.push(w);
                }
            }
        }
        let stop = |host: &String, role: Role| self.machine(host).run(&self.stop_script(role), &[]);
        stop(&self.plan.head, Role::Head)?;
        (self.log)(&format!("  {}: stopped (head)", self.plan.head));
        std::thread::scope(|s| {
            let handles: Vec<_> = hosts
                .iter()
                .map(|h| (h, s.spawn(move || stop(h, Role::Worker))))
                .collect();
            for (h, handle) in handles {
                match handle.join() {
                    Ok(Ok(_)) => (self.log)(&format!("  {h}: stopped")),
                    Ok(Err(e)) => (self.log)(&format!("  {h}: could not stop: {e}")),
                    Err(_) => (self.log)(&format!("  {h}: could not stop")),
                }
            }
        });
        match std::fs::remove_file(self.state_file()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LaunchError::Io {
                    what: format!("removing {}", self.state_file().display()),
                    source,
                })
            }
        }
        let _ = std::fs::remove_file(
            self.state_dir
                .join(format!("{}.bootstrap.yaml", self.plan.name)),
        );
        (self.log)(&format!("Cluster {} is down.", self.plan.name));
        Ok(())
    }

    /// The environment of `exec`/`submit`/`attach`: it goes on a command line, so no
    /// token (`RAYISH_ADDRESS=auto` finds the cluster and its token in the head's
    /// cluster record).
    fn head_env(&self) -> Vec<(String, String)> {
        vec![
            ("RAY_HEAD_IP".into(), self.plan.head.clone()),
            ("RAYISH_ADDRESS".into(), "auto".into()),
        ]
    }

    fn head_container_name(&self) -> Option<&str> {
        self.container(Role::Head).map(|c| c.name.as_str())
    }

    /// Runs `command` on the head with this terminal, with `RAYISH_ADDRESS=auto` so a
    /// driver joins the cluster; returns its exit code.
    pub fn exec(&self, command: &str) -> Result<i32, LaunchError> {
        let status = self.machine(&self.plan.head).interactive(
            self.head_container_name(),
            Some(command),
            &self.head_env(),
        )?;
        Ok(status.code().unwrap_or(1))
    }

    /// Copies `program` to the head (`~/.rayish/submit/`) and runs it there with `args`,
    /// as a driver of the cluster; returns its exit code.
    pub fn submit(&self, program: &Path, args: &[String]) -> Result<i32, LaunchError> {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "program".into());
        let remote = format!("~/.rayish/submit/{name}");
        self.machine(&self.plan.head)
            .copy(program, &remote, &[], &[])?;
        let command = std::iter::once(format!("~/.rayish/submit/{}", shell_quote(&name)))
            .chain(args.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ");
        self.exec(&command)
    }

    /// An interactive login shell on the head.
    pub fn attach(&self) -> Result<i32, LaunchError> {
        let status = self.machine(&self.plan.head).interactive(
            self.head_container_name(),
            None,
            &self.head_env(),
        )?;
        Ok(status.code().unwrap_or(1))
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let used = std::mem::take(&mut *self.used.lock().unwrap_or_else(|p| p.into_inner()));
        for host in used {
            Machine::new(&host, self.ssh.clone()).close();
        }
        let _ = std::fs::remove_dir_all(&self.ssh.control_dir);
    }
}

/// Whether `host` (a name or address from the cluster file) is the machine at `ip`.
fn is_host(host: &str, ip: &str) -> bool {
    use std::net::ToSocketAddrs;
    host == ip
        || (host, 0)
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.any(|a| a.ip().to_string() == ip))
}
