//! Runs the head's state machine and serves control streams into it.

use super::state::{HeadEvent, HeadSettings, HeadState};
use crate::binaries::BinaryCache;
use crate::ids::PeerId;
use crate::protocol::{read_frame, FromHead, Hello, PeerRole, StreamOpen, ToHead};
use crate::transport::{spawn_writer, FrameReader};
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

/// Starts the head's state machine on the current tokio runtime.
pub fn start_head(settings: HeadSettings, binaries: BinaryCache) -> HeadHandle {
    let (events, mut rx) = mpsc::unbounded_channel();
    let tick_every = (settings.node_timeout / 10).max(Duration::from_millis(50));
    let mut state = HeadState::new(settings);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            state.handle_batch(batch.drain(..));
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

impl HeadHandle {
    /// A stream to this head from inside the same process: an in-memory pipe served
    /// exactly like a QUIC control stream (the head process's own node uses it, which
    /// saves it encrypting and sending every message to itself over UDP).
    pub fn connect_in_process(&self) -> tokio::io::DuplexStream {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let head = self.clone();
        tokio::spawn(async move {
            let (mut r, w) = tokio::io::split(theirs);
            match read_frame::<_, StreamOpen>(&mut r).await {
                Ok(Some(StreamOpen::Control(hello))) => head.serve_control(None, hello, w, r).await,
                other => tracing::error!("in-process control stream opened with {other:?}"),
            }
        });
        ours
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
            PeerRole::Driver { binary, .. } => !self.binaries.contains(binary),
            _ => false,
        };
        let sender = spawn_writer::<_, FromHead>(send);
        let (reply, accepted) = oneshot::channel();
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
        let mut reader = FrameReader::<_, ToHead>::new(recv);
        let reason = loop {
            match reader.next().await {
                Ok(Some(msg)) => {
                    if self.events.send(HeadEvent::Message(peer, msg)).is_err() {
                        break "head stopped".to_string();
                    }
                }
                Ok(None) => break "closed by peer".to_string(),
                Err(e) => {
                    tracing::warn!(%remote, "closing the connection of a peer that sent a bad frame: {e}");
                    if let Some(conn) = &conn {
                        conn.close(1u32.into(), b"protocol error");
                    }
                    break format!("protocol error: {e}");
                }
            }
        };
        let _ = self.events.send(HeadEvent::Disconnected(peer, reason));
    }
}
