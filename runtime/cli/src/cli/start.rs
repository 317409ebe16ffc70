//! `rayish start`.

use anyhow::{bail, Context, Result};
use clap::Args;
use rayish_core::launch::{
    default_ip, launch_head, launch_node, resolve, route_ip, DashboardOptions, LaunchOptions,
};
use rayish_core::resources::{ResourceSet, CPU, GPU};
use rayish_core::session::{
    read_cluster_record, register_process, temp_root, unregister_process, write_cluster_record,
    ClusterRecord, ProcessRecord, Session,
};
use rayish_core::storage::Storage;
use rayish_core::transport::tls::new_token;
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
    /// Visible to every local user in `ps`: prefer $RAYISH_TOKEN or --token-file.
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the cluster token (readable by its owner only).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Accept a given token of fewer than 128 bits (a short token can be guessed).
    #[arg(long)]
    allow_weak_token: bool,
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
    /// Seconds to wait for a silent head (stalled, paused, restarting) before this
    /// node gives up and exits with a non-zero status; also how long the head waits
    /// for a silent driver (Ray's gcs_rpc_server_reconnect_timeout_s).
    #[arg(long, default_value_t = 60.0)]
    head_reconnect_timeout: f64,
    /// Root for sessions, logs and caches (default /tmp/rayish or $RAYISH_TEMP_DIR).
    #[arg(long)]
    temp_dir: Option<PathBuf>,
    /// Bytes of object values this node keeps in memory before spilling the oldest to
    /// `<session>/spill/` (default: 30% of the machine's memory, as Ray).
    #[arg(long)]
    object_store_memory: Option<u64>,
    /// The port this node serves Prometheus metrics on, at its IP (as Ray's; default:
    /// any free port). Scrapes need the cluster token as a bearer token; the head
    /// lists every node's endpoint in <session>/prom_metrics_service_discovery.json.
    #[arg(long, value_name = "PORT")]
    metrics_export_port: Option<u16>,
    /// Ray's flag on the head: the cluster file `rayish up` copied there
    /// (`~/ray_bootstrap_config.yaml`). Checked when given.
    #[arg(long, requires = "head")]
    autoscaling_config: Option<PathBuf>,
    /// Whether the head serves the dashboard and Ray's state API over HTTP (Ray's
    /// flag: `--include-dashboard false` turns it off).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    include_dashboard: bool,
    /// The address the dashboard binds (Ray's default: loopback only). Every request
    /// needs the cluster token.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    dashboard_host: IpAddr,
    /// The dashboard's port (Ray's default 8265; if that is taken, any free port;
    /// 0: any free port). A port given here must be free.
    #[arg(long, value_name = "PORT")]
    dashboard_port: Option<u16>,
    /// Where the head keeps what must outlive its process (the cluster token, its
    /// starts, the job table), in an embedded database: a head started again with
    /// the same path takes the cluster back (default: <temp-dir>/head_storage_<port>).
    #[arg(long, value_name = "DIR")]
    storage_path: Option<PathBuf>,
}

/// Ray's dashboard port.
const DEFAULT_DASHBOARD_PORT: u16 = 8265;

