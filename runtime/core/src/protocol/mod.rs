//! The wire protocol: every message any two rayish processes exchange, and how it is framed.
//!
//! A frame is `MAGIC (4 bytes) | version (u16 LE) | length (u32 LE) | bincode payload`.
//! The version is checked before the payload is decoded, so peers of another protocol
//! version are refused with a clear error instead of a decoding failure. Payloads are
//! decoded with a size limit, so a lying length prefix cannot make a node allocate.
//!
//! Streams:
//! - the *control stream*: the first bidirectional stream a client opens on a QUIC
//!   connection to the head; it starts with [`Hello`] and then carries [`ToHead`] one way
//!   and [`FromHead`] the other;
//! - *transfer streams*: one bidirectional stream per object or binary moved, opened
//!   with a [`TransferRequest`] and answered with a [`TransferReply`] followed by the raw
//!   bytes in chunks;
//! - the *worker socket*: a Unix socket between a node and each worker process it
//!   started, carrying [`ToWorker`] and [`FromWorker`].
//!
//! One file per message family: `frame.rs` the framing, `handshake.rs` the first
//! messages of a control stream, `control.rs` the control stream's messages and
//! `task.rs`, `task_error.rs` the task types they carry, `status.rs` the
//! `rayish status` snapshot, `agent.rs` the head's questions to a node for the
//! dashboard, `transfer.rs` transfer streams, `worker.rs` the worker
//! socket; `payload.rs` the byte-string encoding of values inside messages. Every type
//! that crosses a process boundary lives here, under the one [`PROTOCOL_VERSION`];
//! all are re-exported at this module's root.

mod agent;
mod control;
mod frame;
mod handshake;
mod payload;
mod status;
mod task;
mod task_error;
mod transfer;
mod worker;

pub use agent::*;
pub use control::*;
pub use frame::*;
pub use handshake::*;
pub use status::*;
pub use task::*;
pub use task_error::*;
pub use transfer::*;
pub use worker::*;

/// Version of this protocol; peers speaking another one are refused.
pub const PROTOCOL_VERSION: u16 = 16;
/// First bytes of every frame.
pub const MAGIC: [u8; 4] = *b"RYSH";
/// Bytes before a frame's payload.
pub const HEADER_LEN: usize = 10;
/// The largest payload a frame may carry. Bigger objects travel on transfer streams.
pub const MAX_FRAME_LEN: u32 = 64 << 20;
/// The largest frame on a worker socket: a task's arguments and result travel there
/// whole, between a node and the worker it started (until shared memory replaces it).
pub const MAX_WORKER_FRAME_LEN: u32 = u32::MAX;
/// Size of the pieces objects and binaries are sent in on transfer streams.
pub const CHUNK_LEN: usize = 1 << 20;
/// Objects up to this size travel inside control messages and live in the head's
/// directory; larger ones stay on the node that made them and are pulled.
pub const INLINE_OBJECT_MAX: usize = 100 * 1024;
