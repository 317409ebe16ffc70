//! QUIC transport: endpoints, authenticated connections and message channels.
//!
//! Everything above this module talks in protocol types; only here do bytes meet sockets.

mod channel;
mod control;
mod quic;
pub mod tls;

pub use channel::{spawn_writer, spawn_writer_within, DirectSink, FrameReader, MessageSender};
pub use control::{open_control, ControlReader, ControlStream, HandshakeError, InProcessHead};
pub use quic::{
    connect, describe_incoming_failure, make_endpoint, ConnectError, Endpoint, PeerConnections,
};