/// How many ended tasks the head keeps for the state API: Ray's
/// `RAY_task_events_max_num_task_in_gcs`, else Ray's default.
fn task_events_capacity() -> Result<usize> {
    match std::env::var("RAY_task_events_max_num_task_in_gcs") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("RAY_task_events_max_num_task_in_gcs={v:?} is not a count")),
        Err(_) => Ok(rayish_core::head::DEFAULT_TASK_EVENTS),
    }
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
        let file = rayish_launcher::launcher::config::expand_home(&file.to_string_lossy());
        rayish_launcher::launcher::config::ClusterConfig::load(&file)?;
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
    rayish_core::session::ensure_private_dir(root)?;
    let exe = std::env::current_exe().context("finding the rayish executable")?;
    // What the node prints (the head's join instructions hold the token): this user's
    // only, and removed once shown.
    let log = root.join(format!("rayish-start-{}.out", std::process::id()));
    let out = rayish_core::session::create_private_file(&log)
        .with_context(|| format!("creating {}", log.display()))?;
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
        if rayish_core::session::registered_processes(root)
            .iter()
            .any(|p| p.pid == pid)
        {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            print!("{text}");
            let _ = std::fs::remove_file(&log);
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

/// The token this command was given: `--token` (with a warning), `--token-file`, or
/// `$RAYISH_TOKEN`; `None` if none was.
fn given_token(args: &StartArgs) -> Result<Option<String>> {
    if let Some(t) = &args.token {
        eprintln!(
            "warning: --token puts the cluster token on the command line, where every local \
             user sees it (ps); use RAYISH_TOKEN or --token-file instead"
        );
        return Ok(Some(t.clone()));
    }
    if let Some(file) = &args.token_file {
        return rayish_core::session::read_token_file(file)
            .map(Some)
            .with_context(|| format!("reading the token from {}", file.display()));
    }
    Ok(std::env::var("RAYISH_TOKEN").ok().filter(|t| !t.is_empty()))
}

/// The head's cluster token: the one given, else the one its storage kept from an
/// earlier start (so nodes waiting for a restarted head join it again), else a new
/// one; kept in the storage (private to this user) for the next start.
fn cluster_token(storage: &Storage, given: Option<String>) -> Result<String> {
    const TABLE: &str = rayish_core::storage::CLUSTER_TABLE;
    let stored: Option<String> = storage
        .get(TABLE, "token")
        .context("reading the head's storage")?;
    let token = match (given, stored) {
        (Some(given), Some(stored)) if given != stored => {
            eprintln!(
                "warning: the token given replaces the one this head's storage kept: nodes \
                 of the earlier cluster cannot join again"
            );
            given
        }
        (Some(given), _) => given,
        (None, Some(stored)) => stored,
        (None, None) => new_token(),
    };
    storage.put(TABLE, "token", &token);
    storage
        .flush_blocking()
        .context("writing the head's storage")?;
    Ok(token)
}

/// Refuses a given token of fewer than 128 bits unless `--allow-weak-token`.
fn check_strength(token: &str, args: &StartArgs) -> Result<()> {
    match rayish_core::transport::tls::check_token_strength(token) {
        Ok(()) => Ok(()),
        Err(e) if args.allow_weak_token => {
            eprintln!("warning: {e} (accepted: --allow-weak-token)");
            Ok(())
        }
        Err(e) => bail!("{e}; use a generated token (rayish start --head makes one), or pass --allow-weak-token"),
    }
}

fn run_blocking(args: StartArgs, root: PathBuf) -> Result<()> {
    rayish_core::session::ensure_private_dir(&root)?;
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
    if !(args.head_reconnect_timeout.is_finite() && args.head_reconnect_timeout > 0.0) {
        bail!("--head-reconnect-timeout must be a positive number of seconds");
    }
    let head_reconnect_timeout = Duration::from_secs_f64(args.head_reconnect_timeout.max(0.5));
    let given = given_token(&args)?;
    if let Some(t) = &given {
        check_strength(t, &args)?;
    }
    // One I/O thread: the services are message-bound, and on small machines more
    // threads mostly add wake-ups between them.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    let task_events_capacity = task_events_capacity()?;
    // The head and a joining node differ in address, port and token only.
    let options = |ip, port, token: &String| LaunchOptions {
        ip,
        port,
        resources: resources.clone(),
        token: token.clone(),
        root: root.clone(),
        log_dir: session.logs(),
        node_timeout,
        head_reconnect_timeout,
        object_store_memory: args.object_store_memory,
        metrics_export_port: Some(args.metrics_export_port.unwrap_or(0)),
        dashboard: (args.head && args.include_dashboard).then_some(DashboardOptions {
            host: args.dashboard_host,
            port: args.dashboard_port.unwrap_or(DEFAULT_DASHBOARD_PORT),
            any_port_if_taken: args.dashboard_port.is_none(),
        }),
        task_events_capacity,
        storage: None,
        incarnation: 1,
    };
    let (launched, token, head, opts) = if args.head {
        let storage_dir = args
            .storage_path
            .clone()
            .unwrap_or_else(|| root.join(format!("head_storage_{}", args.port)));
        let storage = Storage::open(&storage_dir)
            .with_context(|| format!("opening the head's storage {}", storage_dir.display()))?;
        let token = cluster_token(&storage, given)?;
        let ip = args.node_ip_address.unwrap_or_else(default_ip);
        let mut opts = options(ip, args.port, &token);
        opts.storage = Some(storage);
        let launched = rt
            .block_on(launch_head(&opts))
            .context("starting the head")?;
        write_cluster_record(
            &root,
            &ClusterRecord {
                address: launched.address.to_string(),
                token: token.clone(),
                dashboard: launched.dashboard_address.map(|a| format!("http://{a}")),
            },
        )
        .context("recording the cluster")?;
        let head = launched.address;
        (launched, token, head, opts)
    } else {
        let address = args.address.clone().unwrap_or_default();
        let head = resolve(&address).map_err(anyhow::Error::msg)?;
        let token = match given {
            Some(t) => t,
            None => read_cluster_record(&root)
                .filter(|r| resolve(&r.address).ok() == Some(head))
                .map(|r| r.token)
                .context("no token: set RAYISH_TOKEN or pass --token-file (the head printed how when it started)")?,
        };
        let ip = args
            .node_ip_address
            .or_else(|| route_ip(head))
            .unwrap_or_else(default_ip);
        let opts = options(ip, 0, &token);
        let launched = rt
            .block_on(launch_node(&opts, head))
            .with_context(|| format!("joining the head at {address}"))?;
        (launched, token, head, opts)
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
            start_time: rayish_core::session::process_start_time(pid),
        },
    )
    .context("registering the process")?;

    if let (true, Some(file)) = (args.head, &args.autoscaling_config) {
        let file = rayish_launcher::launcher::config::expand_home(&file.to_string_lossy());
        rayish_launcher::autoscaler::spawn(&file, address, token.clone())
            .map_err(anyhow::Error::msg)?;
        println!("Autoscaler started from {}.", file.display());
    }
    if args.head {
        let record = root.join("current_cluster.json");
        println!("Local node IP: {}", address.ip());
        println!("--------------------");
        println!("rayish runtime started (head at {address}, resources {resources}).");
        println!("--------------------");
        println!(
            "The cluster token (keep it secret; also in {}, readable by you only):",
            record.display()
        );
        println!("    {token}");
        println!("To add another node to this cluster, run (the token in the environment,");
        println!("never on the command line, where every local user sees it):");
        println!("    RAYISH_TOKEN=<token> rayish start --address {address}");
        println!("  or with the token in a file only you can read:");
        println!("    rayish start --address {address} --token-file <file>");
        println!("To connect a driver to this cluster, run it with");
        println!("    RAYISH_ADDRESS={address} RAYISH_TOKEN=<token>");
        println!("To see the cluster: rayish status    To stop: rayish stop");
    } else {
        println!(
            "rayish node started at {address} (resources {resources}), joined {}.",
            args.address.clone().unwrap_or_default()
        );
        println!("To stop: rayish stop");
    }
    if let Some(dashboard) = launched.dashboard_address {
        println!("Dashboard and state API: http://{dashboard} (sign in with the token, or open");
        println!(
            "    http://{dashboard}/?token=<token> once; `rayish list`, `ray list --address`)"
        );
    }
    if let Some(metrics) = launched.metrics_address {
        println!("Metrics: http://{metrics}/metrics (the cluster token as a bearer token)");
        if args.head {
            println!(
                "Prometheus targets: {}",
                session
                    .dir
                    .join(rayish_core::metrics::SERVICE_DISCOVERY_FILE)
                    .display()
            );
        }
    }
    println!("Logs: {}", session.logs().display());
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let is_head = args.head;
    let (reason, code) = rt.block_on(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut launched = launched;
        let mut opts = opts;
        loop {
            let sigterm = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let ended = tokio::select! {
                ended = launched.node.closed() => ended,
                _ = tokio::signal::ctrl_c() => {
                    stop_jobs(&launched).await;
                    launched.node.close();
                    return ("interrupted".to_string(), 0)
                }
                _ = sigterm => {
                    stop_jobs(&launched).await;
                    launched.node.close();
                    return ("stopped".to_string(), 0)
                }
            };
            launched.node.close();
            let lost = ended.reason;
            if is_head || !ended.may_rejoin {
                // The head's own node talks to it in memory: this cannot happen
                // unless the head itself stopped. Another node waited for its head
                // as long as it is waited for.
                return (lost, 1);
            }
            // Declared dead after a pause, or not taken back by a restarted head:
            // drop everything of the old incarnation (workers, objects) and join
            // again as a new node, retrying for as long as the head is waited for.
            tracing::warn!("{lost}; joining the head again as a new node");
            launched.endpoint.close(0u32.into(), b"rejoining");
            drop(launched);
            opts.incarnation += 1;
            match rejoin(&opts, head, head_reconnect_timeout, &mut term).await {
                Rejoin::Joined(l) => {
                    tracing::info!(
                        node = ?l.node_id,
                        incarnation = opts.incarnation,
                        "rejoined the cluster as a new node"
                    );
                    launched = *l;
                }
                Rejoin::Stopped(why) => return (why, 0),
                Rejoin::GaveUp(why) => return (format!("{lost}; {why}"), 1),
            }
        }
    });
    tracing::info!("exiting: {reason}");
    unregister_process(&root, pid);
    eprintln!("rayish {role} exiting: {reason}");
    // Workers die with us (PR_SET_PDEATHSIG), and were told to stop above.
    std::process::exit(code)
}

