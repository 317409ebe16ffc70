//! The core worker: the part of every driver and worker process that talks to the
//! cluster. It submits tasks, counts this process's references, learns when objects are
//! ready and fetches their values (Ray's core_worker).
//!
//! Architecture invariant: the core worker speaks to the head over one ordered control
//! stream, so that for any object this process's messages (submit, nest, add, remove)
//! arrive in the order they were made. It never decodes values into user types: that
//! is the API layer's job.
//!
//! This file holds the connection to the head and the messages it sends; the rest is
//! split by concern: `ref_counts.rs` this process's reference counts, `put.rs` storing
//! values, `get.rs` waiting for and fetching them, `node_link.rs` a worker's socket
//! to its node, `refs.rs` the references found inside a value, `spin.rs` how long a
//! waiting thread polls, `lineage.rs` and `resume.rs` what a driver keeps and tells
//! a restarted head.

mod get;
mod lineage;
pub mod node_link;
mod output;
mod put;
mod ref_counts;
mod refs;
mod resume;
mod spin;

use lineage::Lineage;
use ref_counts::{RefOutbox, REF_BATCH, REF_FLUSH_DELAY};
pub use refs::{collect_nested, note_nested};
pub use resume::Reconnect;

use crate::ids::ActorId;
use crate::ids::{JobId, NodeId, ObjectId, PeerId, TaskId};
use crate::protocol::{ActorInfo, FromHead, ObjectLocation, TaskError, TaskSpec, ToHead};
use crate::transport::{ControlReader, Endpoint, MessageSender, PeerConnections};
use dashmap::DashMap;
use node_link::NodeLink;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;

/// Why an object could not be had.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum GetError {
    /// The object is an error (the task failed, or the object was lost).
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The deadline passed first.
    #[error("timed out after {0:?} waiting for the object")]
    Timeout(Duration),
    /// The connection to the head is gone: the cluster is down or unreachable.
    #[error("the cluster is unreachable: {0}")]
    ClusterDown(String),
    /// The store could not take a value: over its memory cap and unable to spill.
    #[error("{0}")]
    StoreFull(String),
    /// The value could not be encoded into the store.
    #[error("encoding the value: {0}")]
    Encode(String),
    /// No holder could serve the object.
    #[error("object {id} could not be fetched: {reason}")]
    Unavailable {
        /// The object.
        id: ObjectId,
        /// The last failure.
        reason: String,
    },
    /// No live actor has the name looked up.
    #[error("no actor named {name:?}: {reason}")]
    ActorNotFound {
        /// The name looked up.
        name: String,
        /// What the head said.
        reason: String,
    },
}

thread_local! {
    static CURRENT_TASK: Cell<Option<(TaskId, ObjectId)>> = const { Cell::new(None) };
}

/// Marks the task this thread is running and its return object (worker processes), so
/// that a `get` inside it can give its CPU back while it waits, and references in its
/// return value can be declared before the value is dropped.
pub fn set_current_task(task: Option<(TaskId, ObjectId)>) {
    CURRENT_TASK.with(|c| c.set(task));
}

/// The task this thread is running, if any (the parent of the tasks it submits).
pub fn current_task_id() -> Option<TaskId> {
    CURRENT_TASK.with(|c| c.get()).map(|(t, _)| t)
}

/// The return object of the task this thread is running, if any.
pub fn current_return_id() -> Option<ObjectId> {
    CURRENT_TASK.with(|c| c.get()).map(|(_, r)| r)
}

#[derive(Default)]
struct Slot {
    location: Option<ObjectLocation>,
    subscribed: bool,
    waiters: Vec<mpsc::UnboundedSender<ObjectId>>,
}

/// How this process reached the cluster.
pub struct Connection {
    /// The endpoint used for every connection.
    pub endpoint: Endpoint,
    /// How connections to other processes (object holders) are made: with a short
    /// idle timeout, unlike the control connection to the head.
    pub peer_client: quinn::ClientConfig,
    /// The connection to the head.
    pub head_conn: quinn::Connection,
    /// The control stream's sender.
    pub head: MessageSender<ToHead>,
    /// The control stream's reader (the welcome already read).
    pub reader: ControlReader,
    /// This process's id at the head.
    pub peer: PeerId,
    /// The job it works for.
    pub job: JobId,
    /// The head process's node.
    pub head_node: NodeId,
}

/// The connection to the head, replaced when a driver reconnects to a restarted head.
struct HeadLink {
    conn: quinn::Connection,
    /// The head process's node (a restarted head's is a new one).
    head_node: NodeId,
}

