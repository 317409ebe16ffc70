//! The object table (Ray's object directory plus owner-side reference counting):
//! where every object is, whether it is ready, and who references it.
//!
//! An object lives while its reference count is above zero. The count is the sum of:
//! processes holding an `ObjectRef` to it (each counted once, released when the process
//! disconnects), pending tasks that take it as an argument, and objects that contain a
//! reference to it. Counting is centralised at the head, so it is correct across
//! processes as long as each process's messages arrive in order, which one control
//! stream per process guarantees.

use crate::ids::{NodeId, ObjectId, PeerId};
use crate::protocol::{TaskError, TaskSpec};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;

/// What the head knows of an object's value.
#[derive(Debug, Clone)]
pub(super) enum ObjectValue {
    /// The task that makes it has not finished.
    Pending,
    /// Small value kept by the head itself.
    Inline(Vec<u8>),
    /// Large value on these nodes.
    OnNodes {
        /// Nodes holding a copy.
        nodes: HashSet<NodeId>,
        /// Size in bytes.
        size: u64,
    },
    /// An error stands in for the value.
    Error(Box<TaskError>),
}

/// One object's entry.
#[derive(Debug)]
struct ObjectEntry {
    /// Its value or where it is.
    value: ObjectValue,
    /// References: holders + pins + containers.
    count: u64,
    /// References it contains, released when it is freed.
    nested: Vec<ObjectId>,
    /// The task that made it, kept while the object lives so that it can be re-made
    /// when its only copies are lost (lineage).
    creator: Option<Arc<TaskSpec>>,
    /// Peers waiting to hear that it is ready.
    subscribers: Vec<PeerId>,
}

impl ObjectEntry {
    fn new(value: ObjectValue) -> Self {
        Self {
            value,
            count: 0,
            nested: Vec::new(),
            creator: None,
            subscribers: Vec::new(),
        }
    }

    /// Whether the value (or its error) is known.
    fn is_ready(&self) -> bool {
        !matches!(self.value, ObjectValue::Pending)
    }
}

/// What [`ObjectTable::release`] freed, for the caller to act on.
#[derive(Debug, Default)]
pub(super) struct Freed {
    /// Objects removed from the directory.
    pub(super) objects: Vec<ObjectId>,
    /// Copies on nodes to delete.
    pub(super) node_copies: Vec<(NodeId, ObjectId)>,
}

/// The directory itself.
#[derive(Debug, Default)]
pub(super) struct ObjectTable {
    objects: HashMap<ObjectId, ObjectEntry>,
    /// Which objects each peer holds, to release them when it disconnects.
    held: HashMap<PeerId, HashSet<ObjectId>>,
}

impl ObjectTable {
    /// Every object with its value and reference count, and who holds which (for the
    /// state API).
    pub(super) fn listing(
        &self,
    ) -> (
        impl Iterator<Item = (&ObjectId, &ObjectValue, u64)>,
        &HashMap<PeerId, HashSet<ObjectId>>,
    ) {
        (
            self.objects.iter().map(|(id, e)| (id, &e.value, e.count)),
            &self.held,
        )
    }

    /// Number of objects tracked.
    pub(super) fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether `id` is listed (not freed).
    pub(super) fn contains(&self, id: &ObjectId) -> bool {
        self.objects.contains_key(id)
    }

    /// What is known of `id`'s value.
    pub(super) fn value(&self, id: &ObjectId) -> Option<&ObjectValue> {
        self.objects.get(id).map(|e| &e.value)
    }

    /// `id`'s value is now `value` (lost, being re-made, or known again).
    pub(super) fn set_value(&mut self, id: &ObjectId, value: ObjectValue) {
        if let Some(entry) = self.objects.get_mut(id) {
            entry.value = value;
        }
    }

    /// `peer` waits to hear that `id` is ready: `Some(true)` if it already is (the
    /// caller answers now), `Some(false)` if `peer` will be told, `None` if `id` is
    /// unknown.
    pub(super) fn subscribe(&mut self, id: &ObjectId, peer: PeerId) -> Option<bool> {
        let entry = self.objects.get_mut(id)?;
        if entry.is_ready() {
            return Some(true);
        }
        entry.subscribers.push(peer);
        Some(false)
    }

