//! `rayish start`.

use anyhow::{bail, Context, Result};
use clap::Args;
use rayish::launch::{default_ip, launch_head, launch_node, resolve, route_ip, LaunchOptions};
use rayish::resources::{ResourceSet, CPU, GPU};
use rayish::session::{
    read_cluster_record, register_process, temp_root, unregister_process, write_cluster_record,
    ClusterRecord, ProcessRecord, Session,
};
use rayish::transport::tls::new_token;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Arguments of `rayish start`.
#[derive(Args, Debug, Clone)]
pub struct StartArgs {
    /// Start the head of a new cluster (it is also a worker node).
    #[arg(long, conflicts_with = "address")]
    head: bool,
    /// The head to join, HOST:PORT.
    #[arg(long, required_unless_present = "head")]
    address: Option<String>,
    /// The head's port.
    #[arg(long, default_value_t = 6379)]
    port: u16,
    /// The cluster token (the head makes one if not given; nodes need the head's).
    #[arg(long, env = "RAYISH_TOKEN")]
    token: Option<String>,
    /// CPUs offered to tasks (default: all of this machine's).
    #[arg(long)]
    num_cpus: Option<f64>,
    /// GPUs offered to tasks.
    #[arg(long)]
    num_gpus: Option<f64>,
    /// Custom resources, as JSON: '{"disk": 2}'.
    #[arg(long)]
    resources: Option<String>,
    /// The IP address of this node, bound and advertised to others.
    #[arg(long)]
    node_ip_address: Option<IpAddr>,
    /// Stay in the foreground until stopped.
    #[arg(long)]
    block: bool,
    /// Milliseconds of silence after which a node is declared dead.
    #[arg(long, default_value_t = 5000)]
    node_timeout_ms: u64,
    /// Root for sessions, logs and caches (default /tmp/rayish or $RAYISH_TEMP_DIR).
    #[arg(long)]
    temp_dir: Option<PathBuf>,
    /// Bytes of object values this node keeps in memory before spilling the oldest to
    /// `<session>/spill/` (default: 30% of the machine's memory, as Ray).
    #[arg(long)]
    object_store_memory: Option<u64>,
    /// Ray's flag on the head: the cluster file `rayish up` copied there
    /// (`~/ray_bootstrap_config.yaml`). Checked when given.
    #[arg(long, requires = "head")]
    autoscaling_config: Option<PathBuf>,
}

fn default_cpus() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64
}

fn resources(args: &StartArgs) -> Result<ResourceSet> {
    // What `rayish up` sets from the node type's `resources` (Ray's
    // RAY_OVERRIDE_RESOURCES): it replaces the flags' values.
    if let Ok(json) = std::env::var("RAYISH_OVERRIDE_RESOURCES") {
        let mut set = ResourceSet::from_json(&json)
            .map_err(|e| anyhow::anyhow!("RAYISH_OVERRIDE_RESOURCES: {e}"))?;
        let names_cpu = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&json)
            .is_ok_and(|m| m.contains_key(CPU));
        if !names_cpu {
            set.set(CPU, default_cpus());
        }
        return Ok(set);
    }
    let mut set = match &args.resources {
        Some(json) => ResourceSet::from_json(json).map_err(anyhow::Error::msg)?,
        None => ResourceSet::new(),
    };
    let cpus = args.num_cpus.unwrap_or_else(default_cpus);
    set.set(CPU, cpus);
    if let Some(g) = args.num_gpus {
        set.set(GPU, g);
    }
    Ok(set)
}

/// Runs `rayish start`.
pub fn run(args: StartArgs) -> Result<()> {
    if let Some(file) = &args.autoscaling_config {
        // `~` after `=` is not expanded by the shell.
        let file = rayish::launcher::config::expand_home(&file.to_string_lossy());
        rayish::launcher::config::ClusterConfig::load(&file)?;
    }
    let root = args.temp_dir.clone().unwrap_or_else(temp_root);
    // Children (workers) find the same root.
    std::env::set_var("RAYISH_TEMP_DIR", &root);
    if args.block {
        run_blocking(args, root)
    } else {
        daemonize(&root)
    }
}