/// What goes to the head, under one lock so that its order is the order of sending:
/// the stream, the reference-count updates held back, and a driver's lineage (changed
/// together with the message that announces the change, so a reconnect's inventory
/// and the messages after it never overlap or leave a gap).
struct Outgoing {
    head: MessageSender<ToHead>,
    refs: RefOutbox,
    /// In a driver that reconnects to a restarted head: what it made and may need.
    lineage: Option<Lineage>,
}

/// The core worker of this process.
pub struct CoreWorker {
    rt: tokio::runtime::Handle,
    link: std::sync::RwLock<HeadLink>,
    job: JobId,
    /// In worker processes: the node that started us and its id.
    node: Option<(NodeLink, NodeId)>,
    slots: DashMap<ObjectId, Slot>,
    refs: DashMap<ObjectId, usize>,
    peers: PeerConnections,
    alive: AtomicBool,
    down_reason: std::sync::Mutex<Option<String>>,
    /// Set when the head answers our goodbye.
    farewell: (std::sync::Mutex<bool>, std::sync::Condvar),
    /// In a driver whose process also runs a node (local mode): that node and its
    /// store, read and written in place instead of over a loopback connection.
    local_store: std::sync::OnceLock<(NodeId, Arc<crate::object_store::ObjectStore>)>,
    /// Messages sent to the head so far (see [`Self::sync_with_head`]).
    sent: AtomicU64,
    /// The stream to the head with what waits to go on it. Reference-count updates
    /// wait in it: runs of them travel as one message (getting a value holding 10k
    /// references would otherwise send 20k messages).
    outgoing: std::sync::Mutex<Outgoing>,
    /// In a driver: how it reaches a restarted head.
    reconnect: Option<Reconnect>,
    /// This worker, for the task that flushes `ref_outbox`.
    this: std::sync::OnceLock<std::sync::Weak<CoreWorker>>,
    /// `sync_with_head` calls awaiting the head's answer.
    syncs: DashMap<u64, std::sync::mpsc::Sender<()>>,
    /// `get_actor` questions awaiting the head's answer, with the names asked for.
    actor_queries: DashMap<u64, (String, std::sync::mpsc::Sender<Result<ActorInfo, String>>)>,
    next_query: AtomicU64,
    /// In a driver that asked for them: prints its workers' output.
    output: std::sync::OnceLock<output::OutputPrinter>,
}

