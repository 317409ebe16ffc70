//! Runs the head's state machine and serves control streams into it.

use super::state::{HeadEvent, HeadSettings, HeadState};
use crate::binaries::BinaryCache;
use crate::ids::PeerId;
use crate::protocol::{FromHead, Hello, PeerRole, ToHead, Welcome};
use crate::transport::{
    spawn_writer, ControlReader, ControlStream, DirectSink, FrameReader, HandshakeError,
    InProcessHead, MessageSender,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

/// Most events the head takes in one go before it schedules.
const BATCH: usize = 1024;

/// A handle to the running head, used by the listener to hand it connections.
#[derive(Clone)]
pub struct HeadHandle {
    events: mpsc::UnboundedSender<HeadEvent>,
    binaries: BinaryCache,
}

impl InProcessHead for HeadHandle {
    fn open(
        &self,
        hello: Hello,
    ) -> Pin<Box<dyn Future<Output = Result<ControlStream, HandshakeError>> + Send + '_>> {
        Box::pin(self.open_in_process(hello))
    }
}

/// Where an in-process peer's messages go: straight into the head's events. When the
/// peer drops its last sender, the head learns it has gone, as when a stream closes.
struct HeadInbox {
    peer: PeerId,
    events: mpsc::UnboundedSender<HeadEvent>,
}

impl DirectSink<ToHead> for HeadInbox {
    fn deliver(&self, msg: ToHead) -> bool {
        self.events.send(HeadEvent::Message(self.peer, msg)).is_ok()
    }
    fn is_closed(&self) -> bool {
        self.events.is_closed()
    }
}

impl Drop for HeadInbox {
    fn drop(&mut self) {
        let _ = self
            .events
            .send(HeadEvent::Disconnected(self.peer, "closed by peer".into()));
    }
}

/// Starts the head's state machine on the current tokio runtime.
pub fn start_head(settings: HeadSettings, binaries: BinaryCache) -> HeadHandle {
    let (events, mut rx) = mpsc::unbounded_channel();
    let tick_every = (settings.node_timeout / 10).max(Duration::from_millis(50));
    let targets = settings
        .metrics_targets_file
        .clone()
        .map(spawn_targets_writer);
    let mut state = HeadState::new(settings);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        let mut membership = None;
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            state.handle_batch(batch.drain(..));
            if let Some(targets) = &targets {
                let version = state.membership_version();
                if membership != Some(version) {
                    membership = Some(version);
                    let _ = targets.send(state.metrics_targets());
                }
            }
        }
    });
    let ticks = events.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick_every);
        loop {
            interval.tick().await;
            if ticks.send(HeadEvent::Tick).is_err() {
                break;
            }
        }
    });
    HeadHandle { events, binaries }
}

/// Keeps `path` listing the latest metrics targets sent; writes happen off the
/// head's loop, and a burst of changes writes only the last.
fn spawn_targets_writer(
    path: std::path::PathBuf,
) -> tokio::sync::watch::Sender<Vec<std::net::SocketAddr>> {
    let (tx, mut rx) = tokio::sync::watch::channel(Vec::new());
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let targets = rx.borrow_and_update().clone();
            let path = path.clone();
            let written = tokio::task::spawn_blocking(move || {
                crate::metrics::write_service_discovery(&path, &targets)
            })
            .await;
            if let Ok(Err(e)) = written {
                tracing::warn!("could not write the metrics targets file: {e}");
            }
        }
    });
    tx
}

impl HeadHandle {
    /// Adds the head's samples to `set` (for a metrics scrape); an empty set if the
    /// head has stopped.
    pub async fn metrics(&self, set: crate::metrics::MetricSet) -> crate::metrics::MetricSet {
        let (reply, answer) = oneshot::channel();
        if self.events.send(HeadEvent::Metrics(set, reply)).is_err() {
            return crate::metrics::MetricSet::default();
        }
        answer.await.unwrap_or_default()
    }

    /// A copy of the rows `query` asks for; `None` if the head has stopped.
    pub async fn state(&self, query: super::view::StateQuery) -> Option<super::view::StateRows> {
        let (reply, answer) = oneshot::channel();
        self.events.send(HeadEvent::State(query, reply)).ok()?;
        answer.await.ok()
    }

