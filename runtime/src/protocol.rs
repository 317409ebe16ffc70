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

use crate::ids::{ActorId, BinaryHash, JobId, NodeId, ObjectId, PeerId, TaskId};
use crate::resources::ResourceSet;
use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version of this protocol; peers speaking another one are refused.
pub const PROTOCOL_VERSION: u16 = 6;
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

/// Serializes a value with the protocol's encoding (used for object payloads too).
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    bincode::DefaultOptions::new()
        .serialize(value)
        .map_err(|e| e.to_string())
}

/// The size of `value` encoded by [`encode_value`].
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<u64, String> {
    bincode::DefaultOptions::new()
        .serialized_size(value)
        .map_err(|e| e.to_string())
}

/// Encodes `value` as [`encode_value`] does into `buf`, which must be exactly
/// [`encoded_len`] bytes.
pub fn encode_value_into<T: Serialize + ?Sized>(value: &T, buf: &mut [u8]) -> Result<(), String> {
    let len = buf.len();
    // Large byte strings are copied by several threads (a put of gigabytes).
    let mut rest = crate::object_store::memcopy::SliceWriter::new(buf);
    bincode::DefaultOptions::new()
        .serialize_into(&mut rest, value)
        .map_err(|e| e.to_string())?;
    if rest.remaining() != 0 {
        return Err(format!(
            "the value encoded to {} bytes, not the {len} it measured",
            len - rest.remaining()
        ));
    }
    Ok(())
}

/// Deserializes a value encoded by [`encode_value`].
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::DefaultOptions::new()
        .deserialize(bytes)
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// Control stream: handshake
// ---------------------------------------------------------------------------

/// What a process connecting to the head is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRole {
    /// A node offering resources and an object store.
    Node(NodeRegistration),
    /// A driver program starting a job whose code is the given binary.
    Driver {
        /// The driver's executable, to be run as worker processes.
        binary: BinaryHash,
        /// A name for logs and status (the program's file name).
        name: String,
    },
    /// A worker process started by a node for a job.
    Worker {
        /// The node that started it.
        node: NodeId,
        /// The job whose code it runs.
        job: JobId,
        /// [`worker_proof`] of the node's [`NodeRegistration::worker_key`] and the
        /// job: only a process the node started can present it.
        proof: [u8; 32],
    },
    /// A short-lived client such as `rayish status`.
    Client,
}

/// What a node tells the head about itself when it joins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRegistration {
    /// Chosen by the node, stable for its life.
    pub node_id: NodeId,
    /// Where other nodes and drivers reach its object server.
    pub address: SocketAddr,
    /// Everything it offers to tasks.
    pub resources: ResourceSet,
    /// The machine's host name, for status output.
    pub hostname: String,
    /// The node process id, for status output.
    pub pid: u32,
    /// A random secret of this node incarnation's, told only to the head (over the
    /// encrypted stream): the head accepts a worker of a job on this node only with
    /// the [`worker_proof`] of it, which the node gives the workers it starts.
    pub worker_key: [u8; 32],
}

/// What a worker of `job` started by a node with `worker_key` presents to the head.
pub fn worker_proof(worker_key: &[u8; 32], job: JobId) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"rayish worker proof v1\0");
    h.update(worker_key);
    h.update(job.0.to_le_bytes());
    h.finalize().into()
}

/// First message on a control stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Who is connecting.
    pub role: PeerRole,
    /// The connecting binary's crate version, for diagnostics.
    pub software_version: String,
}

/// The head's answer to [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Welcome {
    /// Accepted.
    Accepted {
        /// The id the head gave this connection.
        peer: PeerId,
        /// For drivers: the job created for them.
        job: Option<JobId>,
        /// For drivers: the head lacks the binary and wants it uploaded.
        upload_binary: bool,
        /// The head's node id (the head process is also a node).
        head_node: NodeId,
    },
    /// Refused, with the reason to show the user.
    Rejected(String),
}

// ---------------------------------------------------------------------------
// Control stream: messages to and from the head
// ---------------------------------------------------------------------------

/// One argument of a task as submitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TaskArg {
    /// The encoded value itself.
    Value(#[serde(with = "payload")] Vec<u8>),
    /// A reference, resolved on the node that runs the task.
    Ref(ObjectId),
}

