//! A worker's requests to its node: objects to get or put, and segments to lend.

use super::worker_pool::{Worker, WorkerRequest};
use super::NodeInner;
use crate::object_store::StoreError;
use crate::protocol::{PutError, ToWorker, WorkerValue};
use bytes::Bytes;
use std::sync::Arc;

impl NodeInner {
    pub(super) async fn serve_worker(self: Arc<Self>, worker: Arc<Worker>, request: WorkerRequest) {
        match request {
            // Handled in order by the request loop, never here.
            WorkerRequest::Blocked { .. } | WorkerRequest::ActorDied { .. } => {}
            WorkerRequest::Get {
                request,
                id,
                holders,
            } => {
                let value = self
                    .object(id, &holders)
                    .await
                    .map(|b| self.worker_value(id, b))
                    .map_err(|e| e.to_string());
                worker.reply(ToWorker::Object { request, value });
            }
            WorkerRequest::Lend { request, id, len } => {
                let path = usize::try_from(len)
                    .ok()
                    .and_then(|len| self.store.lend(id, len));
                worker.reply(ToWorker::Lent { request, path });
            }
            WorkerRequest::Put { request, id, value } => {
                let result = match value {
                    WorkerValue::Inline(v) => self.store.insert(id, Bytes::from(v)),
                    WorkerValue::Shared { path, len } => self.store.insert_segment(id, path, len),
                };
                let result = result.map_err(|e| match e {
                    StoreError::Full { .. } => PutError::StoreFull(e.to_string()),
                    other => PutError::Failed(other.to_string()),
                });
                worker.reply(ToWorker::PutDone { request, result });
            }
        }
    }
}
