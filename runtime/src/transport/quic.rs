//! QUIC endpoints and connections, with errors that say what went wrong in user terms.

use super::tls::{ClusterTls, TlsError, SERVER_NAME};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

pub use quinn::Endpoint;

/// Why a connection could not be made.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// TLS material could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The peer's certificate is not from this cluster's authority.
    #[error("{addr} refused the connection: its TLS certificate was not made from this cluster token (wrong --token, or another cluster at that address)")]
    WrongToken {
        /// The peer.
        addr: SocketAddr,
    },
    /// Nothing answered.
    #[error("no rayish node answered at {addr} within {timeout:?} (is the head running, and is the address right?)")]
    Unreachable {
        /// The peer.
        addr: SocketAddr,
        /// How long we waited.
        timeout: Duration,
    },
    /// Any other transport failure.
    #[error("connecting to {addr}: {message}")]
    Other {
        /// The peer.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
}

/// Creates an endpoint bound to `bind` that both accepts and opens connections.
/// `idle_timeout` is how long a silent peer is kept; keep-alives go out at a fifth of it.
pub fn make_endpoint(
    bind: SocketAddr,
    tls: &ClusterTls,
    idle_timeout: Duration,
) -> Result<Endpoint, ConnectError> {
    let transport = transport_config(idle_timeout);
    let server_crypto =
        QuicServerConfig::try_from(tls.server.clone()).map_err(|e| ConnectError::Other {
            addr: bind,
            message: e.to_string(),
        })?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let mut endpoint = Endpoint::server(server, bind).map_err(|e| ConnectError::Other {
        addr: bind,
        message: format!("cannot bind UDP {bind}: {e}"),
    })?;
    let client_crypto =
        QuicClientConfig::try_from(tls.client.clone()).map_err(|e| ConnectError::Other {
            addr: bind,
            message: e.to_string(),
        })?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

fn transport_config(idle_timeout: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(idle_timeout)
        .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(5_000)));
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(idle_timeout / 5));
    t.max_concurrent_bidi_streams(4096u32.into());
    // Large objects move in chunks; give each stream and connection room for several.
    t.stream_receive_window((16u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.send_window(64 << 20);
    // Control traffic is many small messages each way; acknowledging every packet
    // doubles the packet count. Ask peers to acknowledge every 16th packet or after
    // 2 ms, whichever comes first (QUIC ACK frequency extension).
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(quinn::VarInt::from_u32(15))
        .max_ack_delay(Some(Duration::from_millis(2)));
    t.ack_frequency_config(Some(ack));
    Arc::new(t)
}

/// Opens an authenticated connection to `addr`, waiting at most `timeout`.
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<quinn::Connection, ConnectError> {
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|e| ConnectError::Other {
            addr,
            message: e.to_string(),
        })?;
    let started = std::time::Instant::now();
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(ConnectError::Unreachable { addr, timeout }),
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(classify(addr, e, started.elapsed())),
    }
}

/// What a failed handshake means; `waited` is how long it took to fail.
fn classify(addr: SocketAddr, e: quinn::ConnectionError, waited: Duration) -> ConnectError {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("unknown_ca")
        || lower.contains("badsignature")
        || lower.contains("decrypt")
        || lower.contains("handshake")
    {
        ConnectError::WrongToken { addr }
    } else if matches!(e, quinn::ConnectionError::TimedOut) {
        // QUIC's own idle timeout ended the handshake before ours.
        ConnectError::Unreachable {
            addr,
            timeout: waited,
        }
    } else {
        ConnectError::Other {
            addr,
            message: text,
        }
    }
}

/// Describes a failed incoming handshake for the server's log.
pub fn describe_incoming_failure(e: &quinn::ConnectionError) -> String {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("certificate") || lower.contains("alert") || lower.contains("handshake") {
        format!("TLS handshake failed ({text}): the peer does not hold this cluster's token")
    } else {
        text
    }
}

/// Connections this process has opened to other nodes, reused while they live.
pub struct PeerConnections {
    endpoint: Endpoint,
    timeout: Duration,
    open: dashmap::DashMap<SocketAddr, quinn::Connection>,
}

impl PeerConnections {
    /// Connections made from `endpoint`, each attempt waiting at most `timeout`.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        Self {
            endpoint,
            timeout,
            open: dashmap::DashMap::new(),
        }
    }

    /// A live connection to `addr`, opened now if there is none.
    pub async fn get(&self, addr: SocketAddr) -> Result<quinn::Connection, ConnectError> {
        if let Some(c) = self.open.get(&addr).map(|c| c.clone()) {
            if c.close_reason().is_none() {
                return Ok(c);
            }
        }
        let c = connect(&self.endpoint, addr, self.timeout).await?;
        self.open.insert(addr, c.clone());
        Ok(c)
    }
}
