//! Message channels over any byte stream: a batching writer task and a frame reader;
//! and, between parts of one process, the same senders delivering Rust values directly.

use crate::protocol::{encode_frame_within, read_frame_within, ProtocolError, MAX_FRAME_LEN};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// A receiver of messages in this same process, which takes them as Rust values: no
/// encoding, no stream, no task in between.
pub trait DirectSink<M>: Send + Sync {
    /// Hands over `msg`; false when the receiver is gone.
    fn deliver(&self, msg: M) -> bool;
    /// Whether the receiver is gone.
    fn is_closed(&self) -> bool;
}

impl<M: Send> DirectSink<M> for mpsc::UnboundedSender<M> {
    fn deliver(&self, msg: M) -> bool {
        self.send(msg).is_ok()
    }
    fn is_closed(&self) -> bool {
        mpsc::UnboundedSender::is_closed(self)
    }
}

enum Route<M> {
    /// Encoded and written to a stream by a writer task.
    Writer(mpsc::UnboundedSender<M>),
    /// Handed to a receiver in this process.
    Direct(Arc<dyn DirectSink<M>>),
}

/// Sends messages to a peer: through a writer task onto a stream, or, for a peer in
/// this process, directly. Cheap to clone; sending never blocks.
pub struct MessageSender<M> {
    route: Route<M>,
}

impl<M> Clone for MessageSender<M> {
    fn clone(&self) -> Self {
        let route = match &self.route {
            Route::Writer(tx) => Route::Writer(tx.clone()),
            Route::Direct(sink) => Route::Direct(sink.clone()),
        };
        Self { route }
    }
}

impl<M> MessageSender<M> {
    /// A sender that hands messages to `sink` in this process.
    pub fn direct(sink: Arc<dyn DirectSink<M>>) -> Self {
        Self {
            route: Route::Direct(sink),
        }
    }

    /// Queues `msg`; returns false when the connection is gone.
    pub fn send(&self, msg: M) -> bool {
        match &self.route {
            Route::Writer(tx) => tx.send(msg).is_ok(),
            Route::Direct(sink) => sink.deliver(msg),
        }
    }

    /// Whether the writer task has stopped or the receiver is gone (the connection
    /// is gone).
    pub fn is_closed(&self) -> bool {
        match &self.route {
            Route::Writer(tx) => tx.is_closed(),
            Route::Direct(sink) => sink.is_closed(),
        }
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
    MessageSender {
        route: Route::Writer(tx),
    }
}

/// Bytes a frame reader takes from its stream at a time: a burst of small messages
/// costs one read (one syscall, or one lock of a QUIC connection), not two per message.
const READ_BUFFER: usize = 64 * 1024;

/// Reads framed messages of type `M`.
pub struct FrameReader<R, M> {
    r: tokio::io::BufReader<R>,
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
            r: tokio::io::BufReader::with_capacity(READ_BUFFER, r),
            limit,
            _m: PhantomData,
        }
    }

    /// The next message; `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<M>, ProtocolError> {
        read_frame_within(&mut self.r, self.limit).await
    }
}
