//! Transfer streams: one per object or binary moved between two processes.

use crate::ids::{BinaryHash, ObjectId};
use serde::{Deserialize, Serialize};

/// First frame of a transfer stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TransferRequest {
    /// Send me this object.
    PullObject(ObjectId),
    /// Store this object; `size` raw bytes follow.
    PushObject {
        /// The object.
        id: ObjectId,
        /// Its size.
        size: u64,
    },
    /// Send me this binary (nodes fetch job code from the head).
    FetchBinary(BinaryHash),
    /// Store this binary; `size` raw bytes follow (drivers upload to the head).
    UploadBinary {
        /// Its SHA-256.
        hash: BinaryHash,
        /// Its size.
        size: u64,
    },
}

/// Answer to a [`TransferRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TransferReply {
    /// `size` raw bytes follow (for pulls and fetches), or the push was stored.
    Ok {
        /// Bytes that follow.
        size: u64,
    },
    /// Not held here.
    NotFound,
    /// Refused, with the reason.
    Refused(String),
    /// A push refused because the store is full and the value could not be spilled.
    StoreFull(String),
}
