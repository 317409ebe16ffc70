//! Frames: `MAGIC | version | length | bincode payload`, read with a size limit.

use super::{HEADER_LEN, MAGIC, MAX_FRAME_LEN, PROTOCOL_VERSION};
use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame was refused.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The frame does not start with [`MAGIC`]: not a rayish peer, or a corrupt stream.
    #[error("bad frame magic {0:02x?}: not a rayish peer or a corrupted stream")]
    BadMagic([u8; 4]),
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {theirs}, this node speaks {ours}")]
    VersionMismatch {
        /// Our [`PROTOCOL_VERSION`].
        ours: u16,
        /// The version in the peer's frame.
        theirs: u16,
    },
    /// The declared payload length exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the frame size limit")]
    FrameTooLarge(u64),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The underlying stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    /// A short name of the kind of failure (for rate-limited logging).
    pub fn kind(&self) -> &'static str {
        match self {
            ProtocolError::BadMagic(_) => "bad magic",
            ProtocolError::VersionMismatch { .. } => "version",
            ProtocolError::FrameTooLarge(_) => "too large",
            ProtocolError::Truncated => "truncated",
            ProtocolError::Malformed(_) => "malformed",
            ProtocolError::Io(_) => "i/o",
        }
    }
}

fn codec(limit: u32) -> impl Options {
    bincode::DefaultOptions::new().with_limit(limit as u64)
}

/// Appends one framed message to `buf`.
pub fn encode_frame<M: Serialize>(msg: &M, buf: &mut Vec<u8>) -> Result<(), ProtocolError> {
    encode_frame_within(msg, buf, MAX_FRAME_LEN)
}

/// Appends one framed message to `buf`, refusing payloads over `limit` bytes.
pub fn encode_frame_within<M: Serialize>(
    msg: &M,
    buf: &mut Vec<u8>,
    limit: u32,
) -> Result<(), ProtocolError> {
    let start = buf.len();
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    codec(limit)
        .serialize_into(&mut *buf, msg)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let len = buf.len() - start - HEADER_LEN;
    if len > limit as usize {
        buf.truncate(start);
        return Err(ProtocolError::FrameTooLarge(len as u64));
    }
    buf[start + 6..start + 10].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Writes one framed message.
pub async fn write_frame<W, M>(w: &mut W, msg: &M) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
    M: Serialize,
{
    let mut buf = Vec::new();
    encode_frame(msg, &mut buf)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one framed message; `Ok(None)` when the stream ended cleanly between frames.
pub async fn read_frame<R, M>(r: &mut R) -> Result<Option<M>, ProtocolError>
where
    R: AsyncRead + Unpin,
    M: DeserializeOwned,
{
    read_frame_within(r, MAX_FRAME_LEN).await
}

/// Payload bytes a frame reader allocates before they arrive.
const EAGER_PAYLOAD: usize = 8 << 20;

/// Reads one framed message of at most `limit` payload bytes.
pub async fn read_frame_within<R, M>(r: &mut R, limit: u32) -> Result<Option<M>, ProtocolError>
where
    R: AsyncRead + Unpin,
    M: DeserializeOwned,
{
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(ProtocolError::Truncated)
            };
        }
        got += n;
    }
    let len = check_header(&header, limit)?;
    let truncated = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProtocolError::Truncated,
        _ => ProtocolError::Io(e),
    };
    let payload = if len <= EAGER_PAYLOAD {
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await.map_err(truncated)?;
        payload
    } else {
        // A header may claim up to `limit` bytes that never come: past what a frame
        // usually is, grow only as the bytes arrive.
        let mut payload = Vec::with_capacity(EAGER_PAYLOAD);
        let got = (&mut *r)
            .take(len as u64)
            .read_to_end(&mut payload)
            .await
            .map_err(ProtocolError::Io)?;
        if got < len {
            return Err(ProtocolError::Truncated);
        }
        payload
    };
    decode_payload_within(&payload, limit).map(Some)
}

/// Blocking form of [`read_frame_within`], for threads outside the async runtime.
///
/// It runs the async reader itself over a reader whose reads block and so never
/// return `Pending`: one poll completes it, and both forms share one implementation.
pub fn read_frame_blocking<R, M>(r: &mut R, limit: u32) -> Result<Option<M>, ProtocolError>
where
    R: std::io::Read,
    M: DeserializeOwned,
{
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut reader = BlockingReader(r);
    let future = std::pin::pin!(read_frame_within(&mut reader, limit));
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(ProtocolError::Io(std::io::ErrorKind::WouldBlock.into())),
    }
}

