//! The core worker: the part of every driver and worker process that talks to the
//! cluster. It submits tasks, counts this process's references, learns when objects are
//! ready and fetches their values (Ray's core_worker).
//!
//! Architecture invariant: the core worker speaks to the head over one ordered control
//! stream, so that for any object this process's messages (submit, nest, add, remove)
//! arrive in the order they were made. It never decodes values into user types: that
//! is the API layer's job.

pub mod node_link;
mod refs;
mod spin;

pub use refs::{collect_nested, note_nested};

use crate::ids::ActorId;
use crate::ids::{JobId, NodeId, ObjectId, PeerId, TaskId};
use crate::protocol::{
    ActorInfo, FromHead, NodeAddress, ObjectLocation, TaskError, TaskSpec, ToHead,
    INLINE_OBJECT_MAX,
};
use crate::transfer::{pull_object, push_object};
use crate::transport::{ControlReader, Endpoint, MessageSender, PeerConnections};
use bytes::Bytes;
use dashmap::DashMap;
use node_link::NodeLink;
use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
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

/// Most reference-count updates held back before they are sent.
const REF_BATCH: usize = 4096;
/// Longest a reference-count update is held back.
const REF_FLUSH_DELAY: Duration = Duration::from_millis(1);

/// Reference-count updates waiting to be sent, as runs of adds and removes in order.
#[derive(Default)]
struct RefOutbox {
    messages: Vec<ToHead>,
    count: usize,
    flush_scheduled: bool,
}

impl RefOutbox {
    /// Appends `ids` (added if `add`, else removed) to the last run of the same kind,
    /// or starts a run.
    fn add(&mut self, add: bool, ids: Vec<ObjectId>) {
        self.count += ids.len();
        match (self.messages.last_mut(), add) {
            (Some(ToHead::AddRefs(run)), true) | (Some(ToHead::RemoveRefs(run)), false) => {
                run.extend(ids)
            }
            (_, true) => self.messages.push(ToHead::AddRefs(ids)),
            (_, false) => self.messages.push(ToHead::RemoveRefs(ids)),
        }
    }
}

/// A store's refusal as the error a caller sees.
fn store_error(id: ObjectId, e: crate::object_store::StoreError) -> GetError {
    match e {
        crate::object_store::StoreError::Full { .. } => GetError::StoreFull(e.to_string()),
        other => GetError::Unavailable {
            id,
            reason: other.to_string(),
        },
    }
}