/// Starts this same command with `--block` in the background and waits until it is up.
fn daemonize(root: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let exe = std::env::current_exe().context("finding the rayish executable")?;
    let log = root.join(format!("rayish-start-{}.out", std::process::id()));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--block")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid(2) in the forked child before exec: async-signal-safe, no memory touched.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the node process")?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("the node process exited ({status}):\n{text}");
        }
        if rayish::session::registered_processes(root)
            .iter()
            .any(|p| p.pid == pid)
        {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            print!("{text}");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the node process (pid {pid}) did not come up within 60 s; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_blocking(args: StartArgs, root: PathBuf) -> Result<()> {
    let session = Session::create(&root)
        .with_context(|| format!("creating a session under {}", root.display()))?;
    let role = if args.head { "head" } else { "node" };
    let log_path = session
        .logs()
        .join(format!("rayish-{role}-{}.log", std::process::id()));
    let log_file = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RAYISH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log_file))
        .init();
    let resources = resources(&args)?;
    let node_timeout = Duration::from_millis(args.node_timeout_ms.max(500));
    // One I/O thread: the services are message-bound, and on small machines more
    // threads mostly add wake-ups between them.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    let (launched, token) = if args.head {
        let token = args.token.clone().unwrap_or_else(new_token);
        let ip = args.node_ip_address.unwrap_or_else(default_ip);
        let opts = LaunchOptions {
            ip,
            port: args.port,
            resources: resources.clone(),
            token: token.clone(),
            root: root.clone(),
            log_dir: session.logs(),
            node_timeout,
            object_store_memory: args.object_store_memory,
        };
        let launched = rt
            .block_on(launch_head(&opts))
            .context("starting the head")?;
        write_cluster_record(
            &root,
            &ClusterRecord {
                address: launched.address.to_string(),
                token: token.clone(),
            },
        )
        .context("recording the cluster")?;
        (launched, token)
    } else {
        let address = args.address.clone().unwrap_or_default();
        let head = resolve(&address).map_err(anyhow::Error::msg)?;
        let token = match args.token.clone() {
            Some(t) => t,
            None => read_cluster_record(&root)
                .filter(|r| resolve(&r.address).ok() == Some(head))
                .map(|r| r.token)
                .context("no --token given (the head printed it when it started)")?,
        };
        let ip = args
            .node_ip_address
            .or_else(|| route_ip(head))
            .unwrap_or_else(default_ip);
        let opts = LaunchOptions {
            ip,
            port: 0,
            resources: resources.clone(),
            token: token.clone(),
            root: root.clone(),
            log_dir: session.logs(),
            node_timeout,
            object_store_memory: args.object_store_memory,
        };
        let launched = rt
            .block_on(launch_node(&opts, head))
            .with_context(|| format!("joining the head at {address}"))?;
        (launched, token)
    };
    let address = launched.address;
    let pid = std::process::id();
    register_process(
        &root,
        &ProcessRecord {
            pid,
            role: role.into(),
            address: address.to_string(),
            session: session.dir.clone(),
        },
    )
    .context("registering the process")?;

    if let (true, Some(file)) = (args.head, &args.autoscaling_config) {
        let file = rayish::launcher::config::expand_home(&file.to_string_lossy());
        rayish::autoscaler::spawn(&file, address, token.clone()).map_err(anyhow::Error::msg)?;
        println!("Autoscaler started from {}.", file.display());
    }
    if args.head {
        println!("Local node IP: {}", address.ip());
        println!("--------------------");
        println!("rayish runtime started (head at {address}, resources {resources}).");
        println!("--------------------");
        println!("To add another node to this cluster, run");
        println!("    rayish start --address {address} --token {token}");
        println!("To connect a driver to this cluster, run it with");
        println!("    RAYISH_ADDRESS={address} RAYISH_TOKEN={token}");
        println!("To see the cluster: rayish status    To stop: rayish stop");
    } else {
        println!(
            "rayish node started at {address} (resources {resources}), joined {}.",
            args.address.unwrap_or_default()
        );
        println!("To stop: rayish stop");
    }
    println!("Logs: {}", session.logs().display());
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let reason = rt.block_on(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut node = launched.node;
        let workers = node.workers();
        let sigterm = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            reason = node.closed() => reason,
            _ = tokio::signal::ctrl_c() => { workers.kill_all(); "interrupted".to_string() }
            _ = sigterm => { workers.kill_all(); "stopped".to_string() }
        }
    });
    tracing::info!("exiting: {reason}");
    unregister_process(&root, pid);
    eprintln!("rayish {role} exiting: {reason}");
    // Workers die with us (PR_SET_PDEATHSIG), and were told to stop above.
    std::process::exit(0)
}
