//! What the head asks a node about its own machine for the dashboard (Ray's
//! dashboard agent): its log files and its host's use. The head relays the question
//! on the node's control stream and routes the answer back by its id.

use super::payload;
use serde::{Deserialize, Serialize};

/// The most bytes of a log one [`AgentRequest::ReadLog`] returns: a control frame
/// carries it, so it stays small beside the frame limit; a reader asks again for more.
pub const MAX_LOG_CHUNK: u64 = 256 << 10;

/// A question for a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentRequest {
    /// The names of the node's log files matching a glob (`*` for all).
    ListLogs {
        /// A shell glob over file names, as Ray's `glob` filter.
        glob: String,
    },
    /// A piece of one log file.
    ReadLog {
        /// The file's name in the node's log directory (no directories).
        filename: String,
        /// Where to start.
        from: LogStart,
        /// At most this many bytes (capped at [`MAX_LOG_CHUNK`]).
        max_bytes: u64,
    },
    /// The host's CPU, memory and disk use, and the object store's.
    Usage,
}

/// Where a [`AgentRequest::ReadLog`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStart {
    /// At this byte offset.
    Offset(u64),
    /// At the start of the last this many lines.
    TailLines(u64),
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentReply {
    /// To [`AgentRequest::ListLogs`]: matching file names, sorted.
    Logs(Vec<String>),
    /// To [`AgentRequest::ReadLog`].
    LogChunk {
        /// The bytes read.
        #[serde(with = "payload")]
        data: Vec<u8>,
        /// The offset just after them: where the next read starts.
        next_offset: u64,
        /// The file's size when it was read.
        size: u64,
    },
    /// To [`AgentRequest::Usage`].
    Usage(NodeUsage),
    /// The question could not be answered, and why.
    Error(String),
}

/// A node's use of its host and of its object store, as it samples them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeUsage {
    /// CPU use since the last sample, in percent of all CPUs.
    pub cpu_percent: f32,
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory, in bytes.
    pub mem_total: u64,
    /// Memory in use (total less available), in bytes.
    pub mem_used: u64,
    /// The size of the disk holding the node's session directory, in bytes.
    pub disk_total: u64,
    /// Bytes used on it.
    pub disk_used: u64,
    /// Bytes of objects in the object store's memory.
    pub store_used: u64,
    /// The object store's memory limit (`u64::MAX`: none).
    pub store_capacity: u64,
    /// Bytes of objects spilled to disk.
    pub store_spilled: u64,
    /// Objects in the store.
    pub store_objects: u64,
}
