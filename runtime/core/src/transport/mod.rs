//! QUIC transport: endpoints, authenticated connections and message channels.
//!
//! Everything above this module talks in protocol types; only here do bytes meet sockets.

mod channel;
mod control;
pub mod log_limit;
mod quic;
pub mod tls;

pub use channel::{spawn_writer, spawn_writer_within, DirectSink, FrameReader, MessageSender};
pub use control::{open_control, ControlReader, ControlStream, HandshakeError, InProcessHead};
pub use quic::{
    client_config, connect, describe_incoming_failure, head_reconnect_timeout_from_env,
    make_client_endpoint, make_endpoint, ClientConfig, ConnectError, Endpoint, PeerConnections,
    HEAD_RECONNECT_TIMEOUT, HEAD_RECONNECT_TIMEOUT_ENV, PEER_IDLE_TIMEOUT,
};