/// Everything needed to run (and re-run) one remote call: plain data, so it can be
/// retried, reconstructed from lineage, shown and counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The call's id; retries keep it.
    pub task_id: TaskId,
    /// The job whose code holds the function.
    pub job: JobId,
    /// Registered name of the remote function.
    pub function: String,
    /// The arguments, in order.
    pub args: Vec<TaskArg>,
    /// References held inside inline argument values, kept alive while the task is pending.
    pub nested_refs: Vec<ObjectId>,
    /// The object the result is stored as.
    pub return_id: ObjectId,
    /// Resources the task holds while it runs.
    pub resources: ResourceSet,
    /// How many times the task is re-run after its worker or node dies. For actor
    /// calls the actor's `max_task_retries` applies instead.
    pub max_retries: u32,
    /// A plain function call, an actor's creation, or a call of an actor's method.
    pub kind: TaskKind,
}

/// What a task does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskKind {
    /// Calls a remote function in any idle worker of the job.
    Function,
    /// Runs an actor's constructor in a worker dedicated to the actor for its life;
    /// the task's resources stay held until the actor dies. Its return object stands
    /// for the actor: every handle holds it, and when it is freed the actor ends.
    CreateActor(ActorCreation),
    /// Calls a method of a live actor, in the order its caller made the calls.
    ActorCall(ActorId),
}

/// The options an actor was created with (Ray's `.options(...)` on an actor class).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorCreation {
    /// The actor.
    pub actor: ActorId,
    /// Registered name of its class (the constructor's name without `::new`).
    pub class: String,
    /// A cluster-wide name to find it by with `get_actor`.
    pub name: Option<String>,
    /// Outlives the job that created it, until killed or the cluster stops.
    pub detached: bool,
    /// Times it is re-created after its process or node dies; `-1`: without limit.
    pub max_restarts: i32,
    /// Times a call is re-sent after the actor died while running it; `-1`: without limit.
    pub max_task_retries: i32,
}

impl TaskSpec {
    /// The actor this task creates or calls, if any.
    pub fn actor(&self) -> Option<ActorId> {
        match &self.kind {
            TaskKind::Function => None,
            TaskKind::CreateActor(c) => Some(c.actor),
            TaskKind::ActorCall(a) => Some(*a),
        }
    }

    /// Ids of the objects the task reads: its reference arguments.
    pub fn arg_refs(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.args.iter().filter_map(|a| match a {
            TaskArg::Ref(id) => Some(*id),
            TaskArg::Value(_) => None,
        })
    }
}

/// Where the node that runs a task finds a reference argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ArgSource {
    /// Not a reference: the value is in the spec.
    InSpec,
    /// Small object, value included.
    Inline(#[serde(with = "payload")] Vec<u8>),
    /// Large object held by these nodes.
    At(Vec<NodeAddress>),
}

/// A node id and the address of its object server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    /// The node.
    pub node: NodeId,
    /// Its object server.
    pub address: SocketAddr,
}

/// The head asks a node to run a task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskAssignment {
    /// The task.
    pub spec: Arc<TaskSpec>,
    /// Which try this is, from 0.
    pub attempt: u32,
    /// Where each argument is, one entry per `spec.args`.
    pub sources: Vec<ArgSource>,
    /// The job's binary.
    pub binary: BinaryHash,
}

/// How a task ended, as its node reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// Success; the value is inline or stored on the reporting node.
    Stored(StoredValue),
    /// The function failed (panic or error return); retrying would not help.
    Failed(TaskError),
    /// The worker process died; the head may retry.
    WorkerDied(String),
    /// A reference argument could not be fetched from any holder (one may have just
    /// died); the head re-runs the task once it knows where the argument is.
    ArgumentUnavailable {
        /// The argument.
        object: ObjectId,
        /// The last fetch error.
        reason: String,
    },
}

/// A finished object's value as reported to the head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StoredValue {
    /// Small: the value itself.
    Inline(#[serde(with = "payload")] Vec<u8>),
    /// Large: held in the reporting node's store.
    OnNode {
        /// Size in bytes.
        size: u64,
    },
}

