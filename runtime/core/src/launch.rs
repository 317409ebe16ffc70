//! Starting the services of a head process (head + node) or of a node process.
//! Used by `rayish start` and by local mode, so both run exactly the same code.

use crate::binaries::BinaryCache;
use crate::head::{start_head, HeadHandle, HeadSettings};
use crate::ids::NodeId;
use crate::metrics;
use crate::node::{start_node, NodeConfig, NodeError, RunningNode};
use crate::object_store::{ObjectStore, StoreConfig};
use crate::resources::ResourceSet;
use crate::server::{spawn_listener, Services};
use crate::session::binary_cache_dir;
use crate::transport::tls::{ClusterKey, ClusterTls};
use crate::transport::{make_endpoint, ConnectError, Endpoint};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Why a process could not start its services.
#[derive(Debug, Error)]
pub enum LaunchError {
    /// TLS or socket set-up failed.
    #[error(transparent)]
    Endpoint(#[from] ConnectError),
    /// The node could not join.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// TLS material could not be made.
    #[error(transparent)]
    Tls(#[from] crate::transport::tls::TlsError),
    /// The metrics endpoint could not listen.
    #[error("the metrics endpoint cannot listen on {addr}: {source}")]
    Metrics {
        /// Where it tried.
        addr: SocketAddr,
        /// Why not.
        source: std::io::Error,
    },
    /// The dashboard could not listen.
    #[error("the dashboard cannot listen on {addr}: {source}")]
    Dashboard {
        /// Where it tried.
        addr: SocketAddr,
        /// Why not.
        source: std::io::Error,
    },
    /// The head's storage failed.
    #[error(transparent)]
    Storage(crate::storage::StorageError),
}

/// Where the head serves the dashboard and Ray's state API.
#[derive(Debug, Clone, Copy)]
pub struct DashboardOptions {
    /// The address to bind (`--dashboard-host`, Ray's default 127.0.0.1).
    pub host: IpAddr,
    /// The port (`--dashboard-port`, Ray's default 8265; 0: any free port).
    pub port: u16,
    /// If the port is taken, take any free one (the default port only: a port the
    /// user named must be the one).
    pub any_port_if_taken: bool,
}

/// Settings shared by head and node processes.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The IP to bind and advertise.
    pub ip: IpAddr,
    /// The port (the head's; 0 for nodes).
    pub port: u16,
    /// Resources offered to tasks.
    pub resources: ResourceSet,
    /// The cluster token.
    pub token: String,
    /// The temp root (binary cache).
    pub root: PathBuf,
    /// Where worker logs go.
    pub log_dir: PathBuf,
    /// How long a silent node is kept.
    pub node_timeout: Duration,
    /// How long a silent head is waited for (`--head-reconnect-timeout`): the idle
    /// timeout of control connections, so a head that stalls less loses none.
    pub head_reconnect_timeout: Duration,
    /// The object store's memory cap in bytes (`None`: 30% of this machine's RAM).
    pub object_store_memory: Option<u64>,
    /// Serve Prometheus metrics on this port of `ip` (0: any free port; `None`: no
    /// metrics endpoint).
    pub metrics_export_port: Option<u16>,
    /// The head's dashboard, if it serves one.
    pub dashboard: Option<DashboardOptions>,
    /// How many ended tasks the head keeps for the state API (Ray's
    /// `RAY_task_events_max_num_task_in_gcs`).
    pub task_events_capacity: usize,
    /// The head's durable storage (`--storage-path`), if it keeps one; a head
    /// without (an embedded local-mode cluster) keeps its jobs in its session.
    pub storage: Option<crate::storage::Storage>,
    /// Which join of this node process this is, from 1 (a node that joins again
    /// as a new node counts up).
    pub incarnation: u32,
}

/// The machine's memory in bytes, if `/proc/meminfo` says.
fn machine_memory() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    })
}

/// Ray's default object store size: 30% of the machine's memory (2 GiB if unknown).
pub fn default_object_store_memory() -> u64 {
    machine_memory().map_or(2 << 30, |t| t / 10 * 3)
}