    /// Asks `node` about its machine (its logs, its host's use); `None` if the node
    /// is not live, goes before answering, or the head has stopped.
    pub async fn ask_node(
        &self,
        node: crate::ids::NodeId,
        request: crate::protocol::AgentRequest,
    ) -> Option<crate::protocol::AgentReply> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(HeadEvent::AskNode(node, request, reply))
            .ok()?;
        answer.await.ok()
    }

    /// Tells the head that `job`'s driver process has ended (its supervisor saw it
    /// die), so the job ends and its workers and objects are released now rather
    /// than when its connection times out.
    pub fn driver_process_ended(&self, job: crate::ids::JobId, reason: String) {
        let _ = self.events.send(HeadEvent::DriverProcessEnded(job, reason));
    }

    /// Holds `demand` on the head's node for job `submission_id`'s entrypoint,
    /// out of the tasks' reach, until [`Self::release_entrypoint`].
    pub fn hold_for_entrypoint(
        &self,
        submission_id: String,
        demand: crate::resources::ResourceSet,
    ) {
        let _ = self
            .events
            .send(HeadEvent::HoldForEntrypoint(submission_id, demand));
    }

    /// Job `submission_id`'s entrypoint ended: what it held is free for tasks.
    pub fn release_entrypoint(&self, submission_id: String) {
        let _ = self
            .events
            .send(HeadEvent::ReleaseEntrypoint(submission_id));
    }

    /// Joins a peer of this same process (see [`InProcessHead`]).
    async fn open_in_process(&self, hello: Hello) -> Result<ControlStream, HandshakeError> {
        let stopped = || HandshakeError::Protocol("the head has stopped".into());
        let peer = PeerId::random();
        let (to_peer, from_head) = mpsc::unbounded_channel::<FromHead>();
        let needs_binary = match &hello.role {
            PeerRole::Driver { binary, .. } => !self.binaries.contains(binary),
            _ => false,
        };
        let (reply, accepted) = oneshot::channel();
        let event = HeadEvent::Connected {
            peer,
            role: hello.role,
            sender: MessageSender::direct(Arc::new(to_peer)),
            needs_binary,
            reply,
        };
        self.events.send(event).map_err(|_| stopped())?;
        match accepted.await.map_err(|_| stopped())? {
            Welcome::Accepted { .. } => {}
            Welcome::Rejected(reason) => return Err(HandshakeError::Rejected(reason)),
        }
        // The head sent its welcome down the sender before answering.
        let mut reader = ControlReader::InProcess(from_head);
        let welcome = match reader.next().await? {
            Some(FromHead::Welcome(welcome)) => welcome,
            other => {
                return Err(HandshakeError::Protocol(format!(
                    "expected a welcome, got {other:?}"
                )))
            }
        };
        let inbox = HeadInbox {
            peer,
            events: self.events.clone(),
        };
        Ok(ControlStream {
            welcome,
            sender: MessageSender::direct(Arc::new(inbox)),
            reader,
        })
    }

    /// The head's binary cache (drivers upload into it, nodes fetch from it).
    pub fn binaries(&self) -> &BinaryCache {
        &self.binaries
    }

    /// Serves one control stream until it ends.
    pub async fn serve_control<W, R>(
        &self,
        conn: Option<quinn::Connection>,
        hello: Hello,
        send: W,
        recv: R,
    ) where
        W: AsyncWrite + Unpin + Send + 'static,
        R: AsyncRead + Unpin,
    {
        let remote = conn
            .as_ref()
            .map(|c| c.remote_address().to_string())
            .unwrap_or_else(|| "this process".into());
        let peer = PeerId::random();
        let needs_binary = match &hello.role {
            PeerRole::Driver { binary, .. } => {
                // May hash the cached file (once per process): off the I/O thread.
                let (cache, binary) = (self.binaries.clone(), binary.clone());
                !tokio::task::spawn_blocking(move || cache.contains(&binary))
                    .await
                    .unwrap_or(false)
            }
            _ => false,
        };
        let sender = spawn_writer::<_, FromHead>(send);
        let (reply, accepted) = oneshot::channel();
        let role_binary = match &hello.role {
            PeerRole::Driver { binary, .. } => Some(binary.clone()),
            _ => None,
        };
        let role = hello.role;
        let event = HeadEvent::Connected {
            peer,
            role,
            sender: sender.clone(),
            needs_binary,
            reply,
        };
        if self.events.send(event).is_err() {
            return;
        }
        match accepted.await {
            Ok(crate::protocol::Welcome::Accepted { .. }) => {}
            Ok(crate::protocol::Welcome::Rejected(reason)) => {
                tracing::warn!(%remote, "refused a peer: {reason}");
                sender.send(FromHead::Welcome(crate::protocol::Welcome::Rejected(
                    reason,
                )));
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
            Err(_) => return,
        }
        // A live job's binary stays in the cache while its driver is connected.
        let pinned = match &role_binary {
            Some(binary) => {
                self.binaries.pin(binary);
                self.binaries.touch(binary);
                Some(binary.clone())
            }
            None => None,
        };
        let mut reader = FrameReader::<_, ToHead>::new(recv);
        let reason = loop {
            match reader.next().await {
                Ok(Some(msg)) => {
                    if self.events.send(HeadEvent::Message(peer, msg)).is_err() {
                        break "head stopped".to_string();
                    }
                }
                Ok(None) => break "closed by peer".to_string(),
                // The connection ended (the peer exited or went silent): no bad frame.
                Err(crate::protocol::ProtocolError::Io(e)) => {
                    break format!("connection lost: {e}")
                }
                Err(e) => {
                    tracing::warn!(%remote, "closing the connection of a peer that sent a bad frame: {e}");
                    if let Some(conn) = &conn {
                        conn.close(1u32.into(), b"protocol error");
                    }
                    break format!("protocol error: {e}");
                }
            }
        };
        if let Some(binary) = pinned {
            self.binaries.unpin(&binary);
        }
        let _ = self.events.send(HeadEvent::Disconnected(peer, reason));
    }
}
