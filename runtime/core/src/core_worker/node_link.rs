//! A worker process's link to the node that started it: a Unix socket read and written
//! with plain blocking calls, on the thread that needs the answer.
//!
//! Tasks arrive only while the worker is idle, and replies only to requests it made,
//! so the thread waiting for something reads the socket itself ("leader reads"): no
//! hand-off to another thread per message. Whatever a reader receives that is meant
//! for another thread is left in a shared stash and that thread is woken.

use crate::ids::{ObjectId, TaskId};
use crate::protocol::{
    encode_frame_within, read_frame_blocking, FromWorker, NodeAddress, ProtocolError, PutError,
    RunKind, ToWorker, WorkerValue, INLINE_OBJECT_MAX, MAX_WORKER_FRAME_LEN,
};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// A task the node asked this worker to run.
#[derive(Debug)]
pub struct RunRequest {
    /// The task.
    pub task_id: TaskId,
    /// Registered function name.
    pub function: String,
    /// Encoded arguments (large ones mapped from shared memory), or why one could
    /// not be mapped.
    pub args: Result<Vec<Bytes>, String>,
    /// Where the result goes.
    pub return_id: ObjectId,
    /// Function, actor constructor or actor method.
    pub kind: RunKind,
}

#[derive(Default)]
struct Stash {
    runs: VecDeque<RunRequest>,
    replies: HashMap<u64, ToWorker>,
    closed: bool,
}

/// A value from the node as bytes: inline ones as they are, shared ones mapped.
pub fn open_value(value: WorkerValue) -> Result<Bytes, String> {
    match value {
        WorkerValue::Inline(v) => Ok(Bytes::from(v)),
        WorkerValue::Shared { path, len } => crate::object_store::shm::map_segment(&path, len)
            .map_err(|e| format!("mapping {}: {e}", path.display())),
    }
}

