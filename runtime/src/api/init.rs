//! `init`: connecting this process to a cluster, or starting a local one in-process.

use super::{context, Error, Result};
use rayish_core::binaries::hash_file;
use rayish_core::core_worker::{Connection, CoreWorker, Reconnect};
use rayish_core::launch::{launch_head, resolve, LaunchOptions, Launched};
use rayish_core::protocol::{Hello, PeerRole, Welcome};
use rayish_core::resources::{ResourceSet, CPU};
use rayish_core::session::{read_cluster_record, temp_root, Session};
use rayish_core::transfer::upload_binary;
use rayish_core::transport::tls::{new_token, ClusterTls};
use rayish_core::transport::{connect, make_client_endpoint, open_control, InProcessHead};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How `init` connects.
#[derive(Debug, Clone)]
pub struct Config {
    address: Option<String>,
    token: Option<String>,
    num_cpus: Option<f64>,
    resources: ResourceSet,
    node_timeout: Duration,
    head_reconnect_timeout: Duration,
    log_to_driver: bool,
}

impl Default for Config {
    /// Local mode unless `RAYISH_ADDRESS` is set; token from `RAYISH_TOKEN`.
    fn default() -> Self {
        Self {
            address: std::env::var("RAYISH_ADDRESS")
                .ok()
                .filter(|s| !s.is_empty()),
            token: std::env::var("RAYISH_TOKEN").ok().filter(|s| !s.is_empty()),
            num_cpus: None,
            resources: ResourceSet::new(),
            node_timeout: Duration::from_secs(5),
            head_reconnect_timeout: rayish_core::transport::head_reconnect_timeout_from_env(),
            log_to_driver: true,
        }
    }
}

impl Config {
    /// The default configuration (see [`Config::default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Connect to the head at `address` (`HOST:PORT`, or `auto` for the cluster
    /// started on this machine). `None` keeps the default (`RAYISH_ADDRESS`, else local).
    pub fn address(mut self, address: Option<String>) -> Self {
        if address.is_some() {
            self.address = address;
        }
        self
    }

    /// Local mode, whatever `RAYISH_ADDRESS` says.
    pub fn local(mut self) -> Self {
        self.address = None;
        self
    }

    /// The cluster token (otherwise `RAYISH_TOKEN`, or the local cluster record).
    pub fn token(mut self, token: Option<String>) -> Self {
        if token.is_some() {
            self.token = token;
        }
        self
    }

    /// How long to wait for a head that has gone silent (stalled, paused) before
    /// calls fail with [`Error::ClusterDown`]: default 60 s (Ray's
    /// `gcs_rpc_server_reconnect_timeout_s`), or `$RAYISH_HEAD_RECONNECT_TIMEOUT`
    /// seconds.
    pub fn head_reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.head_reconnect_timeout = timeout;
        self
    }

    /// Whether what this job's tasks and actors print appears in this driver's
    /// terminal, each line prefixed with its function or actor class, `pid=` and
    /// `ip=`, repeats from many processes folded as Ray folds them (Ray's
    /// `log_to_driver`; default on). Either way it is kept in the workers' log files.
    pub fn log_to_driver(mut self, on: bool) -> Self {
        self.log_to_driver = on;
        self
    }

    /// Local mode: CPUs to offer (default: all of this machine's).
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = Some(n);
        self
    }

    /// Local mode: a custom resource to offer.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.set(name, amount);
        self
    }
}