/// The node's object store: capped, in shared memory (`/dev/shm/rayish-<pid>-<node>`)
/// when tmpfs is there, spilling to `<session>/spill/<node>/`.
fn object_store(opts: &LaunchOptions, node: NodeId) -> Arc<ObjectStore> {
    let session = opts.log_dir.parent().unwrap_or(&opts.root);
    crate::object_store::shm::remove_stale_dirs();
    let shm_dir = crate::object_store::shm::node_dir(std::process::id(), node);
    let shm_dir = shm_dir
        .parent()
        .is_some_and(|root| root.is_dir())
        .then_some(shm_dir);
    Arc::new(ObjectStore::new(StoreConfig {
        capacity: opts
            .object_store_memory
            .unwrap_or_else(default_object_store_memory),
        spill_dir: Some(session.join("spill").join(node.to_string())),
        shm_dir,
    }))
}

/// A process's running services.
pub struct Launched {
    /// The QUIC endpoint everything uses.
    pub endpoint: Endpoint,
    /// Its address.
    pub address: SocketAddr,
    /// The node service.
    pub node: RunningNode,
    /// The node's id.
    pub node_id: NodeId,
    /// The head, when this process runs it.
    pub head: Option<HeadHandle>,
    /// The cluster key derived from the token.
    pub cluster_key: ClusterKey,
    /// Where the metrics endpoint listens, if there is one.
    pub metrics_address: Option<SocketAddr>,
    /// Where the dashboard listens, if this process serves one.
    pub dashboard_address: Option<SocketAddr>,
    /// The head's submitted jobs, if it takes them (stopped with it: see
    /// [`crate::jobs::JobManager::stop_all`]).
    pub jobs: Option<crate::jobs::JobManager>,
}

fn endpoint(opts: &LaunchOptions, key: &ClusterKey) -> Result<(Endpoint, SocketAddr), LaunchError> {
    let tls = ClusterTls::from_key(key)?;
    let endpoint = make_endpoint(
        SocketAddr::new(opts.ip, opts.port),
        &tls,
        opts.head_reconnect_timeout,
    )?;
    let address = endpoint.local_addr().map_err(|e| ConnectError::Other {
        addr: SocketAddr::new(opts.ip, opts.port),
        message: e.to_string(),
    })?;
    Ok((endpoint, address))
}

fn node_config(
    opts: &LaunchOptions,
    key: &ClusterKey,
    node_id: NodeId,
    head: SocketAddr,
    address: SocketAddr,
    binaries: BinaryCache,
    metrics_address: Option<SocketAddr>,
) -> NodeConfig {
    NodeConfig {
        node_id,
        head,
        address,
        resources: opts.resources.clone(),
        cluster_key: key.clone(),
        log_dir: opts.log_dir.clone(),
        binaries,
        connect_timeout: Duration::from_secs(10),
        node_timeout: opts.node_timeout,
        head_reconnect_timeout: opts.head_reconnect_timeout,
        metrics_address,
        incarnation: opts.incarnation,
    }
}

/// The session directory (the log directory's parent).
fn session_dir(opts: &LaunchOptions) -> &std::path::Path {
    opts.log_dir.parent().unwrap_or(&opts.root)
}

/// Binds the metrics endpoint if there is to be one.
async fn metrics_listener(
    opts: &LaunchOptions,
) -> Result<Option<(tokio::net::TcpListener, SocketAddr)>, LaunchError> {
    let Some(port) = opts.metrics_export_port else {
        return Ok(None);
    };
    let addr = SocketAddr::new(opts.ip, port);
    let failed = |source| LaunchError::Metrics { addr, source };
    let listener = metrics::bind(addr).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok(Some((listener, bound)))
}

/// Binds the dashboard's socket if there is to be one.
async fn dashboard_listener(
    opts: &LaunchOptions,
) -> Result<Option<(tokio::net::TcpListener, SocketAddr)>, LaunchError> {
    let Some(d) = opts.dashboard else {
        return Ok(None);
    };
    let addr = SocketAddr::new(d.host, d.port);
    let listener = match crate::dashboard::bind(addr).await {
        Ok(l) => l,
        Err(e) if d.any_port_if_taken && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!("port {} is taken; the dashboard takes a free port", d.port);
            let any = SocketAddr::new(d.host, 0);
            crate::dashboard::bind(any)
                .await
                .map_err(|source| LaunchError::Dashboard { addr: any, source })?
        }
        Err(source) => return Err(LaunchError::Dashboard { addr, source }),
    };
    let bound = listener
        .local_addr()
        .map_err(|source| LaunchError::Dashboard { addr, source })?;
    Ok(Some((listener, bound)))
}

