//! Copies made around a cut between nodes: when a node cannot fetch an object from
//! any of its holders while the head still hears from them (a partition between
//! nodes only, or a firewall), another node is asked to copy the object, so the one
//! cut off can fetch it from there.
//!
//! Invariant: at most one copy of an object is being made at a time, never by a node
//! that already failed to make it or that could not fetch it itself; an entry lives
//! only while its object does (the head forgets it when the object is freed or lost).

use crate::ids::{NodeId, ObjectId};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

/// One object some node could not fetch.
#[derive(Debug, Default)]
struct Relay {
    /// Holders that a node could not reach: later assignments list them last.
    unreached: HashSet<NodeId>,
    /// Nodes that could not fetch it, or failed to copy it: never asked to copy it.
    cut_off: HashSet<NodeId>,
    /// The node copying it now.
    copying: Option<NodeId>,
}

/// The objects being copied around a cut, and what is known of it.
#[derive(Debug, Default)]
pub(super) struct RelayTable {
    objects: HashMap<ObjectId, Relay>,
}

impl RelayTable {
    /// Whether no object was ever found unreachable (the common case: assignments
    /// then skip the look-up).
    pub(super) fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// `fetcher` could not fetch `id` from any of `holders`. Returns the node that
    /// should copy it now: the first of `candidates` (live nodes, best first) that
    /// neither holds it nor is cut off from it, unless a copy is under way already.
    pub(super) fn fetch_failed(
        &mut self,
        id: ObjectId,
        fetcher: NodeId,
        holders: &HashSet<NodeId>,
        candidates: impl IntoIterator<Item = NodeId>,
    ) -> Option<NodeId> {
        let relay = self.objects.entry(id).or_default();
        relay.unreached.extend(holders.iter().copied());
        relay.cut_off.insert(fetcher);
        if relay.copying.is_some() {
            return None;
        }
        let copier = candidates
            .into_iter()
            .find(|n| !holders.contains(n) && !relay.cut_off.contains(n))?;
        relay.copying = Some(copier);
        Some(copier)
    }

    /// `node` now holds a copy of `id` (its own pull, or the copy it was asked for).
    pub(super) fn copied(&mut self, id: &ObjectId, node: NodeId) {
        if let Some(relay) = self.objects.get_mut(id) {
            if relay.copying == Some(node) {
                relay.copying = None;
            }
            // A node that fetched it is not cut off from it (any more).
            relay.unreached.remove(&node);
            relay.cut_off.remove(&node);
        }
    }

    /// `node` could not copy `id`: it is not asked again.
    pub(super) fn copy_failed(&mut self, id: &ObjectId, node: NodeId) {
        if let Some(relay) = self.objects.get_mut(id) {
            if relay.copying == Some(node) {
                relay.copying = None;
            }
            relay.cut_off.insert(node);
        }
    }

    /// Holders of `id` that some node could not reach, if any.
    pub(super) fn unreached(&self, id: &ObjectId) -> Option<&HashSet<NodeId>> {
        self.objects.get(id).map(|r| &r.unreached)
    }

    /// `id` was freed or lost: nothing more to copy.
    pub(super) fn forget(&mut self, id: &ObjectId) {
        self.objects.remove(id);
    }

    /// `node` is gone: a copy it was making will not come.
    pub(super) fn node_gone(&mut self, node: NodeId) {
        for relay in self.objects.values_mut() {
            if relay.copying == Some(node) {
                relay.copying = None;
            }
            relay.unreached.remove(&node);
            relay.cut_off.remove(&node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u128]) -> HashSet<NodeId> {
        ids.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn one_copy_at_a_time_by_a_node_neither_holding_nor_cut_off() {
        let id = ObjectId(7);
        let (head, a, b, c) = (NodeId(0), NodeId(1), NodeId(2), NodeId(3));
        let mut t = RelayTable::default();
        assert!(t.is_empty());
        // b cannot reach a, the holder: the head's node (first choice) copies it.
        let holders = set(&[1]);
        let all = [head, a, b, c];
        assert_eq!(t.fetch_failed(id, b, &holders, all), Some(head));
        assert_eq!(t.unreached(&id), Some(&holders));
        // c cannot either: the copy under way will serve both.
        assert_eq!(t.fetch_failed(id, c, &holders, all), None);
        // The head's node failed too: the next failure picks someone else, but
        // never a node that could not fetch it.
        t.copy_failed(&id, head);
        assert_eq!(t.fetch_failed(id, b, &holders, all), None, "{t:?}");
        // c fetched it after all (through some other way): it may copy for b.
        t.copied(&id, c);
        assert_eq!(t.fetch_failed(id, b, &holders, all), Some(c));
        t.copied(&id, c);
        // c is gone; b still cut off, a copy can start again (no one left to ask).
        t.node_gone(c);
        assert_eq!(t.fetch_failed(id, b, &holders, [head, a, b]), None);
        t.forget(&id);
        assert!(t.is_empty());
    }
}
