//! `put`: a value stored where this process's readers will find it (inline in the
//! head, in the local node's store, or handed to the node by a worker).

use super::{CoreWorker, GetError};
use crate::ids::ObjectId;
use crate::protocol::{ObjectLocation, ToHead, INLINE_OBJECT_MAX};
use crate::transfer::push_object;
use bytes::Bytes;

/// A store's refusal as the error a caller sees.
pub(super) fn store_error(id: ObjectId, e: crate::object_store::StoreError) -> GetError {
    match e {
        crate::object_store::StoreError::Full { .. } => GetError::StoreFull(e.to_string()),
        other => GetError::Unavailable {
            id,
            reason: other.to_string(),
        },
    }
}

/// A node's refusal of a worker's value as the error a caller sees.
pub(super) fn put_error(id: ObjectId, e: crate::protocol::PutError) -> GetError {
    match e {
        crate::protocol::PutError::StoreFull(reason) => GetError::StoreFull(reason),
        crate::protocol::PutError::Failed(reason) => GetError::Unavailable { id, reason },
    }
}

impl CoreWorker {
    /// Stores an encoded value as a new object held by this process.
    pub fn put(&self, id: ObjectId, value: Vec<u8>) -> Result<(), GetError> {
        if !self.is_connected() {
            return Err(self.down_error());
        }
        if value.len() <= INLINE_OBJECT_MAX {
            self.slots.entry(id).or_default().location =
                Some(ObjectLocation::Inline(value.clone()));
            self.to_head_noting(ToHead::PutInline { id, value }, |lineage| lineage.put(id));
            return Ok(());
        }
        let size = value.len() as u64;
        let stored_on = match (&self.node, self.local_store.get()) {
            (None, Some((node, store))) => {
                store
                    .insert(id, Bytes::from(value))
                    .map_err(|e| store_error(id, e))?;
                *node
            }
            (Some((link, node)), _) => {
                link.put(id, value).map_err(|e| put_error(id, e))?;
                *node
            }
            (None, None) => {
                let conn = self.head_conn();
                self.rt
                    .block_on(async move { push_object(&conn, id, &value).await })
                    .map_err(|e| match e {
                        crate::transfer::TransferError::StoreFull(reason) => {
                            GetError::StoreFull(reason)
                        }
                        other => GetError::Unavailable {
                            id,
                            reason: other.to_string(),
                        },
                    })?;
                self.head_node()
            }
        };
        self.slots.entry(id).or_default();
        self.to_head(ToHead::PutStored {
            id,
            node: stored_on,
            size,
        });
        Ok(())
    }

    /// Stores as a new object held by this process a value of `len` encoded bytes that
    /// `fill` writes. A large value on a node (this process's own, or its worker's
    /// node) is written straight into the store's shared memory, with no intermediate
    /// buffer; elsewhere this is [`Self::put`].
    pub fn put_with(
        &self,
        id: ObjectId,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
    ) -> Result<(), GetError> {
        if !self.is_connected() {
            return Err(self.down_error());
        }
        let stored_on = match (&self.node, self.local_store.get()) {
            (None, Some((node, store))) if len > INLINE_OBJECT_MAX => {
                let mut value = store.new_value(id, len).map_err(|e| store_error(id, e))?;
                if let Err(e) = fill(value.bytes_mut()) {
                    value.discard();
                    return Err(GetError::Encode(e));
                }
                store
                    .insert_written(id, value)
                    .map_err(|e| store_error(id, e))?;
                *node
            }
            (Some((link, node)), _) if len > INLINE_OBJECT_MAX => {
                link.put_with(id, len, fill).map_err(|e| put_error(id, e))?;
                *node
            }
            _ => {
                let mut value = vec![0; len];
                fill(&mut value).map_err(GetError::Encode)?;
                return self.put(id, value);
            }
        };
        self.slots.entry(id).or_default();
        self.to_head(ToHead::PutStored {
            id,
            node: stored_on,
            size: len as u64,
        });
        Ok(())
    }

    // -- actors -------------------------------------------------------------
}