/// Serves the node's metrics (and the head's, in the head process) on `listener`.
fn serve_metrics(
    opts: &LaunchOptions,
    listener: tokio::net::TcpListener,
    node: &RunningNode,
    head: Option<HeadHandle>,
) {
    let session = session_dir(opts)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let common = vec![
        ("SessionName".to_string(), session),
        ("NodeAddress".to_string(), opts.ip.to_string()),
        (
            "RayNodeType".to_string(),
            if head.is_some() { "head" } else { "worker" }.to_string(),
        ),
    ];
    let host = match metrics::HostSampler::new(session_dir(opts)) {
        Ok(h) => Some(Arc::new(std::sync::Mutex::new(h))),
        Err(e) => {
            tracing::warn!("no host figures in the metrics: {e}");
            None
        }
    };
    let node = node.metrics();
    let gather: metrics::Gather = Arc::new(move || {
        let (node, head, host, common) = (node.clone(), head.clone(), host.clone(), common.clone());
        Box::pin(async move {
            let labels: Vec<(&str, &str)> = common
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut set = metrics::MetricSet::new(&labels);
            node.sample(&mut set);
            if let Some(host) = &host {
                let workers = node.worker_pids();
                let mut host = host.lock().unwrap_or_else(|p| p.into_inner());
                host.sample(&mut set, std::process::id(), &workers);
            }
            let mut set = match head {
                Some(head) => head.metrics(set).await,
                None => set,
            };
            node.add_user_metrics(&mut set);
            set
        })
    });
    metrics::serve(listener, metrics::BearerToken::new(&opts.token), gather);
}