impl CoreWorker {
    /// Starts the core worker on an accepted control stream; `rt` runs its background
    /// tasks. With `reconnect` (a driver's), a lost head is waited for and, once back,
    /// told what this process needs; without, its loss fails every wait.
    pub fn start(
        rt: tokio::runtime::Handle,
        conn: Connection,
        node: Option<(NodeLink, NodeId)>,
        reconnect: Option<Reconnect>,
    ) -> Arc<Self> {
        let cw = Arc::new(Self {
            rt: rt.clone(),
            link: std::sync::RwLock::new(HeadLink {
                conn: conn.head_conn,
                head_node: conn.head_node,
            }),
            job: conn.job,
            node,
            slots: DashMap::new(),
            refs: DashMap::new(),
            peers: PeerConnections::new(conn.endpoint, conn.peer_client, Duration::from_secs(10)),
            alive: AtomicBool::new(true),
            down_reason: std::sync::Mutex::new(None),
            farewell: (std::sync::Mutex::new(false), std::sync::Condvar::new()),
            actor_queries: DashMap::new(),
            next_query: AtomicU64::new(1),
            sent: AtomicU64::new(0),
            outgoing: std::sync::Mutex::new(Outgoing {
                head: conn.head,
                refs: RefOutbox::default(),
                // A driver, and a worker (whose running task may wait for tasks
                // it submitted), keep what they made, to tell a restarted head.
                lineage: reconnect.is_some().then(Lineage::default),
            }),
            reconnect,
            this: std::sync::OnceLock::new(),
            syncs: DashMap::new(),
            local_store: std::sync::OnceLock::new(),
            output: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&cw);
        let _ = cw.this.set(weak.clone());
        rt.spawn(resume::read_from_head(weak, conn.reader));
        cw
    }

    fn on_message(&self, msg: FromHead) {
        match msg {
            FromHead::ObjectReady { id, location } => {
                if let Some(mut slot) = self.slots.get_mut(&id) {
                    slot.location = Some(location);
                    slot.subscribed = false;
                    for w in slot.waiters.drain(..) {
                        let _ = w.send(id);
                    }
                }
            }
            FromHead::Warning(text) => {
                tracing::warn!("{text}");
                eprintln!("rayish warning: {text}");
            }
            FromHead::Synced(n) => {
                if let Some((_, tx)) = self.syncs.remove(&n) {
                    let _ = tx.send(());
                }
            }
            FromHead::ActorFound { request, result } => {
                if let Some((_, (_, tx))) = self.actor_queries.remove(&request) {
                    let _ = tx.send(result);
                }
            }
            FromHead::WorkerOutput(runs) => {
                if let Some(printer) = self.output.get() {
                    printer.print(runs);
                }
            }
            FromHead::Farewell => {
                let (lock, answered) = &self.farewell;
                *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
                answered.notify_all();
            }
            other => tracing::debug!("ignoring {other:?}"),
        }
    }

    fn cluster_down(&self, reason: String) {
        tracing::warn!("cluster connection lost: {reason}");
        if let Ok(mut r) = self.down_reason.lock() {
            *r = Some(reason);
        }
        self.alive.store(false, Ordering::SeqCst);
        // Dropping the senders wakes every `get_actor` and sync waiting for an answer.
        self.actor_queries.clear();
        self.syncs.clear();
        for mut slot in self.slots.iter_mut() {
            let id = *slot.key();
            for w in slot.waiters.drain(..) {
                let _ = w.send(id);
            }
        }
    }

    fn down_error(&self) -> GetError {
        let reason = self
            .down_reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_default();
        GetError::ClusterDown(reason)
    }

    /// Closes the connection to the head; pending and later calls fail.
    pub fn disconnect(&self) {
        // Down first: the reader then sees the closed connection as the end, not as
        // a head to reconnect to.
        self.cluster_down("rayish::shutdown was called".into());
        self.head_conn().close(0u32.into(), b"shutdown");
    }

    /// The current connection to the head.
    fn head_conn(&self) -> quinn::Connection {
        self.link
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .conn
            .clone()
    }

    /// The head process's node.
    fn head_node(&self) -> NodeId {
        self.link
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .head_node
    }

    /// Says goodbye to the head and waits briefly for it to go out, so the head learns
    /// at once that this process is gone (its job ends, its references are released)
    /// instead of after the idle timeout. Called at process exit.
    pub fn close_at_exit(&self) {
        // Thread-locals are being torn down: no block_on here; the runtime's I/O thread
        // still runs and delivers the head's answer. The goodbye follows everything
        // already queued on the ordered stream (releases included), and QUIC
        // retransmits it if a packet is lost, as long as we wait for the answer.
        // (Closing the connection instead would discard unsent stream data.)
        if !self.is_connected() {
            return;
        }
        self.finish_output();
        self.to_head(ToHead::Goodbye);
        let (lock, answered) = &self.farewell;
        let said = lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = answered.wait_timeout_while(said, Duration::from_secs(2), |said| !*said);
    }

    /// Asks the head for this driver's job's workers' output, and prints it from now
    /// on (Ray's `log_to_driver`; see [`output`]).
    pub fn subscribe_output(&self) {
        if self.output.set(output::OutputPrinter::new()).is_err() {
            return;
        }
        self.to_head(ToHead::SubscribeOutput);
        let weak = self.this.get().cloned();
        self.rt.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let Some(cw) = weak.as_ref().and_then(|w| w.upgrade()) else {
                    return;
                };
                if let Some(printer) = cw.output.get() {
                    printer.tick();
                }
            }
        });
    }

    /// Prints the workers' output still on its way (lines printed just before the
    /// last results came) and the repeats held back; for a driver about to exit.
    pub fn finish_output(&self) {
        if let Some(printer) = self.output.get() {
            printer.finish(Duration::from_millis(150), Duration::from_secs(1));
        }
    }

    /// Reports this process's own metrics (their values now) to the head.
    pub fn report_metrics(&self, metrics: Vec<crate::protocol::UserMetric>) -> bool {
        self.is_connected() && self.to_head(ToHead::UserMetrics(metrics))
    }

    /// Sends one message on the ordered control stream. Reference-count updates wait
    /// in `ref_outbox` (merged with the ones before) until another message goes, the
    /// outbox is full, or [`REF_FLUSH_DELAY`] passes; the order of all messages is kept.
    fn to_head(&self, msg: ToHead) -> bool {
        self.to_head_noting(msg, |_| {})
    }

    /// [`Self::to_head`], changing the lineage (in a driver that keeps one) under the
    /// same lock, so that a reconnect's inventory has either both or neither.
    fn to_head_noting(&self, msg: ToHead, note: impl FnOnce(&mut Lineage)) -> bool {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.outgoing.lock().unwrap_or_else(|p| p.into_inner());
        let out = &mut *guard;
        if let Some(lineage) = out.lineage.as_mut() {
            note(lineage);
        }
        match msg {
            ToHead::AddRefs(ids) => out.refs.add(true, ids),
            ToHead::RemoveRefs(ids) => out.refs.add(false, ids),
            // Sent under the lock, so that another thread's message cannot slip in
            // between the outbox and this one.
            other => return Self::flush_outbox(out) && out.head.send(other),
        }
        if out.refs.count >= REF_BATCH {
            return Self::flush_outbox(out);
        }
        if !out.refs.flush_scheduled {
            out.refs.flush_scheduled = true;
            let this = self.this.get().cloned();
            self.rt.spawn(async move {
                tokio::time::sleep(REF_FLUSH_DELAY).await;
                if let Some(cw) = this.and_then(|w| w.upgrade()) {
                    cw.flush_refs();
                }
            });
        }
        !out.head.is_closed()
    }

    /// How many messages this process has sent the head so far.
    pub fn messages_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until the head has handled everything this process sent it (up to 30 s;
    /// false if it did not answer in time or is gone).
    pub fn sync_with_head(&self) -> bool {
        let n = self.next_query.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        self.syncs.insert(n, tx);
        if !self.to_head(ToHead::Sync(n)) {
            self.syncs.remove(&n);
            return false;
        }
        let answered = rx.recv_timeout(Duration::from_secs(30)).is_ok();
        self.syncs.remove(&n);
        answered
    }

    /// Says that this process runs node `node` with `store` (local mode).
    pub fn set_local_store(&self, node: NodeId, store: Arc<crate::object_store::ObjectStore>) {
        let _ = self.local_store.set((node, store));
    }

    /// Whether the head is still connected.
    pub fn is_connected(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// The job this process works for.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// The runtime its background tasks run on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }

    // -- references -------------------------------------------------------

    /// Submits a task; the caller has already counted its return handle.
    pub fn submit(&self, spec: TaskSpec) {
        self.slots.entry(spec.return_id).or_default();
        let spec = Arc::new(spec);
        // Only a process that reconnects keeps lineage (see `lineage`): the same
        // allocation.
        let kept = self.reconnect.is_some().then(|| spec.clone());
        self.to_head_noting(ToHead::SubmitTasks(vec![spec]), |lineage| {
            if let Some(spec) = kept {
                lineage.submitted(spec);
            }
        });
    }

    /// Records, in this process only, that `id` is the error `err` (a call that could
    /// not even be submitted).
    pub fn fail_locally(&self, id: ObjectId, err: TaskError) {
        self.slots.entry(id).or_default().location = Some(ObjectLocation::Error(Box::new(err)));
    }

    /// The link to this worker's node, in worker processes.
    pub fn node_link(&self) -> Option<&NodeLink> {
        self.node.as_ref().map(|(l, _)| l)
    }

    /// Asks the head for the live actor named `name`. On success the head counts this
    /// process as holding the actor's handle object (the caller wraps it in a handle).
    pub fn get_actor(&self, name: &str) -> Result<ActorInfo, GetError> {
        if !self.is_connected() {
            return Err(self.down_error());
        }
        let request = self.next_query.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        self.actor_queries.insert(request, (name.to_string(), tx));
        self.to_head(ToHead::GetActor {
            request,
            name: name.to_string(),
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(info)) => {
                let mut out = self.outgoing.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(lineage) = out.lineage.as_mut() {
                    lineage.actor_handle(info.handle);
                }
                Ok(info)
            }
            Ok(Err(reason)) => Err(GetError::ActorNotFound {
                name: name.to_string(),
                reason,
            }),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                self.actor_queries.remove(&request);
                Err(GetError::Timeout(Duration::from_secs(60)))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(self.down_error()),
        }
    }

    /// Asks the head to end `actor` (and, with `no_restart` false, re-create it).
    pub fn kill_actor(&self, actor: ActorId, no_restart: bool) -> Result<(), GetError> {
        if !self.is_connected() {
            return Err(self.down_error());
        }
        self.to_head(ToHead::KillActor { actor, no_restart });
        Ok(())
    }

    // -- readiness ----------------------------------------------------------

    /// Fresh task id (for callers building specs).
    pub fn new_task_id(&self) -> TaskId {
        TaskId::random()
    }
}