/// An error that stands in for a task's value: what `get` returns instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Error)]
pub enum TaskError {
    /// The function panicked.
    #[error("task {function} panicked on node {node}: {message}")]
    Panicked {
        /// Registered function name.
        function: String,
        /// The panic message.
        message: String,
        /// Where it ran (node id and address).
        node: String,
    },
    /// The function returned an error.
    #[error("task {function} failed on node {node}: {message}")]
    Failed {
        /// Registered function name.
        function: String,
        /// The error, formatted with its causes.
        message: String,
        /// Where it ran.
        node: String,
    },
    /// The worker process died on every try.
    #[error(
        "task {function} lost its worker {attempts} time(s), retries exhausted; last: {reason}"
    )]
    WorkerDied {
        /// Registered function name.
        function: String,
        /// Tries made.
        attempts: u32,
        /// What happened to the last worker (signal, exit code, node death).
        reason: String,
    },
    /// The object's only copies were on nodes that died and it could not be recomputed.
    #[error(
        "object {object} was lost with the node(s) holding it and cannot be recomputed: {reason}"
    )]
    ObjectLost {
        /// The object, in hex.
        object: String,
        /// Why recomputation was impossible.
        reason: String,
    },
    /// The actor is dead (killed, out of restarts, its creator gone, or its
    /// constructor failed); every call on it, pending or new, ends with this.
    #[error("actor {actor} ({class}) died: {cause}")]
    ActorDied {
        /// The actor, in hex.
        actor: String,
        /// Its class.
        class: String,
        /// Why it died.
        cause: String,
    },
    /// The binary has no remote function of that name.
    #[error("no remote function named {function:?} in the job's binary")]
    UnknownFunction {
        /// The name asked for.
        function: String,
    },
    /// An argument or result could not be decoded.
    #[error("task {function}: {message}")]
    Codec {
        /// Registered function name.
        function: String,
        /// What failed.
        message: String,
    },
}

/// Messages to the head on the control stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToHead {
    /// New tasks; the sender holds a reference to each return object.
    SubmitTasks(Vec<TaskSpec>),
    /// A `put` of a small object; the sender holds a reference to it.
    PutInline {
        /// The new object.
        id: ObjectId,
        /// Its encoded value.
        #[serde(with = "payload")]
        value: Vec<u8>,
    },
    /// A `put` of a large object, already pushed to `node`; the sender holds a reference.
    PutStored {
        /// The new object.
        id: ObjectId,
        /// Where it was pushed.
        node: NodeId,
        /// Its size in bytes.
        size: u64,
    },
    /// `outer` holds references to `inner`: keep them alive while `outer` lives.
    /// Sent by whoever encodes `outer`, before it drops its own handles.
    Nest {
        /// The containing object.
        outer: ObjectId,
        /// The references inside it.
        inner: Vec<ObjectId>,
    },
    /// The sender now holds these references.
    AddRefs(Vec<ObjectId>),
    /// The sender no longer holds these references.
    RemoveRefs(Vec<ObjectId>),
    /// Tell the sender when these objects are ready (once each).
    Subscribe(Vec<ObjectId>),
    /// A worker blocked in `get` inside this task: free its CPU for others.
    TaskBlocked(TaskId),
    /// The worker resumed: take the CPU back.
    TaskUnblocked(TaskId),
    /// From nodes: still alive, and how full.
    Heartbeat(NodeLoad),
    /// From nodes: a task ended.
    TaskFinished {
        /// The task.
        task_id: TaskId,
        /// The try that ended.
        attempt: u32,
        /// How.
        outcome: TaskOutcome,
        /// How long its worker took, in microseconds (start-up and argument fetch not
        /// included).
        run_micros: u64,
    },
    /// From nodes: a copy of this object now lives here (after a pull).
    ObjectCopied(ObjectId),
    /// Ask for a [`ClusterStatus`].
    StatusRequest,
    /// From the autoscaler: what it is doing and why, shown by `rayish status`.
    AutoscalerReport(Box<AutoscalerReport>),
    /// Find the live actor named `name`; answered with [`FromHead::ActorFound`], and
    /// the asker then holds a reference to its handle object.
    GetActor {
        /// Echoed in the answer.
        request: u64,
        /// The name.
        name: String,
    },
    /// End an actor: its process is killed; with `no_restart` false it may be
    /// re-created as after a crash.
    KillActor {
        /// The actor.
        actor: ActorId,
        /// Never re-create it.
        no_restart: bool,
    },
    /// Answer [`FromHead::Synced`] with this number once everything sent before it
    /// is handled. A worker sends it before reporting a task whose run sent messages
    /// (puts, submits, nests): the node's report travels on another stream, and must
    /// not overtake them, or a reader of the result could find its objects unknown.
    Sync(u64),
    /// From nodes: an actor's process died (or was killed).
    ActorDied {
        /// The actor.
        actor: ActorId,
        /// How the process ended.
        reason: String,
    },
    /// The sender is exiting: treat it as disconnected now (its job ends, what it
    /// holds is released) rather than when its connection times out.
    Goodbye,
}