/// A head stopped on purpose (SIGTERM from `rayish stop`, or Ctrl-C) stops its
/// submitted jobs first, as `ray stop` ends Ray's; `rayish stop` waits for it.
async fn stop_jobs(launched: &rayish_core::launch::Launched) {
    if let Some(jobs) = &launched.jobs {
        jobs.stop_all().await;
    }
}

enum Rejoin {
    Joined(Box<rayish_core::launch::Launched>),
    Stopped(String),
    GaveUp(String),
}

/// Joins the head at `head` again, retrying with backoff for `timeout`.
async fn rejoin(
    opts: &LaunchOptions,
    head: std::net::SocketAddr,
    timeout: Duration,
    term: &mut Option<tokio::signal::unix::Signal>,
) -> Rejoin {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(200);
    loop {
        let last = match launch_node(opts, head).await {
            Ok(l) => return Rejoin::Joined(Box::new(l)),
            Err(e) => e.to_string(),
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Rejoin::GaveUp(format!(
                "could not join the head at {head} again within {timeout:?} (last: {last})"
            ));
        }
        tracing::info!("joining the head at {head} failed ({last}); retrying");
        let sigterm = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause.min(deadline - now)) => {}
            _ = tokio::signal::ctrl_c() => return Rejoin::Stopped("interrupted".into()),
            _ = sigterm => return Rejoin::Stopped("stopped".into()),
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
