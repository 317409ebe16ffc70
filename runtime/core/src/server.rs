//! A process's QUIC listener: accepts connections and routes each stream to the service
//! it opens: control streams to the head, transfer streams to the object store or the
//! binary cache.
//!
//! Architecture invariant: one misbehaving peer (bad certificate, bad frame, early
//! close) costs only its own connection or stream; the accept loop never stops.

use crate::binaries::BinaryCache;
use crate::head::HeadHandle;
use crate::object_store::ObjectStore;
use crate::protocol::{read_frame, write_frame, FromHead, StreamOpen, Welcome};
use crate::transport::log_limit::LogLimiter;
use crate::transport::{describe_incoming_failure, Endpoint};
use std::sync::Arc;
use std::time::Duration;

/// Refused handshakes and bad streams: one line per peer address per 10 s.
static PEER_WARNINGS: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// The services a process offers to its peers.
#[derive(Clone, Default)]
pub struct Services {
    /// Present in the head process.
    pub head: Option<HeadHandle>,
    /// Present in node processes (the head is one too).
    pub store: Option<Arc<ObjectStore>>,
}

impl Services {
    fn binaries(&self) -> Option<&BinaryCache> {
        self.head.as_ref().map(|h| h.binaries())
    }
}

/// Accepts connections on `endpoint` until it is closed.
pub fn spawn_listener(endpoint: Endpoint, services: Services) {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let services = services.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(e) => {
                        crate::warn_limited!(
                            PEER_WARNINGS,
                            remote.ip(),
                            "handshake",
                            "refused a connection: {}",
                            describe_incoming_failure(&e)
                        );
                        return;
                    }
                };
                serve_connection(conn, services).await;
            });
        }
    });
}

async fn serve_connection(conn: quinn::Connection, services: Services) {
    let remote = conn.remote_address();
    loop {
        let (send, mut recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                tracing::debug!(%remote, "connection ended: {e}");
                return;
            }
        };
        let services = services.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let open = match read_frame::<_, StreamOpen>(&mut recv).await {
                Ok(Some(open)) => open,
                Ok(None) => return,
                Err(crate::protocol::ProtocolError::Io(e)) => {
                    tracing::debug!(%remote, "a stream ended before its first frame: {e}");
                    return;
                }
                Err(e) => {
                    crate::warn_limited!(
                        PEER_WARNINGS,
                        remote.ip(),
                        e.kind(),
                        "closing the connection of a peer that sent a bad first frame: {e}"
                    );
                    conn.close(1u32.into(), b"protocol error");
                    return;
                }
            };
            match open {
                StreamOpen::Control(hello) => match &services.head {
                    Some(head) => head.serve_control(Some(conn), hello, send, recv).await,
                    None => {
                        let mut send = send;
                        let msg = FromHead::Welcome(Welcome::Rejected(
                            "this node is not the head; connect to the head's address".into(),
                        ));
                        let _ = write_frame(&mut send, &msg).await;
                        let _ = send.finish();
                    }
                },
                StreamOpen::Transfer(req) => {
                    let store = services.store.as_deref();
                    if let Err(e) =
                        crate::transfer::serve(req, send, recv, store, services.binaries()).await
                    {
                        crate::warn_limited!(
                            PEER_WARNINGS,
                            remote.ip(),
                            "transfer",
                            "transfer failed: {e}"
                        );
                    }
                }
            }
        });
    }
}