/// A node's refusal of a worker's value as the error a caller sees.
fn put_error(id: ObjectId, e: crate::protocol::PutError) -> GetError {
    match e {
        crate::protocol::PutError::StoreFull(reason) => GetError::StoreFull(reason),
        crate::protocol::PutError::Failed(reason) => GetError::Unavailable { id, reason },
    }
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

/// The core worker of this process.
pub struct CoreWorker {
    rt: tokio::runtime::Handle,
    head_conn: quinn::Connection,
    head: MessageSender<ToHead>,
    job: JobId,
    head_node: NodeId,
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
    /// Reference-count updates not sent yet: runs of them travel as one message
    /// (getting a value holding 10k references would otherwise send 20k messages).
    ref_outbox: std::sync::Mutex<RefOutbox>,
    /// This worker, for the task that flushes `ref_outbox`.
    this: std::sync::OnceLock<std::sync::Weak<CoreWorker>>,
    /// `sync_with_head` calls awaiting the head's answer.
    syncs: DashMap<u64, std::sync::mpsc::Sender<()>>,
    /// `get_actor` questions awaiting the head's answer.
    actor_queries: DashMap<u64, std::sync::mpsc::Sender<Result<ActorInfo, String>>>,
    next_query: AtomicU64,
}

impl CoreWorker {
    /// Starts the core worker on an accepted control stream; `rt` runs its background tasks.
    pub fn start(
        rt: tokio::runtime::Handle,
        conn: Connection,
        node: Option<(NodeLink, NodeId)>,
    ) -> Arc<Self> {
        let cw = Arc::new(Self {
            rt: rt.clone(),
            head_conn: conn.head_conn,
            head: conn.head,
            job: conn.job,
            head_node: conn.head_node,
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
            ref_outbox: std::sync::Mutex::new(RefOutbox::default()),
            this: std::sync::OnceLock::new(),
            syncs: DashMap::new(),
            local_store: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&cw);
        let _ = cw.this.set(weak.clone());
        let mut reader = conn.reader;
        rt.spawn(async move {
            let reason = loop {
                match reader.next().await {
                    Ok(Some(msg)) => match weak.upgrade() {
                        Some(cw) => cw.on_message(msg),
                        None => return,
                    },
                    Ok(None) => break "the head closed the connection".to_string(),
                    Err(e) => break format!("lost the head: {e}"),
                }
            };
            if let Some(cw) = weak.upgrade() {
                cw.cluster_down(reason);
            }
        });
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
                if let Some((_, tx)) = self.actor_queries.remove(&request) {
                    let _ = tx.send(result);
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
        self.head_conn.close(0u32.into(), b"shutdown");
        self.cluster_down("rayish::shutdown was called".into());
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
        self.to_head(ToHead::Goodbye);
        let (lock, answered) = &self.farewell;
        let said = lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = answered.wait_timeout_while(said, Duration::from_secs(2), |said| !*said);
    }

    /// Sends one message on the ordered control stream. Reference-count updates wait
    /// in `ref_outbox` (merged with the ones before) until another message goes, the
    /// outbox is full, or [`REF_FLUSH_DELAY`] passes; the order of all messages is kept.
    fn to_head(&self, msg: ToHead) -> bool {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let mut outbox = self.ref_outbox.lock().unwrap_or_else(|p| p.into_inner());
        match msg {
            ToHead::AddRefs(ids) => outbox.add(true, ids),
            ToHead::RemoveRefs(ids) => outbox.add(false, ids),
            // Sent under the lock, so that another thread's message cannot slip in
            // between the outbox and this one.
            other => return self.flush_outbox(&mut outbox) && self.head.send(other),
        }
        if outbox.count >= REF_BATCH {
            return self.flush_outbox(&mut outbox);
        }
        if !outbox.flush_scheduled {
            outbox.flush_scheduled = true;
            let this = self.this.get().cloned();
            self.rt.spawn(async move {
                tokio::time::sleep(REF_FLUSH_DELAY).await;
                if let Some(cw) = this.and_then(|w| w.upgrade()) {
                    cw.flush_refs();
                }
            });
        }
        !self.head.is_closed()
    }

    fn flush_outbox(&self, outbox: &mut RefOutbox) -> bool {
        outbox.count = 0;
        let mut ok = true;
        for msg in outbox.messages.drain(..) {
            ok &= self.head.send(msg);
        }
        ok
    }

    /// Sends the reference-count updates waiting in the outbox (the delayed flush;
    /// while one is pending no other is scheduled, so a process alternating puts and
    /// drops spawns one per [`REF_FLUSH_DELAY`], not one per drop).
    fn flush_refs(&self) {
        let mut outbox = self.ref_outbox.lock().unwrap_or_else(|p| p.into_inner());
        outbox.flush_scheduled = false;
        self.flush_outbox(&mut outbox);
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

    /// A handle made here for an object the head already counts us as holding
    /// (a submitted task's return, a put).
    pub fn ref_created(&self, id: ObjectId) {
        *self.refs.entry(id).or_insert(0) += 1;
    }

    /// A handle arrived inside a value: tell the head we hold it, if we did not.
    pub fn ref_received(&self, id: ObjectId) {
        let mut count = self.refs.entry(id).or_insert(0);
        if *count == 0 {
            self.to_head(ToHead::AddRefs(vec![id]));
        }
        *count += 1;
    }

    /// A handle was cloned.
    pub fn ref_cloned(&self, id: ObjectId) {
        *self.refs.entry(id).or_insert(0) += 1;
    }

    /// A handle was dropped.
    pub fn ref_dropped(&self, id: ObjectId) {
        let gone = match self.refs.get_mut(&id) {
            Some(mut count) => {
                *count = count.saturating_sub(1);
                *count == 0
            }
            None => false,
        };
        if gone {
            self.refs.remove_if(&id, |_, c| *c == 0);
            self.slots.remove(&id);
            self.to_head(ToHead::RemoveRefs(vec![id]));
        }
    }

    /// References this process holds now (for tests and leak checks).
    pub fn held_refs(&self) -> usize {
        self.refs.len()
    }

    // -- submission -------------------------------------------------------

    /// Submits a task; the caller has already counted its return handle.
    pub fn submit(&self, spec: TaskSpec) {
        self.slots.entry(spec.return_id).or_default();
        self.to_head(ToHead::SubmitTasks(vec![spec]));
    }

    /// Records, in this process only, that `id` is the error `err` (a call that could
    /// not even be submitted).
    pub fn fail_locally(&self, id: ObjectId, err: TaskError) {
        self.slots.entry(id).or_default().location = Some(ObjectLocation::Error(err));
    }

    /// The link to this worker's node, in worker processes.
    pub fn node_link(&self) -> Option<&NodeLink> {
        self.node.as_ref().map(|(l, _)| l)
    }

    /// Declares that `outer` holds `inner` (before any of our handles to `inner` drop).
    pub fn nest(&self, outer: ObjectId, inner: Vec<ObjectId>) {
        if !inner.is_empty() {
            self.to_head(ToHead::Nest { outer, inner });
        }
    }

    /// Stores an encoded value as a new object held by this process.
    pub fn put(&self, id: ObjectId, value: Vec<u8>) -> Result<(), GetError> {
        if !self.is_connected() {
            return Err(self.down_error());
        }
        if value.len() <= INLINE_OBJECT_MAX {
            self.slots.entry(id).or_default().location =
                Some(ObjectLocation::Inline(value.clone()));
            self.to_head(ToHead::PutInline { id, value });
            return Ok(());
        }
        let size = value.len() as u64;
        let stored_on = match (&self.node, self.local_store.get()) {
            (None, Some((node, store))) => {
                store
                    .insert(id, Bytes::from(value))
                    .map_err(|e| store_error(id, e))?;
                *node
            }
            (Some((link, node)), _) => {
                link.put(id, value).map_err(|e| put_error(id, e))?;
                *node
            }
            (None, None) => {
                let conn = self.head_conn.clone();
                self.rt
                    .block_on(async move { push_object(&conn, id, &value).await })
                    .map_err(|e| match e {
                        crate::transfer::TransferError::StoreFull(reason) => {
                            GetError::StoreFull(reason)
                        }
                        other => GetError::Unavailable {
                            id,
                            reason: other.to_string(),
                        },
                    })?;
                self.head_node
            }
        };
        self.slots.entry(id).or_default();
        self.to_head(ToHead::PutStored {
            id,
            node: stored_on,
            size,
        });
        Ok(())
    }

    /// Stores as a new object held by this process a value of `len` encoded bytes that
    /// `fill` writes. A large value on a node (this process's own, or its worker's
    /// node) is written straight into the store's shared memory, with no intermediate
    /// buffer; elsewhere this is [`Self::put`].
    pub fn put_with(
        &self,
        id: ObjectId,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
    ) -> Result<(), GetError> {
        if !self.is_connected() {
            return Err(self.down_error());
        }
        let stored_on = match (&self.node, self.local_store.get()) {
            (None, Some((node, store))) if len > INLINE_OBJECT_MAX => {
                let mut value = store.new_value(id, len).map_err(|e| store_error(id, e))?;
                if let Err(e) = fill(value.bytes_mut()) {
                    value.discard();
                    return Err(GetError::Encode(e));
                }
                store
                    .insert_written(id, value)
                    .map_err(|e| store_error(id, e))?;
                *node
            }
            (Some((link, node)), _) if len > INLINE_OBJECT_MAX => {
                link.put_with(id, len, fill).map_err(|e| put_error(id, e))?;
                *node
            }
            _ => {
                let mut value = vec![0; len];
                fill(&mut value).map_err(GetError::Encode)?;
                return self.put(id, value);
            }
        };
        self.slots.entry(id).or_default();
        self.to_head(ToHead::PutStored {
            id,
            node: stored_on,
            size: len as u64,
        });
        Ok(())
    }

    // -- actors -------------------------------------------------------------

    /// Asks the head for the live actor named `name`. On success the head counts this
    /// process as holding the actor's handle object (the caller wraps it in a handle).
    pub fn get_actor(&self, name: &str) -> Result<ActorInfo, GetError> {
        if !self.is_connected() {
            return Err(self.down_error());
        }
        let request = self.next_query.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        self.actor_queries.insert(request, tx);
        self.to_head(ToHead::GetActor {
            request,
            name: name.to_string(),
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(info)) => Ok(info),
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

    /// Registers `tx` to hear when `id` is ready; returns the location if it already is.
    /// Whether `id` is ready; if not, `tx` will hear when it is, and `id` is added to
    /// `subscribe` if the head has not been asked yet (the caller sends them in one go).
    fn watch(
        &self,
        id: ObjectId,
        tx: &mpsc::UnboundedSender<ObjectId>,
        subscribe: &mut Vec<ObjectId>,
    ) -> bool {
        let mut slot = self.slots.entry(id).or_default();
        if slot.location.is_some() {
            return true;
        }
        // Waiters of earlier waits that returned are gone: drop them here, or a list
        // waited on again and again (Ray's "wait 1k refs") grows a sender per wait.
        slot.waiters.retain(|w| !w.is_closed());
        slot.waiters.push(tx.clone());
        if !slot.subscribed {
            slot.subscribed = true;
            subscribe.push(id);
        }
        false
    }

    fn subscribe(&self, ids: Vec<ObjectId>) {
        if !ids.is_empty() {
            self.to_head(ToHead::Subscribe(ids));
        }
    }

    fn ready_location(&self, id: &ObjectId) -> Option<ObjectLocation> {
        self.slots.get(id).and_then(|s| s.location.clone())
    }

    /// Runs `f` while telling the head that the current task (if any) is blocked.
    fn blocking<R>(&self, f: impl FnOnce() -> R) -> R {
        let task = CURRENT_TASK.with(|c| c.get()).map(|(t, _)| t);
        if let Some(t) = task {
            self.announce_blocked(t, true);
        }
        let r = f();
        if let Some(t) = task {
            self.announce_blocked(t, false);
        }
        r
    }

    /// Tells the head and this worker's node that `task` blocked (or resumed), so both
    /// lend (or take back) its CPU.
    fn announce_blocked(&self, task: TaskId, blocked: bool) {
        let to_head = if blocked {
            ToHead::TaskBlocked(task)
        } else {
            ToHead::TaskUnblocked(task)
        };
        self.to_head(to_head);
        if let Some(link) = self.node_link() {
            link.send(crate::protocol::FromWorker::Blocked {
                task_id: task,
                blocked,
            });
            link.set_blocked(blocked);
            // The blocked thread waits on the head: another must read the node's
            // socket meanwhile, to give back a follower sent behind this task.
            if blocked && link.needs_blocked_reader() {
                let this = self.this.get().and_then(std::sync::Weak::upgrade);
                let spawned = this.map(|cw| {
                    std::thread::Builder::new()
                        .name("rayish-blocked-reader".into())
                        .spawn(move || {
                            if let Some(link) = cw.node_link() {
                                link.read_while_blocked();
                            }
                        })
                });
                if !matches!(spawned, Some(Ok(_))) {
                    link.no_blocked_reader();
                }
            }
        }
    }

    /// Waits until `id` is ready (or `deadline` passes) and returns where it is.
    fn wait_one(
        &self,
        id: ObjectId,
        deadline: Option<Instant>,
        timeout: Duration,
    ) -> Result<ObjectLocation, GetError> {
        self.wait_until(&[id], 1, deadline)?;
        self.ready_location(&id).ok_or(GetError::Timeout(timeout))
    }

    /// The encoded value of `id`, waiting up to `timeout` (forever if `None`).
    pub fn get(&self, id: ObjectId, timeout: Option<Duration>) -> Result<Bytes, GetError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let shown = timeout.unwrap_or(Duration::MAX);
        let mut failures = 0u32;
        loop {
            match self.wait_one(id, deadline, shown)? {
                ObjectLocation::Inline(v) => return Ok(Bytes::from(v)),
                ObjectLocation::Error(e) => return Err(GetError::Task(e)),
                ObjectLocation::Nodes(holders) => match self.fetch(id, holders) {
                    Ok(v) => return Ok(v),
                    Err(reason) => {
                        // The holder may have just died; ask the head again, which by
                        // then re-makes the object or says it is lost.
                        failures += 1;
                        if failures > 50 || deadline.is_some_and(|d| Instant::now() >= d) {
                            return Err(GetError::Unavailable { id, reason });
                        }
                        if let Some(mut slot) = self.slots.get_mut(&id) {
                            slot.location = None;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                },
            }
        }
    }

    fn fetch(&self, id: ObjectId, holders: Vec<NodeAddress>) -> Result<Bytes, String> {
        if let Some((link, _)) = &self.node {
            return self.blocking(|| link.get(id, holders));
        }
        if let Some((node, store)) = self.local_store.get() {
            if holders.iter().any(|h| h.node == *node) {
                if let Some(v) = store.get(&id) {
                    return Ok(v);
                }
            }
        }
        let mut last = "no live node holds it".to_string();
        for holder in holders {
            let result = self.blocking(|| {
                self.rt.block_on(async {
                    let conn = self.peer(holder.address).await?;
                    pull_object(&conn, id).await.map_err(|e| e.to_string())
                })
            });
            match result {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn peer(&self, addr: SocketAddr) -> Result<quinn::Connection, String> {
        if addr == self.head_conn.remote_address() {
            return Ok(self.head_conn.clone());
        }
        self.peers.get(addr).await.map_err(|e| e.to_string())
    }

    /// Waits until `num_returns` of `ids` are ready or `timeout` passes; returns the
    /// ready flags, in order.
    pub fn wait(
        &self,
        ids: &[ObjectId],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<bool>, GetError> {
        self.wait_until(ids, num_returns, timeout.map(|t| Instant::now() + t))
    }

    /// [`Self::wait`] with an absolute deadline.
    fn wait_until(
        &self,
        ids: &[ObjectId],
        num_returns: usize,
        deadline: Option<Instant>,
    ) -> Result<Vec<bool>, GetError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut ready = vec![false; ids.len()];
        let mut n_ready = 0;
        // Where each not-yet-ready id sits in `ids` (an id may appear twice).
        let mut positions: HashMap<ObjectId, Vec<usize>> = HashMap::new();
        let mut subscribe = Vec::new();
        let want = num_returns.min(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if self.watch(*id, &tx, &mut subscribe) {
                ready[i] = true;
                n_ready += 1;
                if n_ready == want {
                    // Enough: the rest need not be looked at (Ray's `wait` returns at
                    // most `num_returns` ready, the first ones in order).
                    break;
                }
            } else {
                positions.entry(*id).or_default().push(i);
            }
        }
        self.subscribe(subscribe);
        if n_ready >= want {
            return Ok(ready);
        }
        let mut mark = |id: ObjectId, ready: &mut Vec<bool>, n_ready: &mut usize| {
            for i in positions.remove(&id).unwrap_or_default() {
                ready[i] = true;
                *n_ready += 1;
            }
        };
        // Poll a little first when this thread's waits are short (see `spin`): the
        // answer often comes before parking and being woken would.
        let started = Instant::now();
        let until = started + spin::budget(deadline.map(|d| d.saturating_duration_since(started)));
        while Instant::now() < until && self.is_connected() {
            while let Ok(id) = rx.try_recv() {
                mark(id, &mut ready, &mut n_ready);
            }
            if n_ready >= want {
                spin::record(started.elapsed());
                return Ok(ready);
            }
            std::hint::spin_loop();
        }
        let waited = self.blocking(|| loop {
            let wake = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    self.rt
                        .block_on(async { tokio::time::timeout(left, rx.recv()).await })
                }
                None => Ok(self.rt.block_on(rx.recv())),
            };
            match wake {
                Err(_) => return Ok(ready.clone()),
                Ok(None) => return Err(self.down_error()),
                Ok(Some(id)) => {
                    // Take everything that arrived together: one wake-up for a batch.
                    mark(id, &mut ready, &mut n_ready);
                    while let Ok(id) = rx.try_recv() {
                        mark(id, &mut ready, &mut n_ready);
                    }
                }
            }
            if !self.is_connected() {
                return Err(self.down_error());
            }
            if n_ready >= want {
                return Ok(ready.clone());
            }
        });
        spin::record(started.elapsed());
        waited
    }

    /// Fresh task id (for callers building specs).
    pub fn new_task_id(&self) -> TaskId {
        TaskId::random()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_updates_merge_into_runs_in_order() {
        let mut outbox = RefOutbox::default();
        outbox.add(true, vec![ObjectId(1), ObjectId(2)]);
        outbox.add(true, vec![ObjectId(3)]);
        outbox.add(false, vec![ObjectId(1)]);
        outbox.add(true, vec![ObjectId(1)]);
        outbox.add(false, vec![ObjectId(2)]);
        assert_eq!(outbox.count, 6);
        let runs: Vec<(bool, Vec<u128>)> = outbox
            .messages
            .iter()
            .map(|m| match m {
                ToHead::AddRefs(v) => (true, v.iter().map(|i| i.0).collect()),
                ToHead::RemoveRefs(v) => (false, v.iter().map(|i| i.0).collect()),
                other => panic!("not a reference update: {other:?}"),
            })
            .collect();
        // An add after a remove of the same object stays after it.
        assert_eq!(
            runs,
            vec![
                (true, vec![1, 2, 3]),
                (false, vec![1]),
                (true, vec![1]),
                (false, vec![2])
            ]
        );
    }
}
