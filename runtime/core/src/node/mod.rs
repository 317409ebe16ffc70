//! A node (Ray's raylet): joins the head, runs the tasks the head assigns to it in
//! worker processes, holds the large objects they make, and serves them to others.
//!
//! Architecture invariant: a node acts only on what the head tells it (and on its
//! workers' requests); it never schedules and never decodes object values.
//!
//! This file joins the head, holds the node's state (`NodeInner`) and runs its loops
//! (messages from the head, workers' requests, heartbeats). What the node does is
//! split by concern: `execution.rs` runs assignments (arguments, leases, followers,
//! outcomes), `actors.rs` hosts actors and their calls, `fetch.rs` gets binaries and
//! objects onto the node, `worker_requests.rs` answers a worker's gets and puts,
//! `head_link.rs` keeps the stream to the head across the head's restarts;
//! `task_queue.rs` keeps the node to its resources and `worker_pool.rs` keeps its
//! worker processes.

mod actors;
mod agent;
mod execution;
mod fetch;
mod head_link;
mod metrics;
mod task_queue;
mod worker_output;
pub mod worker_pool;
mod worker_requests;

use crate::binaries::BinaryCache;
use crate::ids::{ActorId, BinaryHash, NodeId};
use crate::object_store::{ObjectStore, FREE_SEGMENT_IDLE};
use crate::protocol::{
    AgentReply, FromHead, Hello, NodeLoad, NodeRegistration, PeerRole, TaskKind, ToHead, Welcome,
};
use crate::resources::ResourceSet;
use crate::transport::{
    connect, open_control, ConnectError, ControlReader, Endpoint, HandshakeError, InProcessHead,
    PeerConnections,
};
use actors::LocalActor;
use dashmap::DashMap;
use head_link::HeadLink;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use worker_pool::{WorkerEnv, WorkerPool, WorkerRequest};

pub use metrics::NodeMetrics;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The head's address.
    pub head: SocketAddr,
    /// Where peers reach this node's object server (its endpoint's address).
    pub address: SocketAddr,
    /// What it offers to tasks.
    pub resources: ResourceSet,
    /// The cluster key derived from the token (handed to workers instead of it).
    pub cluster_key: crate::transport::tls::ClusterKey,
    /// Where worker logs go.
    pub log_dir: PathBuf,
    /// Where job binaries are cached.
    pub binaries: BinaryCache,
    /// How long connection attempts wait.
    pub connect_timeout: Duration,
    /// Heartbeats go out at a fifth of this; connections to other nodes are dropped
    /// after this much silence.
    pub node_timeout: Duration,
    /// How long this node (and its workers) wait for a silent head.
    pub head_reconnect_timeout: Duration,
    /// Where it serves Prometheus metrics, told to the head for its targets file.
    pub metrics_address: Option<SocketAddr>,
    /// Which join of this node process this is (see
    /// [`NodeRegistration::incarnation`]).
    pub incarnation: u32,
}

/// Why a node could not join.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The head could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The head refused.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

struct NodeInner {
    cfg: NodeConfig,
    store: Arc<ObjectStore>,
    /// What it told the head when it joined (said again, as a returning node, to a
    /// restarted head).
    reg: NodeRegistration,
    /// Its QUIC endpoint (to reach a restarted head).
    endpoint: Endpoint,
    /// QUIC connection to the head, for fetching binaries; `None` for the head's own
    /// node, which shares the head's binary cache.
    head_conn: std::sync::RwLock<Option<quinn::Connection>>,
    head: Arc<HeadLink>,
    pool: Arc<WorkerPool>,
    queue: task_queue::LocalTaskQueue,
    peers: PeerConnections,
    /// Binaries known to be in the cache (saves a stat per task).
    known_binaries: DashMap<BinaryHash, PathBuf>,
    /// The binary of each job that ran here, pinned in the cache until the job ends.
    job_binaries: DashMap<crate::ids::JobId, BinaryHash>,
    binary_fetch: tokio::sync::Mutex<()>,
    /// Actors living in this node's workers.
    actors: DashMap<ActorId, LocalActor>,
    /// Moving average of its function calls' run times, in microseconds (0 before
    /// the first): tasks get followers only while they are short.
    avg_run_micros: std::sync::atomic::AtomicU64,
    /// Answers the dashboard's questions about this machine.
    agent: Arc<agent::Agent>,
}