/// First frame of every stream a client opens: says what the stream is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StreamOpen {
    /// A control stream to the head.
    Control(Hello),
    /// A transfer stream.
    Transfer(TransferRequest),
}

/// Messages from the head on the control stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromHead {
    /// First message: the answer to [`Hello`].
    Welcome(Welcome),
    /// To a node: run this task.
    Execute(Box<TaskAssignment>),
    /// To a node: drop these objects from your store.
    DeleteObjects(Vec<ObjectId>),
    /// To a subscriber: this object is ready.
    ObjectReady {
        /// The object.
        id: ObjectId,
        /// Where to get it.
        location: ObjectLocation,
    },
    /// Answer to [`ToHead::StatusRequest`].
    Status(Box<ClusterStatus>),
    /// Something the driver's user should see (e.g. an infeasible task).
    Warning(String),
    /// To nodes: the job's driver is gone; stop its workers (detached actors excepted).
    JobEnded(JobId),
    /// To a node: kill this actor's process.
    KillActor(ActorId),
    /// Answer to [`ToHead::Sync`].
    Synced(u64),
    /// Answer to [`ToHead::GetActor`].
    ActorFound {
        /// The request.
        request: u64,
        /// The actor, or why there is none.
        result: Result<ActorInfo, String>,
    },
    /// Answer to [`ToHead::Goodbye`]: everything sent before it was handled.
    Farewell,
    /// To a node the head declared dead (it was silent for the node timeout, e.g.
    /// paused): its tasks were re-run elsewhere and its objects counted lost, so it
    /// must drop them and join again as a new node. The head closes the stream after.
    NodeDead(String),
}

/// A live actor as [`FromHead::ActorFound`] describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActorInfo {
    /// The actor.
    pub actor: ActorId,
    /// Its class's registered name.
    pub class: String,
    /// The object every handle to it holds.
    pub handle: ObjectId,
}

/// Where a ready object can be read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ObjectLocation {
    /// Small object: its value.
    Inline(#[serde(with = "payload")] Vec<u8>),
    /// Large object: nodes holding copies.
    Nodes(Vec<NodeAddress>),
    /// The object is an error.
    Error(TaskError),
}

/// What a node reports with each heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Objects in its store.
    pub store_objects: u64,
    /// Bytes in its store.
    pub store_bytes: u64,
    /// Bytes of freed shared segments its store keeps for reuse.
    pub store_free_bytes: u64,
    /// Values its store has written into reused segments, since it started.
    pub store_reused: u64,
    /// Worker processes alive.
    pub workers: u64,
}

/// A snapshot of the cluster for `rayish status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Every node that has joined, dead ones included.
    pub nodes: Vec<NodeStatus>,
    /// Tasks waiting for arguments or resources.
    pub pending_tasks: u64,
    /// Tasks running now.
    pub running_tasks: u64,
    /// Tasks finished since the head started.
    pub finished_tasks: u64,
    /// Resource shapes of tasks waiting for resources, with counts.
    pub pending_demand: Vec<(ResourceSet, u64)>,
    /// Resource shapes no node can ever satisfy, with counts.
    pub infeasible_demand: Vec<(ResourceSet, u64)>,
    /// Objects the head tracks.
    pub objects: u64,
    /// Drivers connected now.
    pub drivers: u64,
    /// Actors alive or being (re-)created now.
    pub actors: u64,
    /// The autoscaler's last report, if the head runs one.
    pub autoscaler: Option<AutoscalerReport>,
}

/// What the autoscaler is doing, as it last reported.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AutoscalerReport {
    /// Fewest and most workers it keeps.
    pub min_workers: u32,
    /// Most workers.
    pub max_workers: u32,
    /// Seconds a worker may be idle before it is stopped.
    pub idle_timeout_secs: f64,
    /// Each machine of the pool and what it is doing.
    pub machines: Vec<PoolMachine>,
    /// Its latest decisions and their reasons, newest last.
    pub recent: Vec<String>,
}

/// One machine of the autoscaler's pool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolMachine {
    /// Host name or address, as in the cluster file.
    pub host: String,
    /// `idle` (no node), `launching`, `running`, `stopping` or `failed`.
    pub state: String,
    /// Why it is in that state, or for how long a running worker has been idle.
    pub detail: String,
}