/// Adapts a blocking reader to `AsyncRead`: every poll reads, blocking, to completion.
struct BlockingReader<'a, R>(&'a mut R);

impl<R: std::io::Read> AsyncRead for BlockingReader<'_, R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = loop {
            match self.0.read(buf.initialize_unfilled()) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        std::task::Poll::Ready(n.map(|n| buf.advance(n)))
    }
}

/// Checks a frame header; returns the payload length.
fn check_header(header: &[u8; HEADER_LEN], limit: u32) -> Result<usize, ProtocolError> {
    let magic = [header[0], header[1], header[2], header[3]];
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != PROTOCOL_VERSION {
        return Err(ProtocolError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    let len = u32::from_le_bytes([header[6], header[7], header[8], header[9]]);
    if len > limit {
        return Err(ProtocolError::FrameTooLarge(len as u64));
    }
    Ok(len as usize)
}

/// Decodes a frame's payload (without its header).
pub fn decode_payload<M: DeserializeOwned>(payload: &[u8]) -> Result<M, ProtocolError> {
    decode_payload_within(payload, MAX_FRAME_LEN)
}

fn decode_payload_within<M: DeserializeOwned>(
    payload: &[u8],
    limit: u32,
) -> Result<M, ProtocolError> {
    codec(limit)
        .deserialize(payload)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ObjectId;
    use crate::protocol::{NodeLoad, ToHead};

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        encode_frame(&ToHead::AddRefs(vec![ObjectId(7)]), &mut buf).unwrap();
        encode_frame(&ToHead::Heartbeat(NodeLoad::default()), &mut buf).unwrap();
        let mut r = &buf[..];
        let a: ToHead = read_frame(&mut r).await.unwrap().unwrap();
        assert!(matches!(a, ToHead::AddRefs(v) if v == vec![ObjectId(7)]));
        let b: ToHead = read_frame(&mut r).await.unwrap().unwrap();
        assert!(matches!(b, ToHead::Heartbeat(_)));
        assert!(read_frame::<_, ToHead>(&mut r).await.unwrap().is_none());
    }

    #[test]
    fn blocking_reads_see_the_same_frames() {
        let mut buf = Vec::new();
        encode_frame(&ToHead::AddRefs(vec![ObjectId(9)]), &mut buf).unwrap();
        let mut r = std::io::Cursor::new(buf.clone());
        let msg: ToHead = read_frame_blocking(&mut r, MAX_FRAME_LEN).unwrap().unwrap();
        assert!(matches!(msg, ToHead::AddRefs(v) if v == vec![ObjectId(9)]));
        assert!(read_frame_blocking::<_, ToHead>(&mut r, MAX_FRAME_LEN)
            .unwrap()
            .is_none());
        let mut short = std::io::Cursor::new(buf[..buf.len() - 1].to_vec());
        let err = read_frame_blocking::<_, ToHead>(&mut short, MAX_FRAME_LEN).unwrap_err();
        assert!(matches!(err, ProtocolError::Truncated), "{err}");
    }

    #[tokio::test]
    async fn bad_frames_are_typed_errors() {
        let mut buf = Vec::new();
        encode_frame(&ToHead::Heartbeat(NodeLoad::default()), &mut buf).unwrap();

        let mut wrong_version = buf.clone();
        wrong_version[4] = 99;
        let err = read_frame::<_, ToHead>(&mut &wrong_version[..])
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProtocolError::VersionMismatch { theirs: 99, .. }),
            "{err}"
        );

        let mut bad_magic = buf.clone();
        bad_magic[0] = b'X';
        let err = read_frame::<_, ToHead>(&mut &bad_magic[..])
            .await
            .unwrap_err();
        assert!(matches!(err, ProtocolError::BadMagic(_)), "{err}");

        let mut huge = buf.clone();
        huge[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = read_frame::<_, ToHead>(&mut &huge[..]).await.unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge(_)), "{err}");

        let truncated = &buf[..buf.len() - 1];
        let truncated = if truncated.len() > HEADER_LEN {
            truncated
        } else {
            &buf[..5]
        };
        let err = read_frame::<_, ToHead>(&mut &truncated[..])
            .await
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Truncated), "{err}");

        // A payload whose inner length prefix lies must not allocate it.
        let mut lying = Vec::new();
        lying.extend_from_slice(&MAGIC);
        lying.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        let payload = [0u8, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        lying.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        lying.extend_from_slice(&payload);
        let err = read_frame::<_, ToHead>(&mut &lying[..]).await.unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed(_)), "{err}");
    }
}