/// Pause between attempts to reach a head that went away.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

impl NodeInner {
    /// The head went away (`why`): waits up to `--head-reconnect-timeout` for it to
    /// come back on its address (a restarted head), keeping this node's workers,
    /// tasks and objects, and tells it what the node still has. The new stream's
    /// reader; or why the node cannot go on as itself.
    async fn come_back(&self, why: &str) -> Result<ControlReader, NodeEnded> {
        self.head.lost();
        let timeout = self.cfg.head_reconnect_timeout;
        if self.head_conn_is_local() {
            // The head's own node: its head is this process, gone only at its end.
            return Err(NodeEnded {
                reason: why.to_string(),
                may_rejoin: false,
            });
        }
        tracing::warn!("{why}; waiting up to {timeout:?} for the head to come back");
        // Actors live on too: the head takes back those it knows (detached ones)
        // and tells the node to end the others.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut reg = self.reg.clone();
        reg.resumes = true;
        let mut last;
        loop {
            if self.head.overflowed() {
                return Err(NodeEnded {
                    reason: format!("{why}; too much happened while the head was away"),
                    may_rejoin: true,
                });
            }
            let hello = Hello {
                role: PeerRole::Node(reg.clone()),
                software_version: env!("CARGO_PKG_VERSION").into(),
            };
            let attempt = async {
                let conn = connect(&self.endpoint, self.cfg.head, self.cfg.connect_timeout)
                    .await
                    .map_err(NodeError::from)?;
                let control = open_control(&conn, hello).await?;
                Ok::<_, NodeError>((conn, control))
            };
            match attempt.await {
                Ok((conn, control)) if matches!(control.welcome, Welcome::Accepted { .. }) => {
                    *self.head_conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                    let actors = self
                        .actors
                        .iter()
                        .map(|a| (*a.key(), a.worker.pid()))
                        .collect();
                    self.head
                        .back(control.sender, self.store.inventory(), actors);
                    tracing::info!(node = ?self.cfg.node_id, "the head is back; this node goes on with its work");
                    return Ok(control.reader);
                }
                Ok(_) => last = "the head sent an unexpected welcome".into(),
                Err(NodeError::Handshake(HandshakeError::Rejected(reason))) => {
                    return Err(NodeEnded {
                        reason: format!("{why}; the head did not take this node back: {reason}"),
                        may_rejoin: true,
                    });
                }
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeEnded {
                    reason: format!(
                        "{why}; the head did not come back within {timeout:?} ({last})"
                    ),
                    may_rejoin: false,
                });
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }

    /// Whether this is the head process's own node (no connection of its own).
    fn head_conn_is_local(&self) -> bool {
        self.head_conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }
}

/// How often a node marks its live jobs' binaries as used (see `BinaryCache::touch`).
const BINARY_TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Why a node's link to the head ended.
#[derive(Debug, Clone)]
pub struct NodeEnded {
    /// What happened.
    pub reason: String,
    /// Whether the head is still there for this process to join as a new node (it
    /// declared this node dead, or refused to take it back); false when the head did
    /// not come back within the reconnect timeout.
    pub may_rejoin: bool,
}

/// A running node.
pub struct RunningNode {
    inner: Arc<NodeInner>,
    ended: tokio::sync::oneshot::Receiver<NodeEnded>,
}

impl RunningNode {
    /// Waits until the node's link to the head ends, and says why.
    pub async fn closed(&mut self) -> NodeEnded {
        (&mut self.ended).await.unwrap_or_else(|_| NodeEnded {
            reason: "node stopped".into(),
            may_rejoin: false,
        })
    }

    /// What a metrics scrape asks of this node.
    pub fn metrics(&self) -> NodeMetrics {
        NodeMetrics::new(self.inner.clone())
    }