/// The link.
pub struct NodeLink {
    /// The node's shared-memory directory, where large values are handed over.
    shm_dir: Option<PathBuf>,
    writer: Mutex<UnixStream>,
    /// Buffered: the frame header and body, and often the next frames, in one read.
    reader: Mutex<std::io::BufReader<UnixStream>>,
    stash: Mutex<Stash>,
    arrived: Condvar,
    next: AtomicU64,
    /// Threads of the running task now blocked in `get`. While any is, function calls
    /// the node sent behind the task are given back (`Declined`) rather than held: the
    /// blocked task may be waiting for one of them.
    blocked: AtomicUsize,
    /// A thread runs [`Self::read_while_blocked`].
    blocked_reader: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NodeLink {
    /// Wraps the inherited socket (in blocking mode); large values go through
    /// `shm_dir` when the node has one.
    pub fn new(stream: UnixStream, shm_dir: Option<PathBuf>) -> std::io::Result<Self> {
        stream.set_nonblocking(false)?;
        let writer = stream.try_clone()?;
        Ok(Self {
            shm_dir,
            writer: Mutex::new(writer),
            reader: Mutex::new(std::io::BufReader::with_capacity(64 * 1024, stream)),
            stash: Mutex::new(Stash::default()),
            arrived: Condvar::new(),
            next: AtomicU64::new(1),
            blocked: AtomicUsize::new(0),
            blocked_reader: AtomicBool::new(false),
        })
    }

    /// Sends a message to the node; fails when it cannot be encoded (too large) or the
    /// node is gone.
    pub fn try_send(&self, msg: &FromWorker) -> Result<(), String> {
        let mut buf = Vec::new();
        encode_frame_within(msg, &mut buf, MAX_WORKER_FRAME_LEN).map_err(|e| e.to_string())?;
        lock(&self.writer)
            .write_all(&buf)
            .map_err(|e| format!("the node went away: {e}"))
    }

    /// Sends a message to the node; false when it could not be sent.
    pub fn send(&self, msg: FromWorker) -> bool {
        self.try_send(&msg).is_ok()
    }

    /// Waits until `take` finds what it wants in the stash, reading the socket while no
    /// other thread is. `None` once the node has closed the socket.
    fn wait_for<R>(&self, mut take: impl FnMut(&mut Stash) -> Option<R>) -> Option<R> {
        let mut stash = lock(&self.stash);
        loop {
            if let Some(r) = take(&mut stash) {
                return Some(r);
            }
            if stash.closed {
                return None;
            }
            let reader = self.reader.try_lock();
            match reader {
                Ok(mut reader) => {
                    drop(stash);
                    let msg =
                        read_frame_blocking::<_, ToWorker>(&mut *reader, MAX_WORKER_FRAME_LEN);
                    stash = lock(&self.stash);
                    self.absorb(&mut stash, msg);
                    drop(reader);
                    // Someone else may be waiting for what was read, or to read next.
                    self.arrived.notify_all();
                }
                Err(_) => {
                    stash = self.arrived.wait(stash).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    /// Files one message read off the socket: a run is stashed (or given back, while
    /// the running task is blocked), a reply kept for its requester.
    fn absorb(&self, stash: &mut Stash, msg: Result<Option<ToWorker>, ProtocolError>) {
        match msg {
            Ok(Some(ToWorker::Run {
                task_id,
                kind: RunKind::Function,
                ..
            })) if self.blocked.load(Ordering::SeqCst) > 0 => {
                self.send(FromWorker::Declined { task_id });
            }
            Ok(Some(ToWorker::Run {
                task_id,
                function,
                args,
                return_id,
                kind,
            })) => stash.runs.push_back(RunRequest {
                task_id,
                function,
                args: args.into_iter().map(open_value).collect(),
                return_id,
                kind,
            }),
            Ok(Some(reply @ ToWorker::Object { request, .. }))
            | Ok(Some(reply @ ToWorker::PutDone { request, .. }))
            | Ok(Some(reply @ ToWorker::Lent { request, .. })) => {
                stash.replies.insert(request, reply);
            }
            Ok(None) => stash.closed = true,
            Err(e) => {
                eprintln!("rayish worker: bad message from the node: {e}");
                stash.closed = true;
            }
        }
    }

    /// Reads the socket while the running task is blocked in `get` and no other
    /// thread reads it, so that a follower the node sent meanwhile is given back at
    /// once: the blocked thread waits on the head, not on this socket. Run on a
    /// thread of its own (see [`Self::needs_blocked_reader`]); returns once the task
    /// has resumed (after one more message) or another thread reads.
    pub fn read_while_blocked(&self) {
        while self.blocked.load(Ordering::SeqCst) > 0 {
            let Ok(mut reader) = self.reader.try_lock() else {
                break;
            };
            let msg = read_frame_blocking::<_, ToWorker>(&mut *reader, MAX_WORKER_FRAME_LEN);
            let mut stash = lock(&self.stash);
            self.absorb(&mut stash, msg);
            let closed = stash.closed;
            drop(stash);
            drop(reader);
            self.arrived.notify_all();
            if closed {
                break;
            }
        }
        self.blocked_reader.store(false, Ordering::SeqCst);
    }

    /// Whether a thread should be started for [`Self::read_while_blocked`] (none runs);
    /// if so, the caller starts one or calls [`Self::no_blocked_reader`].
    pub fn needs_blocked_reader(&self) -> bool {
        !self.blocked_reader.swap(true, Ordering::SeqCst)
    }

    /// The thread [`Self::needs_blocked_reader`] asked for could not be started.
    pub fn no_blocked_reader(&self) {
        self.blocked_reader.store(false, Ordering::SeqCst);
    }

    /// The running task's thread blocked in `get` (or resumed). While blocked, the
    /// function calls waiting behind it here, and those that arrive, go back to the
    /// node to run elsewhere. Actor calls stay: an actor runs its calls in order.
    pub fn set_blocked(&self, blocked: bool) {
        if !blocked {
            self.blocked.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        self.blocked.fetch_add(1, Ordering::SeqCst);
        let declined: Vec<TaskId> = {
            let mut stash = lock(&self.stash);
            let (give_back, keep) = std::mem::take(&mut stash.runs)
                .into_iter()
                .partition(|r| r.kind == RunKind::Function);
            stash.runs = keep;
            give_back
                .into_iter()
                .map(|r: RunRequest| r.task_id)
                .collect()
        };
        for task_id in declined {
            self.send(FromWorker::Declined { task_id });
        }
    }

    /// The next task to run; `None` when the node has gone away.
    pub fn next_run(&self) -> Option<RunRequest> {
        self.wait_for(|s| s.runs.pop_front())
    }

    fn request(&self, make: impl FnOnce(u64) -> FromWorker) -> Option<ToWorker> {
        let request = self.next.fetch_add(1, Ordering::Relaxed);
        if !self.send(make(request)) {
            return None;
        }
        self.wait_for(|s| s.replies.remove(&request))
    }

    /// Has the node fetch `id` and hand it over (mapped, if it is in shared memory).
    pub fn get(&self, id: ObjectId, holders: Vec<NodeAddress>) -> Result<Bytes, String> {
        match self.request(|request| FromWorker::GetObject {
            request,
            id,
            holders,
        }) {
            Some(ToWorker::Object { value, .. }) => value.and_then(open_value),
            _ => Err("the node went away".into()),
        }
    }

    /// Has the node store `value` as `id`.
    pub fn put(&self, id: ObjectId, value: Vec<u8>) -> Result<(), PutError> {
        let value = self.hand_over(id, value).map_err(PutError::Failed)?;
        self.store(id, value)
    }

    /// Has the node store as `id` a value of `len` encoded bytes that `fill` writes:
    /// straight into shared memory when large, without an intermediate buffer.
    pub fn put_with(
        &self,
        id: ObjectId,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
    ) -> Result<(), PutError> {
        let value = match &self.shm_dir {
            Some(dir) if len > INLINE_OBJECT_MAX => {
                let path = self.write_shared(dir, id, len, fill)?;
                WorkerValue::Shared {
                    path,
                    len: len as u64,
                }
            }
            _ => {
                let mut v = vec![0; len];
                fill(&mut v).map_err(PutError::Failed)?;
                WorkerValue::Inline(v)
            }
        };
        self.store(id, value)
    }

    fn store(&self, id: ObjectId, value: WorkerValue) -> Result<(), PutError> {
        match self.request(|request| FromWorker::PutObject { request, id, value }) {
            Some(ToWorker::PutDone { result, .. }) => result,
            _ => Err(PutError::Failed("the node went away".into())),
        }
    }

    /// Fills a segment for `id` in the node's directory: one the node lends (a freed
    /// value's, whose pages exist already) or, if it has none to spare, a new one.
    fn write_shared(
        &self,
        dir: &std::path::Path,
        id: ObjectId,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
    ) -> Result<PathBuf, PutError> {
        let failed =
            |e: String| PutError::Failed(format!("shared memory in {}: {e}", dir.display()));
        let lent = match self.request(|request| FromWorker::LendSegment {
            request,
            id,
            len: len as u64,
        }) {
            Some(ToWorker::Lent { path, .. }) => path,
            _ => return Err(PutError::Failed("the node went away".into())),
        };
        match lent {
            Some(path) => {
                let mut map = crate::object_store::shm::map_segment_mut(&path, len as u64)
                    .map_err(|e| failed(e.to_string()))?;
                fill(&mut map[..]).map_err(PutError::Failed)?;
                Ok(path)
            }
            None => {
                let mut segment = crate::object_store::shm::Segment::create(dir, id, len)
                    .map_err(|e| failed(e.to_string()))?;
                if let Err(e) = fill(segment.bytes_mut()) {
                    segment.unlink();
                    return Err(PutError::Failed(e));
                }
                Ok(segment.path().to_path_buf())
            }
        }
    }

    /// Packs a value for the node: a large one is written to a shared segment that
    /// the node adopts, instead of travelling through the socket.
    pub fn hand_over(&self, id: ObjectId, value: Vec<u8>) -> Result<WorkerValue, String> {
        match &self.shm_dir {
            Some(dir) if value.len() > INLINE_OBJECT_MAX => {
                let len = value.len();
                let path = self
                    .write_shared(dir, id, len, |b| {
                        b.copy_from_slice(&value);
                        Ok(())
                    })
                    .map_err(|e| match e {
                        PutError::Failed(r) | PutError::StoreFull(r) => r,
                    })?;
                Ok(WorkerValue::Shared {
                    path,
                    len: len as u64,
                })
            }
            _ => Ok(WorkerValue::Inline(value)),
        }
    }
}
