//! The client side of a control stream to the head.

use super::{spawn_writer, FrameReader, MessageSender};
use crate::protocol::{write_frame, FromHead, Hello, ProtocolError, StreamOpen, ToHead, Welcome};
use std::future::Future;
use std::pin::Pin;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// Why the head did not accept us.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The head said no.
    #[error("the head refused this process: {0}")]
    Rejected(String),
    /// The stream failed or carried something unexpected.
    #[error("handshake with the head failed: {0}")]
    Protocol(String),
}

impl From<ProtocolError> for HandshakeError {
    fn from(e: ProtocolError) -> Self {
        HandshakeError::Protocol(e.to_string())
    }
}

/// The read half of a control stream: frames from a QUIC stream, or messages from a
/// head in this same process.
pub enum ControlReader {
    /// Frames read off a stream.
    Frames(FrameReader<Box<dyn AsyncRead + Unpin + Send>, FromHead>),
    /// Messages handed over in memory.
    InProcess(mpsc::UnboundedReceiver<FromHead>),
}

impl ControlReader {
    /// The next message; `Ok(None)` once the head is gone.
    pub async fn next(&mut self) -> Result<Option<FromHead>, ProtocolError> {
        match self {
            ControlReader::Frames(r) => r.next().await,
            ControlReader::InProcess(rx) => Ok(rx.recv().await),
        }
    }
}

/// A head running in this same process, which a peer of the process (its own node, or
/// a local-mode driver) joins without a stream: messages pass as Rust values both ways,
/// with no encryption, no encoding and no reader or writer task in between.
pub trait InProcessHead: Send + Sync {
    /// Performs the handshake and returns the control stream.
    fn open(
        &self,
        hello: Hello,
    ) -> Pin<Box<dyn Future<Output = Result<ControlStream, HandshakeError>> + Send + '_>>;
}

/// An accepted control stream.
pub struct ControlStream {
    /// What the head said.
    pub welcome: Welcome,
    /// Messages to the head.
    pub sender: MessageSender<ToHead>,
    /// Messages from the head (after the welcome).
    pub reader: ControlReader,
}

/// Opens the control stream on `conn` and performs the handshake.
pub async fn open_control(
    conn: &quinn::Connection,
    hello: Hello,
) -> Result<ControlStream, HandshakeError> {
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| HandshakeError::Protocol(e.to_string()))?;
    open_control_on(send, recv, hello).await
}

/// Performs the handshake on any pair of streams.
async fn open_control_on<W, R>(
    mut send: W,
    recv: R,
    hello: Hello,
) -> Result<ControlStream, HandshakeError>
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    write_frame(&mut send, &StreamOpen::Control(hello)).await?;
    let mut reader = ControlReader::Frames(FrameReader::new(Box::new(recv)));
    match reader.next().await? {
        Some(FromHead::Welcome(Welcome::Rejected(reason))) => Err(HandshakeError::Rejected(reason)),
        Some(FromHead::Welcome(welcome)) => {
            let sender = spawn_writer::<_, ToHead>(send);
            Ok(ControlStream {
                welcome,
                sender,
                reader,
            })
        }
        Some(other) => Err(HandshakeError::Protocol(format!(
            "expected a welcome, got {other:?}"
        ))),
        None => Err(HandshakeError::Protocol(
            "the head closed the stream during the handshake".into(),
        )),
    }
}