/// One node in a [`ClusterStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub node_id: NodeId,
    /// Its object server address.
    pub address: SocketAddr,
    /// Host name.
    pub hostname: String,
    /// Whether it is alive.
    pub alive: bool,
    /// Everything it offers.
    pub total: ResourceSet,
    /// What is free now.
    pub available: ResourceSet,
    /// Tasks running there.
    pub running_tasks: u64,
    /// Tasks it has finished.
    pub finished_tasks: u64,
    /// Its last reported load.
    pub load: NodeLoad,
}

// ---------------------------------------------------------------------------
// Transfer streams
// ---------------------------------------------------------------------------

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

/// Why a node did not store a value a worker put.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Error)]
pub enum PutError {
    /// The store is full and the value could not be spilled.
    #[error("{0}")]
    StoreFull(String),
    /// Anything else (a bad segment, the node going away).
    #[error("{0}")]
    Failed(String),
}

// ---------------------------------------------------------------------------
// Worker socket
// ---------------------------------------------------------------------------

/// An encoded value handed between a node and a worker it started: small ones inside
/// the message, large ones as a shared-memory segment both map ([`crate::object_store::shm`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerValue {
    /// The bytes themselves.
    Inline(#[serde(with = "payload")] Vec<u8>),
    /// A file in the node's shared-memory directory (or its spill directory).
    Shared {
        /// The file.
        path: std::path::PathBuf,
        /// Its size in bytes.
        len: u64,
    },
}

/// Node to worker process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run this task with these resolved argument values.
    Run {
        /// The task.
        task_id: TaskId,
        /// Registered function name.
        function: String,
        /// Argument values, in order.
        args: Vec<WorkerValue>,
        /// Where to store the result.
        return_id: ObjectId,
        /// A function, an actor's constructor, or a method of the actor this worker holds.
        kind: RunKind,
    },
    /// Answer to [`FromWorker::GetObject`].
    Object {
        /// The request.
        request: u64,
        /// The value or why it could not be had.
        value: Result<WorkerValue, String>,
    },
    /// Answer to [`FromWorker::LendSegment`].
    Lent {
        /// The request.
        request: u64,
        /// The segment to fill, sized as asked; `None`: make a new one.
        path: Option<std::path::PathBuf>,
    },
    /// Answer to [`FromWorker::PutObject`].
    PutDone {
        /// The request.
        request: u64,
        /// Ok, or why the store refused.
        result: Result<(), PutError>,
    },
}

/// What a worker runs for a [`ToWorker::Run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunKind {
    /// A remote function.
    Function,
    /// An actor's constructor; the worker keeps the value it returns.
    CreateActor,
    /// A method of the actor the worker holds.
    ActorMethod,
}

/// Worker process to node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    /// First message: the worker is up and connected to the head.
    Ready {
        /// The worker's process id.
        pid: u32,
    },
    /// The task ended.
    Finished {
        /// The task.
        task_id: TaskId,
        /// Encoded value or error.
        result: Result<WorkerValue, TaskError>,
    },
    /// Fetch a large object into this node and hand it over.
    GetObject {
        /// Request number, echoed in the answer.
        request: u64,
        /// The object.
        id: ObjectId,
        /// Nodes that hold it.
        holders: Vec<NodeAddress>,
    },
    /// The running task blocked in `get` (true) or resumed (false): lend its CPU.
    Blocked {
        /// The task.
        task_id: TaskId,
        /// Blocked or resumed.
        blocked: bool,
    },
    /// Lend a free shared segment to write a large value of `len` bytes into, before a
    /// `PutObject` (saves the kernel zeroing a new file's pages).
    LendSegment {
        /// Request number, echoed in the answer.
        request: u64,
        /// The object the value will be.
        id: ObjectId,
        /// Its encoded size.
        len: u64,
    },
    /// Store a large object made by `put` inside a task.
    PutObject {
        /// Request number, echoed in the answer.
        request: u64,
        /// The object.
        id: ObjectId,
        /// Its encoded value.
        value: WorkerValue,
    },
    /// A function call sent behind the running task is given back unrun: that task
    /// blocked in `get`, and what it waits for may be this very call.
    Declined {
        /// The call given back.
        task_id: TaskId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

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

/// Encoded values inside messages go through serde's byte-string path: the bytes on
/// the wire are the same as a sequence of `u8` (bincode writes a length, then the
/// bytes), but serde's generic `Vec<u8>` visits them one byte at a time, which showed
/// as the node's busiest code when moving megabyte objects.
mod payload {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(v, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        serde_bytes::deserialize(d)
    }
}
