//! QUIC endpoints and connections, with errors that say what went wrong in user terms.

use super::tls::{ClusterTls, TlsError, SERVER_NAME};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

pub use quinn::{ClientConfig, Endpoint};

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

/// How long a process waits for a silent head by default before it counts it lost:
/// Ray's `gcs_rpc_server_reconnect_timeout_s`. A head that stalls (a VM pause, a
/// SIGSTOP) for less than this loses no connection.
pub const HEAD_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable (seconds) that overrides [`HEAD_RECONNECT_TIMEOUT`] for
/// drivers and workers; a node sets it for its workers from `--head-reconnect-timeout`.
pub const HEAD_RECONNECT_TIMEOUT_ENV: &str = "RAYISH_HEAD_RECONNECT_TIMEOUT";

/// How long this process waits for a silent head: `$RAYISH_HEAD_RECONNECT_TIMEOUT`
/// seconds (fractions allowed), else [`HEAD_RECONNECT_TIMEOUT`].
pub fn head_reconnect_timeout_from_env() -> Duration {
    std::env::var(HEAD_RECONNECT_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| Duration::from_secs_f64(s.clamp(0.5, 86_400.0)))
        .unwrap_or(HEAD_RECONNECT_TIMEOUT)
}

/// How long a connection between two peers (an object pull, a binary fetch) may be
/// silent before it is dropped, when the caller has no node timeout of its own.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates an endpoint bound to `bind` that both accepts and opens connections.
/// `idle_timeout` is how long a silent peer is kept; keep-alives go out at a fifth of it.
/// A connection's idle timeout is the smaller of its two ends' (QUIC), so control
/// connections to the head get the long one of the head's endpoint, and connections
/// between peers ([`PeerConnections`]) the short one they ask for.
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
    server.transport_config(transport);
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &tls.reset_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    let cid_key = tls.cid_key;
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket = std::net::UdpSocket::bind(bind).map_err(bind_error(bind))?;
    let runtime = quinn::default_runtime().ok_or_else(|| ConnectError::Other {
        addr: bind,
        message: "no async runtime for QUIC".into(),
    })?;
    let mut endpoint =
        Endpoint::new(config, Some(server), socket, runtime).map_err(bind_error(bind))?;
    endpoint.set_default_client_config(client_config(tls, idle_timeout, bind)?);
    Ok(endpoint)
}

/// Creates an endpoint bound to `bind` that only opens connections (a driver's or a
/// worker's: they serve nothing, so they accept nothing).
pub fn make_client_endpoint(
    bind: SocketAddr,
    tls: &ClusterTls,
    idle_timeout: Duration,
) -> Result<Endpoint, ConnectError> {
    let mut endpoint = Endpoint::client(bind).map_err(bind_error(bind))?;
    endpoint.set_default_client_config(client_config(tls, idle_timeout, bind)?);
    Ok(endpoint)
}

fn bind_error(bind: SocketAddr) -> impl Fn(std::io::Error) -> ConnectError {
    move |e| ConnectError::Other {
        addr: bind,
        message: format!("cannot bind UDP {bind}: {e}"),
    }
}

/// A client configuration whose connections are dropped after `idle_timeout` of
/// silence (for [`PeerConnections`]: a dead holder of an object must not stall a pull
/// for as long as a paused head is waited for).
pub fn client_config(
    tls: &ClusterTls,
    idle_timeout: Duration,
    bind: SocketAddr,
) -> Result<quinn::ClientConfig, ConnectError> {
    let client_crypto =
        QuicClientConfig::try_from(tls.client.clone()).map_err(|e| ConnectError::Other {
            addr: bind,
            message: e.to_string(),
        })?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport_config(idle_timeout));
    Ok(client)
}

/// Longest pause between keep-alives on a quiet connection.
const KEEP_ALIVE_AT_LEAST: Duration = Duration::from_secs(1);

/// Streams a peer may have open at once on one connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

