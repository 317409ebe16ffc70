//! Moving objects and binaries between processes on transfer streams.
//!
//! Pull-based: whoever needs an object opens a stream to a node holding it and reads it
//! in [`CHUNK_LEN`] pieces, so QUIC flow control bounds what is in flight. Pushes (a
//! driver's large `put`) and binary uploads use the same framing the other way.

use crate::binaries::BinaryCache;
use crate::ids::{BinaryHash, ObjectId};
use crate::object_store::ObjectStore;
use crate::protocol::{
    read_frame, write_frame, ProtocolError, StreamOpen, TransferReply, TransferRequest, CHUNK_LEN,
};
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;
use tokio::io::AsyncReadExt;

/// Largest object accepted on a push or pull (bounded so a lying size cannot exhaust memory).
pub const MAX_OBJECT_LEN: u64 = 64 << 30;

/// Why a transfer failed.
#[derive(Debug, Error)]
pub enum TransferError {
    /// The peer does not hold it.
    #[error("{0} does not hold the requested item")]
    NotFound(SocketAddr),
    /// The peer refused.
    #[error("{addr} refused the transfer: {reason}")]
    Refused {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The receiving store is full and could not spill the value.
    #[error("{0}")]
    StoreFull(String),
    /// Protocol violation.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Stream failure.
    #[error("transfer stream: {0}")]
    Stream(String),
    /// Local file failure.
    #[error(transparent)]
    Binary(#[from] crate::binaries::BinaryError),
}

fn stream_err(e: impl std::fmt::Display) -> TransferError {
    TransferError::Stream(e.to_string())
}

async fn open(
    conn: &quinn::Connection,
    req: TransferRequest,
) -> Result<(quinn::SendStream, quinn::RecvStream), TransferError> {
    let (mut send, recv) = conn.open_bi().await.map_err(stream_err)?;
    write_frame(&mut send, &StreamOpen::Transfer(req)).await?;
    Ok((send, recv))
}

async fn expect_ok(recv: &mut quinn::RecvStream, addr: SocketAddr) -> Result<u64, TransferError> {
    match read_frame::<_, TransferReply>(recv).await? {
        Some(TransferReply::Ok { size }) => Ok(size),
        Some(TransferReply::NotFound) => Err(TransferError::NotFound(addr)),
        Some(TransferReply::Refused(reason)) => Err(TransferError::Refused { addr, reason }),
        Some(TransferReply::StoreFull(reason)) => Err(TransferError::StoreFull(reason)),
        None => Err(ProtocolError::Truncated.into()),
    }
}

/// Reads exactly `size` bytes into a new heap buffer.
async fn read_body(recv: &mut quinn::RecvStream, size: u64) -> Result<Bytes, TransferError> {
    if size > MAX_OBJECT_LEN {
        return Err(ProtocolError::FrameTooLarge(size).into());
    }
    let mut buf = vec![0u8; size as usize];
    read_body_into(recv, &mut buf).await?;
    Ok(Bytes::from(buf))
}

/// Fills `dest` from the stream, straight into its final place: QUIC flow control
/// bounds what is in flight, so the receiver holds the object plus a window.
async fn read_body_into(
    recv: &mut quinn::RecvStream,
    dest: &mut [u8],
) -> Result<(), TransferError> {
    let mut got = 0;
    while got < dest.len() {
        let end = (got + CHUNK_LEN).min(dest.len());
        let n = recv
            .read(&mut dest[got..end])
            .await
            .map_err(stream_err)?
            .unwrap_or(0);
        if n == 0 {
            return Err(ProtocolError::Truncated.into());
        }
        got += n;
    }
    BYTES_RECEIVED.fetch_add(got as u64, Ordering::Relaxed);
    Ok(())
}

/// Reads a `size`-byte object from the stream into `store` as `id`, and returns it.
async fn receive_into_store(
    recv: &mut quinn::RecvStream,
    store: &ObjectStore,
    id: ObjectId,
    size: u64,
) -> Result<Bytes, TransferError> {
    if size > MAX_OBJECT_LEN {
        return Err(ProtocolError::FrameTooLarge(size).into());
    }
    let refused = |e: crate::object_store::StoreError| match e {
        crate::object_store::StoreError::Full { .. } => TransferError::StoreFull(e.to_string()),
        other => TransferError::Stream(other.to_string()),
    };
    let mut value = store.new_value(id, size as usize).map_err(refused)?;
    if let Err(e) = read_body_into(recv, value.bytes_mut()).await {
        value.discard();
        return Err(e);
    }
    store.insert_written(id, value).map_err(refused)?;
    store
        .get(&id)
        .ok_or_else(|| TransferError::Stream("the stored copy vanished".into()))
}

async fn write_body(send: &mut quinn::SendStream, data: &[u8]) -> Result<(), TransferError> {
    for chunk in data.chunks(CHUNK_LEN) {
        send.write_all(chunk).await.map_err(stream_err)?;
    }
    BYTES_SENT.fetch_add(data.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Object and binary bytes this process sent and received over transfer streams.
static BYTES_SENT: AtomicU64 = AtomicU64::new(0);
static BYTES_RECEIVED: AtomicU64 = AtomicU64::new(0);

/// (sent, received): the object and binary bytes this process moved to and from
/// other processes since it started (for the metrics).
pub fn bytes_moved() -> (u64, u64) {
    (
        BYTES_SENT.load(Ordering::Relaxed),
        BYTES_RECEIVED.load(Ordering::Relaxed),
    )
}

/// Pulls object `id` from the node at the other end of `conn`.
pub async fn pull_object(conn: &quinn::Connection, id: ObjectId) -> Result<Bytes, TransferError> {
    let addr = conn.remote_address();
    let (mut send, mut recv) = open(conn, TransferRequest::PullObject(id)).await?;
    let _ = send.finish();
    let size = expect_ok(&mut recv, addr).await?;
    read_body(&mut recv, size).await
}

/// Pulls object `id` from the node at the other end of `conn` straight into `store`
/// (a node's own store), and returns the stored value.
pub async fn pull_object_into(
    conn: &quinn::Connection,
    id: ObjectId,
    store: &ObjectStore,
) -> Result<Bytes, TransferError> {
    let addr = conn.remote_address();
    let (mut send, mut recv) = open(conn, TransferRequest::PullObject(id)).await?;
    let _ = send.finish();
    let size = expect_ok(&mut recv, addr).await?;
    receive_into_store(&mut recv, store, id, size).await
}

/// Pushes object `id` into the store of the node at the other end of `conn`.
pub async fn push_object(
    conn: &quinn::Connection,
    id: ObjectId,
    data: &[u8],
) -> Result<(), TransferError> {
    let addr = conn.remote_address();
    let (mut send, mut recv) = open(
        conn,
        TransferRequest::PushObject {
            id,
            size: data.len() as u64,
        },
    )
    .await?;
    write_body(&mut send, data).await?;
    let _ = send.finish();
    expect_ok(&mut recv, addr).await.map(|_| ())
}

/// Uploads the executable at `path` (whose hash is `hash`) to the head.
pub async fn upload_binary(
    conn: &quinn::Connection,
    hash: &BinaryHash,
    path: &Path,
) -> Result<(), TransferError> {
    let addr = conn.remote_address();
    let data = tokio::fs::read(path).await.map_err(stream_err)?;
    let (mut send, mut recv) = open(
        conn,
        TransferRequest::UploadBinary {
            hash: hash.clone(),
            size: data.len() as u64,
        },
    )
    .await?;
    write_body(&mut send, &data).await?;
    let _ = send.finish();
    expect_ok(&mut recv, addr).await.map(|_| ())
}

/// Fetches binary `hash` from the head into `cache`, returning its path.
pub async fn fetch_binary(
    conn: &quinn::Connection,
    hash: &BinaryHash,
    cache: &BinaryCache,
) -> Result<std::path::PathBuf, TransferError> {
    let addr = conn.remote_address();
    let (mut send, mut recv) = open(conn, TransferRequest::FetchBinary(hash.clone())).await?;
    let _ = send.finish();
    let size = expect_ok(&mut recv, addr).await?;
    Ok(cache.store_from(hash, size, &mut recv).await?)
}

/// Serves one transfer request on an accepted stream.
pub async fn serve(
    req: TransferRequest,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    store: Option<&ObjectStore>,
    binaries: Option<&BinaryCache>,
) -> Result<(), TransferError> {
    let reply = |r: TransferReply| r;
    match req {
        TransferRequest::PullObject(id) => match store.and_then(|s| s.get(&id)) {
            Some(data) => {
                write_frame(
                    &mut send,
                    &reply(TransferReply::Ok {
                        size: data.len() as u64,
                    }),
                )
                .await?;
                write_body(&mut send, &data).await?;
            }
            None => write_frame(&mut send, &TransferReply::NotFound).await?,
        },
        TransferRequest::PushObject { id, size } => match store {
            Some(store) => match receive_into_store(&mut recv, store, id, size).await {
                Ok(_) => write_frame(&mut send, &TransferReply::Ok { size }).await?,
                Err(TransferError::StoreFull(reason)) => {
                    write_frame(&mut send, &TransferReply::StoreFull(reason)).await?
                }
                Err(e @ TransferError::Stream(_)) => {
                    write_frame(&mut send, &TransferReply::Refused(e.to_string())).await?
                }
                Err(e) => return Err(e),
            },
            None => {
                write_frame(
                    &mut send,
                    &TransferReply::Refused("this process has no object store".into()),
                )
                .await?
            }
        },
        TransferRequest::FetchBinary(hash) => {
            let path = binaries.map(|b| b.path(&hash)).transpose()?;
            match path.filter(|p| p.is_file()) {
                Some(path) => {
                    let mut file = tokio::fs::File::open(&path).await.map_err(stream_err)?;
                    let size = file.metadata().await.map_err(stream_err)?.len();
                    write_frame(&mut send, &TransferReply::Ok { size }).await?;
                    let mut chunk = vec![0u8; CHUNK_LEN];
                    loop {
                        let n = file.read(&mut chunk).await.map_err(stream_err)?;
                        if n == 0 {
                            break;
                        }
                        send.write_all(&chunk[..n]).await.map_err(stream_err)?;
                        BYTES_SENT.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                None => write_frame(&mut send, &TransferReply::NotFound).await?,
            }
        }
        TransferRequest::UploadBinary { hash, size } => match binaries {
            Some(cache) => {
                if size > MAX_OBJECT_LEN {
                    write_frame(
                        &mut send,
                        &TransferReply::Refused("binary too large".into()),
                    )
                    .await?;
                } else {
                    match cache.store_from(&hash, size, &mut recv).await {
                        Ok(_) => write_frame(&mut send, &TransferReply::Ok { size }).await?,
                        Err(e) => {
                            write_frame(&mut send, &TransferReply::Refused(e.to_string())).await?
                        }
                    }
                }
            }
            None => {
                write_frame(
                    &mut send,
                    &TransferReply::Refused("only the head stores binaries".into()),
                )
                .await?
            }
        },
    }
    let _ = send.finish();
    let _ = send.stopped().await;
    Ok(())
}
