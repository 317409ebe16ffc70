//! Message channels over any byte stream: a batching writer task and a frame reader.

use crate::protocol::{encode_frame_within, read_frame_within, ProtocolError, MAX_FRAME_LEN};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Sends messages to a peer through a writer task. Cheap to clone; sending never blocks.
pub struct MessageSender<M> {
    tx: mpsc::UnboundedSender<M>,
}

impl<M> Clone for MessageSender<M> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<M> MessageSender<M> {
    /// Queues `msg`; returns false when the connection is gone.
    pub fn send(&self, msg: M) -> bool {
        self.tx.send(msg).is_ok()
    }

    /// Whether the writer task has stopped (the connection is gone).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Most messages coalesced into one write.
const BATCH: usize = 512;

/// Starts a task that writes queued messages to `w`, coalescing whatever is queued into
/// one write so that many small messages cost one system call. The task ends when every
/// sender is dropped or the stream fails.
pub fn spawn_writer<W, M>(w: W) -> MessageSender<M>
where
    W: AsyncWrite + Unpin + Send + 'static,
    M: Serialize + Send + 'static,
{
    spawn_writer_within(w, MAX_FRAME_LEN)
}

/// [`spawn_writer`] for frames of up to `limit` bytes.
pub fn spawn_writer_within<W, M>(mut w: W, limit: u32) -> MessageSender<M>
where
    W: AsyncWrite + Unpin + Send + 'static,
    M: Serialize + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<M>();
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(first) = rx.recv().await {
            buf.clear();
            let mut next = Some(first);
            let mut n = 0;
            while let Some(msg) = next {
                if let Err(e) = encode_frame_within(&msg, &mut buf, limit) {
                    tracing::error!("dropping a message that cannot be encoded: {e}");
                }
                n += 1;
                next = if n < BATCH { rx.try_recv().ok() } else { None };
            }
            if let Err(e) = w.write_all(&buf).await {
                tracing::debug!("message stream closed: {e}");
                break;
            }
            let _ = w.flush().await;
        }
        let _ = w.shutdown().await;
    });
    MessageSender { tx }
}

/// Reads framed messages of type `M`.
pub struct FrameReader<R, M> {
    r: R,
    limit: u32,
    _m: PhantomData<fn() -> M>,
}

impl<R: AsyncRead + Unpin, M: DeserializeOwned> FrameReader<R, M> {
    /// Wraps a stream.
    pub fn new(r: R) -> Self {
        Self::within(r, MAX_FRAME_LEN)
    }

    /// Wraps a stream whose frames may be up to `limit` bytes.
    pub fn within(r: R, limit: u32) -> Self {
        Self {
            r,
            limit,
            _m: PhantomData,
        }
    }

    /// The next message; `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<M>, ProtocolError> {
        read_frame_within(&mut self.r, self.limit).await
    }
}