    /// `id` became ready: the peers waiting to hear it, now to be told.
    pub(super) fn take_subscribers(&mut self, id: &ObjectId) -> Vec<PeerId> {
        self.objects
            .get_mut(id)
            .map(|e| std::mem::take(&mut e.subscribers))
            .unwrap_or_default()
    }

    /// `task` made `id`: kept so that `id` can be re-made if its copies are lost.
    pub(super) fn set_creator(&mut self, id: &ObjectId, task: Arc<TaskSpec>) {
        if let Some(entry) = self.objects.get_mut(id) {
            entry.creator = Some(task);
        }
    }

    /// The task that made `id`, taken (to re-make it once).
    pub(super) fn take_creator(&mut self, id: &ObjectId) -> Option<Arc<TaskSpec>> {
        self.objects.get_mut(id)?.creator.take()
    }

    /// `node` holds a copy of `id` now: false if `id` is not stored on nodes (it
    /// was freed meanwhile, and the copy is garbage).
    pub(super) fn add_copy(&mut self, id: &ObjectId, node: NodeId) -> bool {
        match self.objects.get_mut(id).map(|e| &mut e.value) {
            Some(ObjectValue::OnNodes { nodes, .. }) => {
                nodes.insert(node);
                true
            }
            _ => false,
        }
    }

    /// `node`'s copy of `id` is gone: whether that was the last copy.
    pub(super) fn drop_copy(&mut self, id: &ObjectId, node: NodeId) -> bool {
        match self.objects.get_mut(id).map(|e| &mut e.value) {
            Some(ObjectValue::OnNodes { nodes, .. }) => {
                nodes.remove(&node);
                nodes.is_empty()
            }
            _ => false,
        }
    }

    /// A `put` of `id` by `holder`: as [`Self::create`], unless `id` already has a
    /// value (objects are written once), which is left alone: `false`.
    pub(super) fn put_once(&mut self, id: ObjectId, value: ObjectValue, holder: PeerId) -> bool {
        let entry = self
            .objects
            .entry(id)
            .or_insert_with(|| ObjectEntry::new(ObjectValue::Pending));
        if entry.is_ready() {
            return false;
        }
        entry.value = value;
        if self.held.entry(holder).or_default().insert(id) {
            entry.count += 1;
        }
        true
    }

    /// Creates `id` (if new) with `value`, held by `holder`.
    pub(super) fn create(&mut self, id: ObjectId, value: ObjectValue, holder: Option<PeerId>) {
        let entry = self
            .objects
            .entry(id)
            .or_insert_with(|| ObjectEntry::new(ObjectValue::Pending));
        if !matches!(value, ObjectValue::Pending) || !entry.is_ready() {
            entry.value = value;
        }
        if let Some(peer) = holder {
            if self.held.entry(peer).or_default().insert(id) {
                entry.count += 1;
            }
        }
    }

    /// `peer` holds `id` now. Unknown objects are ignored: a reference to an object the
    /// directory has already freed cannot be revived.
    pub(super) fn add_holder(&mut self, peer: PeerId, id: ObjectId) {
        if let Some(entry) = self.objects.get_mut(&id) {
            if self.held.entry(peer).or_default().insert(id) {
                entry.count += 1;
            }
        }
    }

    /// `peer` no longer holds `id`.
    pub(super) fn remove_holder(&mut self, peer: PeerId, id: ObjectId, freed: &mut Freed) {
        let dropped = self.held.get_mut(&peer).is_some_and(|set| set.remove(&id));
        if dropped {
            self.release(id, freed);
        }
    }

    /// `peer` is gone: release everything it held.
    pub(super) fn remove_peer(&mut self, peer: PeerId, freed: &mut Freed) {
        if let Some(set) = self.held.remove(&peer) {
            for id in set {
                self.release(id, freed);
            }
        }
    }

    /// Adds one reference (a pin by a pending task, or a container).
    pub(super) fn retain(&mut self, id: ObjectId) {
        if let Some(entry) = self.objects.get_mut(&id) {
            entry.count += 1;
        }
    }

