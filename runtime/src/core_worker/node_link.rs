//! A worker process's link to the node that started it.

use crate::ids::{ObjectId, TaskId};
use crate::protocol::{FromWorker, NodeAddress, ToWorker};
use crate::transport::{spawn_writer, FrameReader, MessageSender};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// A task the node asked this worker to run.
#[derive(Debug)]
pub struct RunRequest {
    /// The task.
    pub task_id: TaskId,
    /// Registered function name.
    pub function: String,
    /// Encoded arguments.
    pub args: Vec<Vec<u8>>,
    /// Where the result goes.
    pub return_id: ObjectId,
}

/// The link.
pub struct NodeLink {
    sender: MessageSender<FromWorker>,
    pending: Arc<DashMap<u64, oneshot::Sender<ToWorker>>>,
    next: AtomicU64,
}

impl NodeLink {
    /// Wraps the inherited socket; tasks to run arrive on the returned channel, which
    /// closes when the node goes away.
    pub fn start(stream: tokio::net::UnixStream) -> (Self, std::sync::mpsc::Receiver<RunRequest>) {
        let (r, w) = stream.into_split();
        let sender = spawn_writer::<_, FromWorker>(w);
        let pending: Arc<DashMap<u64, oneshot::Sender<ToWorker>>> = Arc::new(DashMap::new());
        let (runs_tx, runs_rx) = std::sync::mpsc::channel();
        let p = pending.clone();
        tokio::spawn(async move {
            let mut reader = FrameReader::<_, ToWorker>::new(r);
            loop {
                match reader.next().await {
                    Ok(Some(ToWorker::Run {
                        task_id,
                        function,
                        args,
                        return_id,
                    })) => {
                        if runs_tx
                            .send(RunRequest {
                                task_id,
                                function,
                                args,
                                return_id,
                            })
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(Some(reply @ ToWorker::Object { request, .. }))
                    | Ok(Some(reply @ ToWorker::PutDone { request, .. })) => {
                        if let Some((_, tx)) = p.remove(&request) {
                            let _ = tx.send(reply);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!("bad message from the node: {e}");
                        break;
                    }
                }
            }
            // Dropping runs_tx ends the worker's main loop.
            p.clear();
        });
        (
            Self {
                sender,
                pending,
                next: AtomicU64::new(1),
            },
            runs_rx,
        )
    }

    /// Sends a message to the node.
    pub fn send(&self, msg: FromWorker) -> bool {
        self.sender.send(msg)
    }

    async fn request(&self, make: impl FnOnce(u64) -> FromWorker) -> Option<ToWorker> {
        let request = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.insert(request, tx);
        if !self.sender.send(make(request)) {
            self.pending.remove(&request);
            return None;
        }
        rx.await.ok()
    }

    /// Has the node fetch `id` and hand it over.
    pub async fn get(&self, id: ObjectId, holders: Vec<NodeAddress>) -> Result<Vec<u8>, String> {
        match self
            .request(|request| FromWorker::GetObject {
                request,
                id,
                holders,
            })
            .await
        {
            Some(ToWorker::Object { value, .. }) => value,
            _ => Err("the node went away".into()),
        }
    }

    /// Has the node store `value` as `id`.
    pub async fn put(&self, id: ObjectId, value: Vec<u8>) -> Result<(), String> {
        match self
            .request(|request| FromWorker::PutObject { request, id, value })
            .await
        {
            Some(ToWorker::PutDone { result, .. }) => result,
            _ => Err("the node went away".into()),
        }
    }
}
