//! A node's object store: the values of large objects made or pulled here.
//!
//! Values are immutable once stored and shared by reference count, so serving one to
//! several readers at once copies nothing until it reaches a socket.

use crate::ids::ObjectId;
use bytes::Bytes;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The store.
#[derive(Debug, Default)]
pub struct ObjectStore {
    objects: DashMap<ObjectId, Bytes>,
    bytes: AtomicU64,
}

impl ObjectStore {
    /// Stores `value` under `id` (a second store of the same id keeps the first value:
    /// objects are immutable).
    pub fn insert(&self, id: ObjectId, value: Bytes) {
        let len = value.len() as u64;
        if self.objects.insert(id, value).is_none() {
            self.bytes.fetch_add(len, Ordering::Relaxed);
        } else {
            // Same object stored twice (e.g. a retried pull): same size, count unchanged.
        }
    }

    /// The value of `id`, if held here.
    pub fn get(&self, id: &ObjectId) -> Option<Bytes> {
        self.objects.get(id).map(|v| v.clone())
    }

    /// Whether `id` is held here.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.objects.contains_key(id)
    }

    /// Drops `id`.
    pub fn remove(&self, id: &ObjectId) {
        if let Some((_, v)) = self.objects.remove(id) {
            self.bytes.fetch_sub(v.len() as u64, Ordering::Relaxed);
        }
    }

    /// Objects held.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}