    /// `outer` contains references to `inner`.
    pub(super) fn nest(&mut self, outer: ObjectId, inner: Vec<ObjectId>) {
        for id in &inner {
            self.retain(*id);
        }
        let entry = self
            .objects
            .entry(outer)
            .or_insert_with(|| ObjectEntry::new(ObjectValue::Pending));
        entry.nested.extend(inner);
    }

    /// Drops one reference; frees the object (and what it contains) at zero, unless
    /// its task is still running, in which case it is freed when the task reports.
    pub(super) fn release(&mut self, id: ObjectId, freed: &mut Freed) {
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            let Some(entry) = self.objects.get_mut(&id) else {
                continue;
            };
            entry.count = entry.count.saturating_sub(1);
            if entry.count == 0 && entry.is_ready() {
                self.free(id, freed, &mut stack);
            }
        }
    }

    /// Frees `id` if nothing references it (called when a task finishes).
    pub(super) fn free_if_unreferenced(&mut self, id: ObjectId, freed: &mut Freed) {
        if self
            .objects
            .get(&id)
            .is_some_and(|e| e.count == 0 && e.is_ready())
        {
            let mut stack = Vec::new();
            self.free(id, freed, &mut stack);
            while let Some(inner) = stack.pop() {
                self.release(inner, freed);
            }
        }
    }

    fn free(&mut self, id: ObjectId, freed: &mut Freed, stack: &mut Vec<ObjectId>) {
        if let Some(entry) = self.objects.remove(&id) {
            if let ObjectValue::OnNodes { nodes, .. } = entry.value {
                freed.node_copies.extend(nodes.into_iter().map(|n| (n, id)));
            }
            stack.extend(entry.nested);
            freed.objects.push(id);
        }
    }

    /// Ids of objects with a copy on `node`.
    pub(super) fn objects_on(&self, node: NodeId) -> Vec<ObjectId> {
        self.objects
            .iter()
            .filter(|(_, e)| matches!(&e.value, ObjectValue::OnNodes { nodes, .. } if nodes.contains(&node)))
            .map(|(id, _)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_live_while_referenced_from_anywhere() {
        let mut dir = ObjectTable::default();
        let (driver, worker) = (PeerId(1), PeerId(2));
        let (outer, inner) = (ObjectId(10), ObjectId(11));
        dir.create(inner, ObjectValue::Inline(vec![1]), Some(worker));
        dir.create(outer, ObjectValue::Inline(vec![2]), Some(driver));
        dir.nest(outer, vec![inner]);
        let mut freed = Freed::default();
        dir.remove_holder(worker, inner, &mut freed);
        assert!(dir.contains(&inner), "still held by outer");
        dir.retain(outer); // a pending task's pin
        dir.remove_holder(driver, outer, &mut freed);
        assert!(dir.contains(&outer), "still pinned");
        dir.release(outer, &mut freed);
        assert_eq!(dir.len(), 0, "outer and then inner freed");
        assert_eq!(freed.objects.len(), 2);
    }

    #[test]
    fn pending_objects_are_freed_when_their_task_reports() {
        let mut dir = ObjectTable::default();
        let peer = PeerId(1);
        let id = ObjectId(5);
        dir.create(id, ObjectValue::Pending, Some(peer));
        let mut freed = Freed::default();
        dir.remove_holder(peer, id, &mut freed);
        assert!(dir.contains(&id));
        dir.create(
            id,
            ObjectValue::OnNodes {
                nodes: HashSet::from_iter([NodeId(3)]),
                size: 9,
            },
            None,
        );
        dir.free_if_unreferenced(id, &mut freed);
        assert_eq!(dir.len(), 0);
        assert_eq!(freed.node_copies, vec![(NodeId(3), id)]);
    }

    #[test]
    fn a_disconnected_peer_releases_what_it_held() {
        let mut dir = ObjectTable::default();
        let peer = PeerId(1);
        for i in 0..3 {
            dir.create(ObjectId(i), ObjectValue::Inline(vec![]), Some(peer));
        }
        let mut freed = Freed::default();
        dir.remove_peer(peer, &mut freed);
        assert_eq!(dir.len(), 0);
    }
}
