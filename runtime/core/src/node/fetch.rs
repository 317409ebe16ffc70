//! Getting what a task needs onto this node: job binaries from the head's cache and
//! objects from the nodes that hold them.

use super::NodeInner;
use crate::ids::{BinaryHash, ObjectId};
use crate::protocol::{NodeAddress, ToHead};
use crate::transfer::{fetch_binary, pull_object_into, TransferError};
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::PathBuf;

impl NodeInner {
    pub(super) async fn binary(&self, hash: &BinaryHash) -> Result<PathBuf, TransferError> {
        if let Some(path) = self.known_binaries.get(hash) {
            return Ok(path.clone());
        }
        // One look-up or fetch at a time: the second waiter then finds it known.
        let _guard = self.binary_fetch.lock().await;
        if let Some(path) = self.known_binaries.get(hash) {
            return Ok(path.clone());
        }
        let path = self.cfg.binaries.path(hash)?;
        // A file already there runs only once it hashed to its name in this process
        // (see `BinaryCache::contains`): the cache is private to this user, and the
        // check catches anything put there before.
        let cache = self.cfg.binaries.clone();
        let wanted = hash.clone();
        let cached = tokio::task::spawn_blocking(move || cache.contains(&wanted))
            .await
            .map_err(|e| TransferError::Stream(e.to_string()))?;
        if cached {
            self.known_binaries.insert(hash.clone(), path.clone());
            return Ok(path);
        }
        tracing::info!(%hash, "fetching a job binary from the head");
        let conn = self
            .head_conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(conn) = conn else {
            return Err(TransferError::Stream(format!(
                "binary {hash} is not in the head's cache {} (or failed its check)",
                path.display()
            )));
        };
        let path = fetch_binary(&conn, hash, &self.cfg.binaries).await?;
        self.known_binaries.insert(hash.clone(), path.clone());
        Ok(path)
    }

    /// The value of `id`, pulled from a holder if it is not here.
    pub(super) async fn object(
        &self,
        id: ObjectId,
        holders: &[NodeAddress],
    ) -> Result<Bytes, TransferError> {
        if let Some(v) = self.store.get(&id) {
            return Ok(v);
        }
        let mut last = None;
        for holder in holders.iter().filter(|h| h.node != self.cfg.node_id) {
            match self.pull_from(holder.address, id).await {
                Ok(value) => {
                    self.head.send(ToHead::ObjectCopied(id));
                    return Ok(value);
                }
                Err(e) => {
                    tracing::warn!(object = ?id, holder = %holder.address, "pull failed: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| TransferError::Stream("no live node holds the object".into())))
    }

    /// Makes a copy of `id` here for nodes that cannot reach its holders, as the
    /// head asked, and tells the head how that went.
    pub(super) async fn copy_for_others(&self, id: ObjectId, holders: Vec<NodeAddress>) {
        if self.store.contains(&id) {
            // Already here (a task's argument meanwhile): the head may not know yet.
            self.head.send(ToHead::ObjectCopied(id));
            return;
        }
        // `object` reports the copy itself when it succeeds.
        if let Err(e) = self.object(id, &holders).await {
            self.head.send(ToHead::ObjectCopyFailed {
                id,
                reason: e.to_string(),
            });
        }
    }

    /// Pulls `id` from `addr` straight into this node's store.
    async fn pull_from(&self, addr: SocketAddr, id: ObjectId) -> Result<Bytes, TransferError> {
        let conn = self
            .peers
            .get(addr)
            .await
            .map_err(|e| TransferError::Stream(e.to_string()))?;
        pull_object_into(&conn, id, &self.store).await
    }
}
