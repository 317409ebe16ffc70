//! This process's reference counts as the head sees them: adds and removes batched
//! into ordered runs (`RefOutbox`) and flushed within a millisecond, so that for each
//! object the head sees this process's submits, nests, adds and removes in order.

use super::{CoreWorker, Outgoing};
use crate::ids::ObjectId;
use crate::protocol::ToHead;
use std::time::Duration;

/// Most reference-count updates held back before they are sent.
pub(super) const REF_BATCH: usize = 4096;
/// Longest a reference-count update is held back.
pub(super) const REF_FLUSH_DELAY: Duration = Duration::from_millis(1);

/// Reference-count updates waiting to be sent, as runs of adds and removes in order.
#[derive(Default)]
pub(super) struct RefOutbox {
    pub(super) messages: Vec<ToHead>,
    pub(super) count: usize,
    pub(super) flush_scheduled: bool,
}

impl RefOutbox {
    /// Appends `ids` (added if `add`, else removed) to the last run of the same kind,
    /// or starts a run.
    pub(super) fn add(&mut self, add: bool, ids: Vec<ObjectId>) {
        self.count += ids.len();
        match (self.messages.last_mut(), add) {
            (Some(ToHead::AddRefs(run)), true) | (Some(ToHead::RemoveRefs(run)), false) => {
                run.extend(ids)
            }
            (_, true) => self.messages.push(ToHead::AddRefs(ids)),
            (_, false) => self.messages.push(ToHead::RemoveRefs(ids)),
        }
    }
}

impl CoreWorker {
    pub(super) fn flush_outbox(out: &mut Outgoing) -> bool {
        out.refs.count = 0;
        let mut ok = true;
        for msg in out.refs.messages.drain(..) {
            ok &= out.head.send(msg);
        }
        ok
    }

    /// Sends the reference-count updates waiting in the outbox (the delayed flush;
    /// while one is pending no other is scheduled, so a process alternating puts and
    /// drops spawns one per [`REF_FLUSH_DELAY`], not one per drop).
    pub(super) fn flush_refs(&self) {
        let mut out = self.outgoing.lock().unwrap_or_else(|p| p.into_inner());
        out.refs.flush_scheduled = false;
        Self::flush_outbox(&mut out);
    }

    /// A handle made here for an object the head already counts us as holding
    /// (a submitted task's return, a put).
    pub fn ref_created(&self, id: ObjectId) {
        *self.refs.entry(id).or_insert(0) += 1;
    }

    /// A handle arrived inside a value: tell the head we hold it, if we did not.
    pub fn ref_received(&self, id: ObjectId) {
        // The count's lock is let go before the outgoing lock is taken (a reconnect
        // takes them the other way round).
        let first = {
            let mut count = self.refs.entry(id).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            self.to_head(ToHead::AddRefs(vec![id]));
        }
    }

    /// A handle was cloned.
    pub fn ref_cloned(&self, id: ObjectId) {
        *self.refs.entry(id).or_insert(0) += 1;
    }

    /// A handle was dropped.
    pub fn ref_dropped(&self, id: ObjectId) {
        let gone = match self.refs.get_mut(&id) {
            Some(mut count) => {
                *count = count.saturating_sub(1);
                *count == 0
            }
            None => false,
        };
        if gone {
            self.refs.remove_if(&id, |_, c| *c == 0);
            let slot = self.slots.remove(&id);
            self.to_head_noting(ToHead::RemoveRefs(vec![id]), |lineage| {
                lineage.dropped(id, slot.and_then(|(_, s)| s.location));
            });
        }
    }

    /// References this process holds now (for tests and leak checks).
    pub fn held_refs(&self) -> usize {
        self.refs.len()
    }

    // -- submission -------------------------------------------------------

    /// Declares that `outer` holds `inner` (before any of our handles to `inner` drop).
    pub fn nest(&self, outer: ObjectId, inner: Vec<ObjectId>) {
        if !inner.is_empty() {
            self.to_head(ToHead::Nest { outer, inner });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_updates_merge_into_runs_in_order() {
        let mut outbox = RefOutbox::default();
        outbox.add(true, vec![ObjectId(1), ObjectId(2)]);
        outbox.add(true, vec![ObjectId(3)]);
        outbox.add(false, vec![ObjectId(1)]);
        outbox.add(true, vec![ObjectId(1)]);
        outbox.add(false, vec![ObjectId(2)]);
        assert_eq!(outbox.count, 6);
        let runs: Vec<(bool, Vec<u128>)> = outbox
            .messages
            .iter()
            .map(|m| match m {
                ToHead::AddRefs(v) => (true, v.iter().map(|i| i.0).collect()),
                ToHead::RemoveRefs(v) => (false, v.iter().map(|i| i.0).collect()),
                other => panic!("not a reference update: {other:?}"),
            })
            .collect();
        // An add after a remove of the same object stays after it.
        assert_eq!(
            runs,
            vec![
                (true, vec![1, 2, 3]),
                (false, vec![1]),
                (true, vec![1]),
                (false, vec![2])
            ]
        );
    }
}