/// The head's job manager (Ray's job submission): its table in the head's storage,
/// its working dirs in `<storage>/jobs`, its packages in
/// `<storage>/runtime_resources/packages` (so a restarted head finds all three), its
/// logs beside the node's. A head without storage keeps them in its session. `None`
/// (and a warning) if those cannot be opened: the rest of the head serves on.
fn start_jobs(
    opts: &LaunchOptions,
    address: SocketAddr,
    node_id: NodeId,
    dashboard: Option<SocketAddr>,
    head: HeadHandle,
) -> Option<crate::jobs::JobManager> {
    let storage = match &opts.storage {
        Some(storage) => storage.clone(),
        None => match crate::storage::Storage::open(&session_dir(opts).join("storage")) {
            Ok(storage) => storage,
            Err(e) => {
                tracing::warn!("the head takes no jobs: {e}");
                return None;
            }
        },
    };
    let dir = storage.dir().to_path_buf();
    let stop_grace = std::env::var("RAY_JOB_STOP_WAIT_TIME_S")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(crate::jobs::DEFAULT_STOP_GRACE, Duration::from_secs_f64);
    let config = crate::jobs::JobsConfig {
        storage,
        jobs_dir: dir.join("jobs"),
        packages_dir: dir.join("runtime_resources").join("packages"),
        logs_dir: opts.log_dir.clone(),
        capacity: entrypoint_capacity(opts),
        cluster_address: address,
        token: opts.token.clone(),
        node_id: node_id.to_string(),
        dashboard_url: dashboard.map_or_else(String::new, |d| {
            format!("http://{}:{}", address.ip(), d.port())
        }),
        stop_grace,
        max_package_bytes: std::env::var("RAYISH_JOB_PACKAGE_MAX_BYTES")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(crate::jobs::packages::MAX_PACKAGE_BYTES),
        package_grace: std::env::var("RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(crate::jobs::DEFAULT_PACKAGE_GRACE, Duration::from_secs_f64),
    };
    match crate::jobs::JobManager::start(config, head) {
        Ok(jobs) => Some(jobs),
        Err(e) => {
            tracing::warn!("the head takes no jobs: its job directory failed: {e}");
            None
        }
    }
}

/// What entrypoints may hold at once: the head node's resources, with `memory` (if
/// not declared) the machine's memory less the object store's, as Ray counts a
/// node's `memory`, so `--entrypoint-memory` can be honoured.
fn entrypoint_capacity(opts: &LaunchOptions) -> ResourceSet {
    let mut capacity = opts.resources.clone();
    if capacity.get("memory") == 0.0 {
        if let Some(total) = machine_memory() {
            let store = opts
                .object_store_memory
                .unwrap_or_else(default_object_store_memory);
            capacity.set("memory", total.saturating_sub(store) as f64);
        }
    }
    capacity
}

/// Starts a head process's services: the head and its own node.
pub async fn launch_head(opts: &LaunchOptions) -> Result<Launched, LaunchError> {
    let key = ClusterKey::derive(&opts.token)?;
    let (endpoint, address) = endpoint(opts, &key)?;
    let node_id = NodeId::random();
    let listener = metrics_listener(opts).await?;
    let dashboard = dashboard_listener(opts).await?;
    let head_starts = match &opts.storage {
        Some(storage) => Some(
            storage
                .record_head_start(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                )
                .await
                .map_err(LaunchError::Storage)?,
        ),
        None => None,
    };

    let settings = HeadSettings {
        head_node: node_id,
        node_timeout: opts.node_timeout,
        metrics_targets_file: listener
            .as_ref()
            .map(|_| session_dir(opts).join(metrics::SERVICE_DISCOVERY_FILE)),
        task_events_capacity: opts.task_events_capacity,
        head_starts,
        storage: opts.storage.clone(),
        head_reconnect_timeout: opts.head_reconnect_timeout,
    };
    // One cache for the head and its node: what a local-mode driver registers in
    // place (its own executable) is found by both.
    let binaries = BinaryCache::new(binary_cache_dir(&opts.root));
    let head = start_head(settings, binaries.clone());
    let store = object_store(opts, node_id);
    spawn_listener(
        endpoint.clone(),
        Services {
            head: Some(head.clone()),
            store: Some(store.clone()),
        },
    );
    let metrics_address = listener.as_ref().map(|(_, a)| *a);
    let node = start_node(
        node_config(
            opts,
            &key,
            node_id,
            address,
            address,
            binaries,
            metrics_address,
        ),
        endpoint.clone(),
        store,
        Some(Arc::new(head.clone())),
    )
    .await?;
    if let Some((listener, _)) = listener {
        serve_metrics(opts, listener, &node, Some(head.clone()));
    }
    let dashboard_address = dashboard.as_ref().map(|(_, a)| *a);
    let mut jobs_of_head = None;
    if let Some((listener, _)) = dashboard {
        let session = session_dir(opts)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let jobs = start_jobs(opts, address, node_id, dashboard_address, head.clone());
        crate::dashboard::serve(
            listener,
            &opts.token,
            head.clone(),
            crate::dashboard::DashboardParts {
                session_name: session,
                jobs: jobs.clone(),
                head_ip: address.ip().to_string(),
                head_starts,
            },
        );
        jobs_of_head = jobs;
    }
    Ok(Launched {
        endpoint,
        address,
        node,
        node_id,
        head: Some(head),
        cluster_key: key,
        metrics_address,
        dashboard_address,
        jobs: jobs_of_head,
    })
}

/// Starts a node process's services and joins the head at `head`.
pub async fn launch_node(opts: &LaunchOptions, head: SocketAddr) -> Result<Launched, LaunchError> {
    let key = ClusterKey::derive(&opts.token)?;
    let (endpoint, address) = endpoint(opts, &key)?;
    let node_id = NodeId::random();
    let store = object_store(opts, node_id);
    let listener = metrics_listener(opts).await?;
    spawn_listener(
        endpoint.clone(),
        Services {
            head: None,
            store: Some(store.clone()),
        },
    );
    let node = start_node(
        node_config(
            opts,
            &key,
            node_id,
            head,
            address,
            BinaryCache::new(binary_cache_dir(&opts.root)),
            listener.as_ref().map(|(_, a)| *a),
        ),
        endpoint.clone(),
        store,
        None,
    )
    .await?;
    let metrics_address = listener.as_ref().map(|(_, a)| *a);
    if let Some((listener, _)) = listener {
        serve_metrics(opts, listener, &node, None);
    }
    Ok(Launched {
        endpoint,
        address,
        node,
        node_id,
        head: None,
        cluster_key: key,
        metrics_address,
        dashboard_address: None,
        jobs: None,
    })
}

/// The machine's address as others see it: the source address of its route to the
/// outside (as Ray finds it; no packet is sent), else the first non-loopback IPv4
/// address of its host name, else 127.0.0.1.
pub fn default_ip() -> IpAddr {
    use std::net::ToSocketAddrs;
    if let Some(ip) = route_ip(SocketAddr::from(([8, 8, 8, 8], 80)))
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
    {
        return ip;
    }
    let host = crate::session::hostname();
    (host.as_str(), 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.find(|a| a.is_ipv4() && !a.ip().is_loopback()))
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// The local address this machine uses to reach `peer` (no packet is sent).
pub fn route_ip(peer: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .ok()?;
    let sock = std::net::UdpSocket::bind(bind).ok()?;
    sock.connect(peer).ok()?;
    sock.local_addr().ok().map(|a| a.ip())
}

/// Resolves `host:port`.
pub fn resolve(address: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address:?} resolves to no address"))
}
