//! The autoscaler (Ray's monitor + StandardAutoscaler, for the local provider): runs
//! beside the head when it is started with `--autoscaling-config`, asks the head for
//! its status every second, lets [`policy::Policy`] decide, and starts or stops
//! workers on the pool's machines over ssh with the [`crate::launcher::Launcher`].
//! It reports what it does and why to the head, which shows it in `rayish status`.
//!
//! Architecture invariant: the autoscaler is a client of the head like `rayish status`
//! (its own QUIC connection, the cluster token): it never touches the head's tables,
//! and the head never waits for it. A slow ssh never stalls a round: launches and
//! stops run on their own threads and report back.

pub mod policy;

use crate::launcher::config::{expand_home, ClusterConfig};
use crate::launcher::Launcher;
use policy::{Action, Limits, NodeSeen, Policy, Snapshot};
use rayish_core::protocol::{ClusterStatus, FromHead, Hello, PeerRole, ToHead};
use rayish_core::resources::ResourceSet;
use rayish_core::transport::tls::ClusterTls;
use rayish_core::transport::{connect, make_client_endpoint, open_control};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Starts the autoscaler on its own thread for the cluster file `config`, against the
/// head at `head` (this process). Errors in the file are returned at once; later
/// failures are logged and retried.
pub fn spawn(config: &Path, head: SocketAddr, token: String) -> Result<(), String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("reading {}: {e}", config.display()))?;
    let (_, mut plan) =
        ClusterConfig::parse(&text, &config.display().to_string()).map_err(|e| e.to_string())?;
    let key = expand_home(crate::launcher::BOOTSTRAP_KEY);
    if key.is_file() {
        plan.ssh_key = Some(key);
    }
    // The file names mounts' sources on the machine `rayish up` ran on; the head has
    // its own copy of each at the remote path, which it passes on.
    plan.file_mounts = plan
        .file_mounts
        .keys()
        .map(|remote| (remote.clone(), remote.clone()))
        .collect();
    let limits = Limits {
        pool: plan
            .worker_pool
            .iter()
            .map(|h| (h.clone(), addresses(h)))
            .collect(),
        min_workers: plan.min_workers,
        max_workers: plan.max_workers,
        upscaling_speed: plan.upscaling_speed,
        idle_timeout: plan.idle_timeout,
        worker_resources: plan
            .worker_resources
            .iter()
            .fold(ResourceSet::new(), |r, (k, v)| r.with(k, *v)),
        startup_grace: Duration::from_secs(30),
        launch_timeout: Duration::from_secs(120),
        retry_after: Duration::from_secs(30),
    };
    let launcher = Launcher::new(plan, text, expand_home("~/.rayish/autoscaler"))
        .with_log(|line| tracing::info!(target: "autoscaler", "{line}"));
    std::thread::Builder::new()
        .name("rayish-autoscaler".into())
        .spawn(move || run(launcher, limits, head, token))
        .map_err(|e| format!("starting the autoscaler thread: {e}"))?;
    Ok(())
}

/// The addresses a pool machine's name resolves to (itself if it is one).
fn addresses(host: &str) -> Vec<String> {
    use std::net::ToSocketAddrs;
    let mut out = vec![host.to_string()];
    if let Ok(addrs) = (host, 0).to_socket_addrs() {
        out.extend(addrs.map(|a| a.ip().to_string()));
    }
    out
}

fn snapshot(status: &ClusterStatus, head: SocketAddr) -> Snapshot {
    Snapshot {
        nodes: status
            .nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| NodeSeen {
                ip: n.address.ip().to_string(),
                is_head: n.address.ip() == head.ip(),
                running_tasks: n.running_tasks,
                total: n.total.clone(),
                available: n.available.clone(),
            })
            .collect(),
        pending: status.pending_demand.clone(),
        infeasible: status.infeasible_demand.clone(),
    }
}

/// The autoscaler's loop; returns only if its runtime cannot be built.
fn run(launcher: Launcher, limits: Limits, head: SocketAddr, token: String) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(target: "autoscaler", "cannot start: {e}");
            return;
        }
    };
    let launcher = std::sync::Arc::new(launcher);
    let mut policy = Policy::new(limits, Instant::now());
    let (done_tx, done_rx) = mpsc::channel::<(String, Result<(), String>)>();
    tracing::info!(target: "autoscaler", "started");
    loop {
        let round = rt.block_on(async {
            let tls = ClusterTls::from_token(&token).map_err(|e| e.to_string())?;
            let bind = std::net::SocketAddr::new(
                rayish_core::launch::route_ip(head).unwrap_or_else(|| head.ip()),
                0,
            );
            let endpoint = make_client_endpoint(bind, &tls, Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            let conn = connect(&endpoint, head, Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string())?;
            let hello = Hello {
                role: PeerRole::Client,
                software_version: env!("CARGO_PKG_VERSION").into(),
            };
            let mut control = open_control(&conn, hello)
                .await
                .map_err(|e| e.to_string())?;
            loop {
                while let Ok((host, result)) = done_rx.try_recv() {
                    if let Err(reason) = result {
                        policy.failed(&host, reason, Instant::now());
                    }
                }
                control.sender.send(ToHead::StatusRequest);
                let status = loop {
                    match control.reader.next().await.map_err(|e| e.to_string())? {
                        Some(FromHead::Status(s)) => break *s,
                        Some(_) => continue,
                        None => return Err::<(), String>("the head closed the connection".into()),
                    }
                };
                let now = Instant::now();
                for action in policy.step(&snapshot(&status, head), now) {
                    let launcher = launcher.clone();
                    let token = token.clone();
                    let done = done_tx.clone();
                    std::thread::spawn(move || {
                        let (host, result) = match action {
                            Action::Launch { host } => {
                                let r = launcher.start_worker(&host, &token);
                                (host, r)
                            }
                            Action::Stop { host } => {
                                let r = launcher.stop_worker(&host);
                                (host, r)
                            }
                        };
                        let _ = done.send((host, result.map_err(|e| e.to_string())));
                    });
                }
                control
                    .sender
                    .send(ToHead::AutoscalerReport(Box::new(policy.report(now))));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        if let Err(e) = round {
            tracing::warn!(target: "autoscaler", "lost the head ({e}); retrying");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