    /// Kills the node's workers (on shutdown).
    pub fn kill_workers(&self) {
        self.inner.pool.kill_all();
    }

    /// Ends this incarnation of the node: kills its workers and drops its objects and
    /// their files (before it joins again as a new node, or exits).
    pub fn close(&self) {
        self.inner.pool.kill_all();
        self.inner.store.close();
    }

    /// The node's object store (a driver in the same process reads and writes it
    /// directly, as Ray's drivers use their node's plasma store).
    pub fn store(&self) -> Arc<ObjectStore> {
        self.inner.store.clone()
    }

    /// A handle that can kill the node's workers while another task waits on [`Self::closed`].
    pub fn workers(&self) -> Arc<WorkerPool> {
        self.inner.pool.clone()
    }
}

/// Joins the cluster and starts serving. The endpoint's listener must route transfer
/// streams to `store` (see [`crate::server`]).
///
/// `local_head` is the head of this same process, if it is the head process: the node
/// then talks to it in memory.
pub async fn start_node(
    cfg: NodeConfig,
    endpoint: Endpoint,
    store: Arc<ObjectStore>,
    local_head: Option<Arc<dyn InProcessHead>>,
) -> Result<RunningNode, NodeError> {
    let reg = NodeRegistration {
        node_id: cfg.node_id,
        address: cfg.address,
        resources: cfg.resources.clone(),
        hostname: crate::session::hostname(),
        pid: std::process::id(),
        worker_key: rand::random(),
        metrics_address: cfg.metrics_address,
        incarnation: cfg.incarnation,
        resumes: false,
    };
    let worker_key = reg.worker_key;
    let hello = Hello {
        role: PeerRole::Node(reg.clone()),
        software_version: env!("CARGO_PKG_VERSION").into(),
    };
    let (head_conn, control) = match local_head {
        Some(head) => (None, head.open(hello).await?),
        None => {
            let conn = connect(&endpoint, cfg.head, cfg.connect_timeout).await?;
            let control = open_control(&conn, hello).await?;
            (Some(conn), control)
        }
    };
    let (req_tx, mut req_rx) = tokio::sync::mpsc::unbounded_channel();
    let env = WorkerEnv {
        head: cfg.head,
        cluster_key: cfg.cluster_key.clone(),
        node: cfg.node_id,
        node_address: cfg.address,
        log_dir: cfg.log_dir.clone(),
        shm_dir: store.shm_dir().map(|d| d.to_path_buf()),
        head_reconnect_timeout: cfg.head_reconnect_timeout,
        worker_key,
    };
    let head = Arc::new(HeadLink::new(control.sender));
    let pool = Arc::new(WorkerPool::new(env, req_tx, head.clone()));
    let cfg_resources = cfg.resources.clone();
    let agent = Arc::new(agent::Agent::new(&cfg.log_dir, store.clone()));
    let tls = crate::transport::tls::ClusterTls::from_key(&cfg.cluster_key)
        .map_err(ConnectError::from)?;
    let peer_client = crate::transport::client_config(&tls, cfg.node_timeout, cfg.address)?;
    let peers = PeerConnections::new(endpoint.clone(), peer_client, cfg.connect_timeout);
    let inner = Arc::new(NodeInner {
        cfg,
        store,
        reg,
        endpoint,
        head_conn: std::sync::RwLock::new(head_conn),
        head,
        pool,
        queue: task_queue::LocalTaskQueue::new(cfg_resources),
        peers,
        known_binaries: DashMap::new(),
        job_binaries: DashMap::new(),
        binary_fetch: tokio::sync::Mutex::new(()),
        actors: DashMap::new(),
        avg_run_micros: std::sync::atomic::AtomicU64::new(0),
        agent,
    });
    tracing::info!(node = ?inner.cfg.node_id, head = %inner.cfg.head, "joined the cluster");

    // Heartbeats.
    let hb = inner.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(hb.cfg.node_timeout / 5);
        let mut last_touch = std::time::Instant::now();
        loop {
            interval.tick().await;
            // Binaries of live jobs look recently used to every process of this
            // machine that shares the cache, so none of them evicts one.
            if last_touch.elapsed() > BINARY_TOUCH_EVERY {
                last_touch = std::time::Instant::now();
                hb.cfg.binaries.touch_pinned();
            }
            let load = NodeLoad {
                store_objects: hb.store.len() as u64,
                store_bytes: hb.store.bytes(),
                store_free_bytes: hb.store.free_bytes(),
                store_reused: hb.store.reused(),
                workers: hb.pool.len() as u64,
            };
            hb.store.trim_free(FREE_SEGMENT_IDLE);
            if !hb.head.send(ToHead::Heartbeat(load)) {
                break;
            }
        }
    });

    // Requests from workers.
    let rq = inner.clone();
    tokio::spawn(async move {
        while let Some((worker, request)) = req_rx.recv().await {
            match request {
                WorkerRequest::Blocked { task_id, blocked } => {
                    // In order: a resume must never overtake its block.
                    rq.head.blocked(task_id, blocked);
                    let start = rq.queue.set_blocked(task_id, blocked);
                    rq.start(start);
                    continue;
                }
                WorkerRequest::ActorDied { actor, reason } => {
                    rq.actor_died(actor, reason);
                    continue;
                }
                _ => {}
            }
            let node = rq.clone();
            tokio::spawn(async move { node.serve_worker(worker, request).await });
        }
    });

    // Orders from the head.
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    let node = inner.clone();
    let mut reader = control.reader;
    tokio::spawn(async move {
        let reason = loop {
            match reader.next().await {
                Ok(Some(FromHead::Execute(assignment))) => {
                    node.head.assigned(&assignment);
                    if let TaskKind::ActorCall(actor) = assignment.spec.kind {
                        node.actor_call(actor, *assignment);
                    } else {
                        let start = node.queue.push(*assignment);
                        node.start(start);
                    }
                }
                Ok(Some(FromHead::KillActor(actor))) => {
                    if let Some(a) = node.actors.get(&actor) {
                        tracing::info!(
                            ?actor,
                            pid = a.worker.pid(),
                            "killing actor on the head's order"
                        );
                        node.pool.kill_worker(&a.worker);
                    }
                }
                Ok(Some(FromHead::DeleteObjects(ids))) => {
                    for id in ids {
                        node.store.remove(&id);
                    }
                }
                Ok(Some(FromHead::CopyObject { id, holders })) => {
                    let node = node.clone();
                    tokio::spawn(async move { node.copy_for_others(id, holders).await });
                }
                Ok(Some(FromHead::JobEnded(job))) => {
                    node.head.job_ended(job);
                    node.queue.drop_job(job);
                    node.pool.kill_job(job);
                    if let Some((_, hash)) = node.job_binaries.remove(&job) {
                        node.cfg.binaries.unpin(&hash);
                        if !node.cfg.binaries.is_pinned(&hash) {
                            node.known_binaries.remove(&hash);
                        }
                    }
                }
                Ok(Some(FromHead::AgentRequest { id, request })) => {
                    let node = node.clone();
                    tokio::spawn(async move {
                        let agent = node.agent.clone();
                        let reply = tokio::task::spawn_blocking(move || agent.answer(request))
                            .await
                            .unwrap_or_else(|e| AgentReply::Error(e.to_string()));
                        node.head.send(ToHead::AgentReply { id, reply });
                    });
                }
                Ok(Some(FromHead::NodeDead(reason))) => {
                    break NodeEnded {
                        reason: format!("the head declared this node dead ({reason})"),
                        may_rejoin: true,
                    };
                }
                Ok(Some(other)) => tracing::debug!("ignoring {other:?}"),
                lost => {
                    let why = match lost {
                        Err(e) => format!("lost the head: {e}"),
                        Ok(_) => "the head closed the connection".to_string(),
                    };
                    match node.come_back(&why).await {
                        Ok(r) => reader = r,
                        Err(end) => break end,
                    }
                }
            }
        };
        node.pool.kill_all();
        let _ = ended_tx.send(reason);
    });
    Ok(RunningNode { inner, ended })
}