fn transport_config(idle_timeout: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(idle_timeout)
        .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(5_000)));
    t.max_idle_timeout(Some(idle));
    // Keep-alives also find a restarted peer soon: its stateless reset answers the
    // next packet, and a driver blocked in a long `get` sends nothing else.
    t.keep_alive_interval(Some((idle_timeout / 5).min(KEEP_ALIVE_AT_LEAST)));
    // quinn keeps state for every stream a peer may open at once: 4096 of them cost
    // ~500 KiB per connection (1,600 status clients held 430 MB of the head). 256 is
    // ~80 KiB, and more concurrent transfers than that on one connection just wait
    // for a stream.
    t.max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into());
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
    connect_with(endpoint, None, addr, timeout).await
}

/// [`connect`] with `config` instead of the endpoint's default client configuration.
async fn connect_with(
    endpoint: &Endpoint,
    config: Option<&quinn::ClientConfig>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<quinn::Connection, ConnectError> {
    let connecting = match config {
        Some(config) => endpoint.connect_with(config.clone(), addr, SERVER_NAME),
        None => endpoint.connect(addr, SERVER_NAME),
    }
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

/// Whether a connection ended in its TLS handshake: QUIC carries a TLS alert as a
/// CRYPTO_ERROR, codes 0x100 to 0x1ff (RFC 9000, 20.1), whichever side raised it. Between
/// rayish processes that means the peer's certificate is not from this cluster's
/// authority: it does not hold the token.
fn tls_refused(e: &quinn::ConnectionError) -> bool {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => t.code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return false,
    };
    (0x100..0x200).contains(&u64::from(code))
}

/// What a failed handshake means; `waited` is how long it took to fail.
fn classify(addr: SocketAddr, e: quinn::ConnectionError, waited: Duration) -> ConnectError {
    if tls_refused(&e) {
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
            message: e.to_string(),
        }
    }
}

/// Describes a failed incoming handshake for the server's log.
pub fn describe_incoming_failure(e: &quinn::ConnectionError) -> String {
    if tls_refused(e) {
        format!("TLS handshake failed ({e}): the peer does not hold this cluster's token")
    } else {
        e.to_string()
    }
}

/// Connections this process has opened to other nodes, reused while they live.
pub struct PeerConnections {
    endpoint: Endpoint,
    client: quinn::ClientConfig,
    timeout: Duration,
    open: dashmap::DashMap<SocketAddr, quinn::Connection>,
}

impl PeerConnections {
    /// Connections made from `endpoint` with `client` (see [`client_config`]), each
    /// attempt waiting at most `timeout`.
    pub fn new(endpoint: Endpoint, client: quinn::ClientConfig, timeout: Duration) -> Self {
        Self {
            endpoint,
            client,
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
        let c = connect_with(&self.endpoint, Some(&self.client), addr, self.timeout).await?;
        self.open.insert(addr, c.clone());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peer closed the connection with `code` (as a server refusing our
    /// certificate does).
    fn closed_with(code: quinn::TransportErrorCode) -> quinn::ConnectionError {
        quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: code,
            frame_type: None,
            reason: bytes::Bytes::new(),
        })
    }

    #[test]
    fn a_tls_alert_means_a_wrong_token_and_nothing_else_does() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("an address");
        // 42 is TLS's bad_certificate, 48 unknown_ca.
        for alert in [42, 48] {
            let e = closed_with(quinn::TransportErrorCode::crypto(alert));
            assert!(matches!(
                classify(addr, e, Duration::ZERO),
                ConnectError::WrongToken { .. }
            ));
        }
        let e = closed_with(quinn::TransportErrorCode::PROTOCOL_VIOLATION);
        assert!(matches!(
            classify(addr, e, Duration::ZERO),
            ConnectError::Other { .. }
        ));
        assert!(matches!(
            classify(
                addr,
                quinn::ConnectionError::TimedOut,
                Duration::from_secs(3)
            ),
            ConnectError::Unreachable { .. }
        ));
    }
}