struct Runtime {
    rt: tokio::runtime::Runtime,
    local: Option<Launched>,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Connects this process to a cluster, or starts a local one (head and node in this
/// process, workers as child processes) when no address is given.
///
/// If this process was started by a node as a worker process, serves tasks and never
/// returns; otherwise returns at once. `init` calls it; call it yourself first thing in
/// `main` when `main` does work before `init` that a worker must not do (say, parsing
/// arguments that a worker, started without them, would lack).
pub fn serve_if_worker() {
    if std::env::var_os("RAYISH_WORKER_FD").is_some() {
        super::worker::run_worker();
    }
}

/// Call it first thing in `main`: worker processes run the same binary, and in them
/// `init` serves tasks and never returns. Later calls do nothing.
pub fn init(config: Config) -> Result<()> {
    serve_if_worker();
    if let Ok(filter) = std::env::var("RAYISH_LOG") {
        // Drivers log to stderr only when asked; nodes always log to their session.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let _guard = INIT
        .lock()
        .map_err(|_| Error::Init("a previous init panicked".into()))?;
    if context::try_current().is_some() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rayish-io")
        .enable_all()
        .build()
        .map_err(|e| Error::Init(format!("tokio runtime: {e}")))?;
    let handle = rt.handle().clone();
    let root = temp_root();
    // The job's binary is named by its SHA-256: this program (often 100+ MB with debug
    // info) is hashed while the local cluster starts, not after.
    let exe = std::env::current_exe()
        .map_err(|e| Error::Init(format!("cannot find this program's executable: {e}")))?;
    let hashing = {
        let exe = exe.clone();
        std::thread::spawn(move || hash_file(&exe))
    };

    let (address, token, local) = match config.address.as_deref() {
        None | Some("") | Some("local") => {
            let session = Session::create(&root).map_err(|e| {
                Error::Init(format!("session directory under {}: {e}", root.display()))
            })?;
            let cpus = config.num_cpus.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1) as f64
            });
            let mut resources = config.resources.clone();
            resources.set(CPU, cpus);
            let opts = LaunchOptions {
                ip: [127, 0, 0, 1].into(),
                port: 0,
                resources,
                token: new_token(),
                root: root.clone(),
                log_dir: session.logs(),
                node_timeout: config.node_timeout,
                head_reconnect_timeout: config.head_reconnect_timeout,
                object_store_memory: None,
                // An embedded cluster lives and dies with its driver: nothing to scrape.
                metrics_export_port: None,
                dashboard: None,
                task_events_capacity: rayish_core::head::DEFAULT_TASK_EVENTS,
                storage: None,
                incarnation: 1,
            };
            let launched = handle
                .block_on(launch_head(&opts))
                .map_err(|e| Error::Init(e.to_string()))?;
            (launched.address, opts.token, Some(launched))
        }
        Some(addr) => {
            let record = read_cluster_record(&root);
            let addr = if addr == "auto" {
                record.as_ref().map(|r| r.address.clone()).ok_or_else(|| {
                    Error::Init(format!("address \"auto\": no cluster was started on this machine ({} has no record)", root.display()))
                })?
            } else {
                addr.to_string()
            };
            let sock: SocketAddr = resolve(&addr).map_err(Error::Init)?;
            let token = config
                .token
                .clone()
                .or_else(|| {
                    record
                        .filter(|r| resolve(&r.address).ok() == Some(sock))
                        .map(|r| r.token)
                })
                .ok_or_else(|| {
                    Error::Init(format!(
                        "no token for the cluster at {addr}: pass it (--token) or set RAYISH_TOKEN"
                    ))
                })?;
            (sock, token, None)
        }
    };

    // Derived once (Argon2id): a local cluster already did.
    let tls = match &local {
        Some(l) => ClusterTls::from_key(&l.cluster_key),
        None => ClusterTls::from_token(&token),
    }
    .map_err(|e| Error::Init(e.to_string()))?;
    // The address this machine reaches the head from, not every interface.
    let bind = SocketAddr::new(
        rayish_core::launch::route_ip(address).unwrap_or_else(|| address.ip()),
        0,
    );
    let endpoint = match &local {
        Some(l) => l.endpoint.clone(),
        None => {
            let _enter = handle.enter();
            make_client_endpoint(bind, &tls, config.head_reconnect_timeout)
                .map_err(|e| Error::Init(e.to_string()))?
        }
    };
    let peer_client = rayish_core::transport::client_config(&tls, config.node_timeout, bind)
        .map_err(|e| Error::Init(e.to_string()))?;
    let binary = hashing
        .join()
        .map_err(|_| Error::Init("hashing this program's executable panicked".into()))?
        .map_err(|e| Error::Init(e.to_string()))?;
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    if let Some(head) = local.as_ref().and_then(|l| l.head.as_ref()) {
        // Local mode: workers run this very executable, just hashed; no copy. Through
        // /proc, so that a rebuild of the file meanwhile cannot change their code.
        let running = std::path::PathBuf::from(format!("/proc/{}/exe", std::process::id()));
        head.binaries().register_in_place(&binary, running);
    }
    let hello = DriverHello {
        address,
        endpoint: endpoint.clone(),
        peer_client,
        binary,
        exe,
        name,
    };
    let in_process = local.as_ref().and_then(|l| l.head.clone());
    let conn = handle
        .block_on(hello.connect(None, in_process.as_ref()))
        .map_err(Error::Init)?;
    // A driver of a cluster it did not start outlives a restart of that cluster's
    // head; an embedded head dies with this process.
    let reconnect = local.is_none().then(|| {
        let hello = Arc::new(hello);
        Reconnect {
            connect: Arc::new(move |job| {
                let hello = hello.clone();
                Box::pin(async move { hello.connect(Some(job), None).await })
            }),
            within: config.head_reconnect_timeout,
        }
    });
    let cw = CoreWorker::start(handle, conn, None, reconnect);
    if let Some(l) = &local {
        cw.set_local_store(l.node_id, l.node.store());
    }
    if config.log_to_driver {
        cw.subscribe_output();
    }
    context::install(cw);
    if local.is_none() {
        register_exit_hook();
    } else {
        register_local_exit_hook();
    }
    let _ = RUNTIME.set(Runtime { rt, local });
    Ok(())
}

/// What a driver says to join its head, kept to say it again to a restarted head.
struct DriverHello {
    address: SocketAddr,
    endpoint: rayish_core::transport::Endpoint,
    peer_client: rayish_core::transport::ClientConfig,
    binary: rayish_core::ids::BinaryHash,
    exe: std::path::PathBuf,
    name: String,
}

impl DriverHello {
    /// Connects, starting a job (or going on with `resumes`), and uploads this
    /// program if the head lacks it. `in_process`: the head of this same process, if
    /// any, which a driver talks to in memory (as the head's own node does), not by
    /// encrypted UDP to itself; transfers and the binary upload still use QUIC.
    async fn connect(
        &self,
        resumes: Option<rayish_core::ids::JobId>,
        in_process: Option<&rayish_core::head::HeadHandle>,
    ) -> std::result::Result<Connection, String> {
        let head_conn = connect(&self.endpoint, self.address, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        let hello = Hello {
            role: PeerRole::Driver {
                binary: self.binary.clone(),
                name: self.name.clone(),
                pid: std::process::id(),
                submission_id: std::env::var(rayish_core::jobs::SUBMISSION_ID_ENV)
                    .ok()
                    .filter(|s| !s.is_empty()),
                resumes,
            },
            software_version: env!("CARGO_PKG_VERSION").into(),
        };
        let control = match in_process {
            Some(head) => head.open(hello).await,
            None => open_control(&head_conn, hello).await,
        }
        .map_err(|e| e.to_string())?;
        let Welcome::Accepted {
            peer,
            job: Some(job),
            upload_binary: upload,
            head_node,
        } = control.welcome
        else {
            return Err("the head did not create a job for this driver".into());
        };
        if upload {
            upload_binary(&head_conn, &self.binary, &self.exe)
                .await
                .map_err(|e| format!("uploading this program to the head: {e}"))?;
        }
        Ok(Connection {
            endpoint: self.endpoint.clone(),
            peer_client: self.peer_client.clone(),
            head_conn,
            head: control.sender,
            reader: control.reader,
            peer,
            job,
            head_node,
        })
    }
}

extern "C" fn close_at_exit() {
    if let Some(cw) = context::try_current() {
        // The last values go before the goodbye, on the same ordered stream.
        super::metrics::report();
        cw.close_at_exit();
    }
}

/// Tells the head when this process exits (a driver's job ends at once, not after the
/// idle timeout). Local mode needs none: the head exits with the process.
pub(crate) fn register_exit_hook() {
    // SAFETY: atexit(3) with a plain `extern "C" fn()` that only uses process-global
    // state which lives until exit.
    unsafe {
        libc::atexit(close_at_exit);
    }
}

extern "C" fn finish_output_at_exit() {
    if let Some(cw) = context::try_current() {
        cw.finish_output();
    }
}

/// In local mode the head exits with the process; only the workers' last output
/// (and the repeats held back) must be printed first.
fn register_local_exit_hook() {
    // SAFETY: atexit(3) with a plain `extern "C" fn()` that only uses process-global
    // state which lives until exit.
    unsafe {
        libc::atexit(finish_output_at_exit);
    }
}

/// Disconnects from the cluster; in local mode, stops its workers. Later API calls fail.
pub fn shutdown() {
    if let Some(cw) = context::try_current() {
        cw.finish_output();
    }
    if let Some(rt) = RUNTIME.get() {
        if let Some(local) = &rt.local {
            local.node.kill_workers();
            local.endpoint.close(0u32.into(), b"shutdown");
        }
        if let Some(cw) = context::try_current() {
            cw.disconnect();
        }
        let _ = &rt.rt;
    }
}
