//! A node's stream to the head, kept across the head's restarts. While the head is
//! away, what the node sends waits here in order (heartbeats and answers to the
//! dashboard are dropped: they mean nothing to another head). The link also counts
//! the tasks the head assigned that the node has not reported ended, and keeps the
//! task ends sent in the last few seconds (they may have died with the head), so a
//! node that comes back tells the new head exactly what it still has.
//!
//! Invariant: every task or actor call the head assigned is either in the inventory a
//! returning node sends or reported ended by a `TaskFinished` sent after it; the
//! inventory, the re-sent ends and the held messages go out under one lock, before
//! anything sent later.

use crate::ids::{ActorId, JobId, ObjectId, TaskId};
use crate::protocol::{AssignedTask, NodeInventory, TaskAssignment, TaskKind, ToHead};
use crate::transport::MessageSender;
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Messages held for a head that is away, at most: past this, too much happened
/// for the node to come back as itself.
const MAX_HELD: usize = 200_000;
/// Task ends sent this shortly before the head was lost are sent again to the one
/// that comes back: they may have reached only the old head's socket.
const RESEND_WINDOW: Duration = Duration::from_secs(5);
/// Task ends kept for that at most.
const MAX_RESEND: usize = 10_000;

/// See the module documentation.
pub(super) struct HeadLink {
    state: Mutex<LinkState>,
}

struct LinkState {
    sender: MessageSender<ToHead>,
    /// Messages held while the head is away; `None` while it is there.
    away: Option<Vec<ToHead>>,
    /// More than [`MAX_HELD`] messages came while the head was away.
    overflowed: bool,
    /// Tasks and actor calls the head assigned and this node has not reported ended
    /// (an actor's creation is not among them: a restarted head takes actors back
    /// from the inventory's actor list and its storage).
    assigned: HashMap<TaskId, AssignedTask>,
    /// Task ends sent to the head in the last [`RESEND_WINDOW`], oldest first.
    recent_ends: VecDeque<(Instant, ToHead)>,
}

impl HeadLink {
    /// A link over `sender`.
    pub(super) fn new(sender: MessageSender<ToHead>) -> Self {
        Self {
            state: Mutex::new(LinkState {
                sender,
                away: None,
                overflowed: false,
                assigned: HashMap::default(),
                recent_ends: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        // Every change below leaves the state whole: a panic elsewhere cannot tear it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The head assigned `a` to this node.
    pub(super) fn assigned(&self, a: &TaskAssignment) {
        if matches!(a.spec.kind, TaskKind::CreateActor(_)) {
            return;
        }
        self.lock().assigned.insert(
            a.spec.task_id,
            AssignedTask {
                task_id: a.spec.task_id,
                job: a.spec.job,
                attempt: a.attempt,
                resources: a.spec.resources.clone(),
                blocked: false,
            },
        );
    }

    /// Task `task` waits in `get` (or goes on): a restarted head lends its CPU as
    /// this head did.
    pub(super) fn blocked(&self, task: TaskId, blocked: bool) {
        if let Some(t) = self.lock().assigned.get_mut(&task) {
            t.blocked = blocked;
        }
    }

    /// Job `job` ended: its tasks here are dropped without a report.
    pub(super) fn job_ended(&self, job: JobId) {
        self.lock().assigned.retain(|_, t| t.job != job);
    }

    /// Sends `msg` to the head, or holds it while the head is away. False only if
    /// it was lost (the head went just now; a task end is sent again on return).
    pub(super) fn send(&self, msg: ToHead) -> bool {
        let mut s = self.lock();
        let is_end = if let ToHead::TaskFinished { task_id, .. } = &msg {
            s.assigned.remove(task_id);
            true
        } else {
            false
        };
        if s.away.is_none() && s.sender.is_closed() {
            s.away = Some(Vec::new());
        }
        let s = &mut *s;
        match &mut s.away {
            Some(held) => {
                if matches!(msg, ToHead::Heartbeat(_) | ToHead::AgentReply { .. }) {
                    return true;
                }
                if held.len() >= MAX_HELD {
                    s.overflowed = true;
                    held.clear();
                } else if !s.overflowed {
                    held.push(msg);
                }
                true
            }
            None => {
                if is_end {
                    let now = Instant::now();
                    while s.recent_ends.len() >= MAX_RESEND
                        || s.recent_ends
                            .front()
                            .is_some_and(|(at, _)| now.duration_since(*at) > RESEND_WINDOW)
                    {
                        s.recent_ends.pop_front();
                    }
                    s.recent_ends.push_back((now, msg.clone()));
                }
                if s.sender.send(msg) {
                    true
                } else {
                    s.away = Some(Vec::new());
                    false
                }
            }
        }
    }

    /// The head is gone: hold what is sent until it is back.
    pub(super) fn lost(&self) {
        self.lock().away.get_or_insert_with(Vec::new);
    }

    /// Whether too much happened while the head was away to come back as this node.
    pub(super) fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// The head is back on `sender`: sends the inventory (the assigned tasks not
    /// ended, `objects` and `actors`), the task ends sent just before the loss, what
    /// was held, then `NodeCaughtUp`, and goes on over `sender`.
    pub(super) fn back(
        &self,
        sender: MessageSender<ToHead>,
        objects: Vec<(ObjectId, u64)>,
        actors: Vec<(ActorId, u32)>,
    ) {
        let mut s = self.lock();
        let inventory = NodeInventory {
            tasks: s.assigned.values().cloned().collect(),
            objects,
            actors,
        };
        sender.send(ToHead::NodeResumed(Box::new(inventory)));
        for (_, end) in s.recent_ends.drain(..) {
            sender.send(end);
        }
        for msg in s.away.take().unwrap_or_default() {
            sender.send(msg);
        }
        sender.send(ToHead::NodeCaughtUp);
        s.sender = sender;
    }

    /// The assigned tasks not reported ended (for tests and logs).
    #[cfg(test)]
    fn outstanding(&self) -> usize {
        self.lock().assigned.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{BinaryHash, ObjectId};
    use crate::protocol::{NodeLoad, StoredValue, TaskOutcome, TaskSpec};
    use crate::resources::ResourceSet;
    use std::sync::Arc;
    use tokio::sync::mpsc::unbounded_channel;

    fn assignment(task: u128, job: u128) -> TaskAssignment {
        let spec = TaskSpec {
            task_id: TaskId(task),
            job: JobId(job),
            function: "f".into(),
            args: Vec::new(),
            nested_refs: Vec::new(),
            return_id: ObjectId(task),
            resources: ResourceSet::new(),
            max_retries: 3,
            kind: TaskKind::Function,
            parent: TaskId::DRIVER,
        };
        TaskAssignment {
            spec: Arc::new(spec),
            attempt: 0,
            sources: Vec::new(),
            binary: BinaryHash("0".repeat(64)),
        }
    }

    fn end(task: u128) -> ToHead {
        ToHead::TaskFinished {
            task_id: TaskId(task),
            attempt: 0,
            outcome: TaskOutcome::Stored(StoredValue::Inline(vec![1])),
            run_micros: 1,
            worker_pid: 1,
        }
    }

    #[test]
    fn a_returning_node_reports_what_it_holds_then_what_the_head_missed_in_order() {
        let (tx, mut old_head) = unbounded_channel();
        let link = HeadLink::new(MessageSender::direct(Arc::new(tx)));
        for t in 1..=4 {
            link.assigned(&assignment(t, 1));
        }
        assert!(link.send(end(1)));
        // Lost with the old head (it died with the message unread).
        drop(old_head.try_recv());
        drop(old_head);
        link.lost();
        assert!(link.send(end(2)));
        assert!(link.send(ToHead::Heartbeat(NodeLoad::default())));
        link.assigned(&assignment(5, 2));
        link.job_ended(JobId(2));
        let (tx, mut new_head) = unbounded_channel();
        link.back(
            MessageSender::direct(Arc::new(tx)),
            vec![(ObjectId(9), 10)],
            Vec::new(),
        );
        assert!(link.send(end(3)));
        let mut got = Vec::new();
        while let Ok(m) = new_head.try_recv() {
            got.push(m);
        }
        let ToHead::NodeResumed(inv) = &got[0] else {
            panic!("the inventory first: {got:?}");
        };
        let mut tasks: Vec<u128> = inv.tasks.iter().map(|t| t.task_id.0).collect();
        tasks.sort_unstable();
        assert_eq!(tasks, vec![3, 4], "not ended, job not ended");
        assert_eq!(inv.objects, vec![(ObjectId(9), 10)]);
        let after: Vec<String> = got[1..]
            .iter()
            .map(|m| match m {
                ToHead::TaskFinished { task_id, .. } => task_id.0.to_string(),
                ToHead::NodeCaughtUp => "caught up".to_string(),
                other => panic!("only task ends follow: {other:?}"),
            })
            .collect();
        // 1 again (sent just before the loss), 2 (held), the mark that all that
        // waited is out, then 3 (sent after).
        assert_eq!(after, ["1", "2", "caught up", "3"]);
        assert_eq!(link.outstanding(), 1);
    }

    #[test]
    fn actor_calls_are_counted_until_they_end_and_creations_are_not() {
        let (tx, _head) = unbounded_channel();
        let link = HeadLink::new(MessageSender::direct(Arc::new(tx)));
        let with_kind = |task, kind| {
            let mut a = assignment(task, 1);
            Arc::make_mut(&mut a.spec).kind = kind;
            a
        };
        let actor = ActorId(9);
        link.assigned(&with_kind(
            1,
            TaskKind::CreateActor(Box::new(crate::protocol::ActorCreation {
                actor,
                class: "Counter".into(),
                name: None,
                detached: false,
                max_restarts: 0,
                max_task_retries: 0,
            })),
        ));
        link.assigned(&with_kind(2, TaskKind::ActorCall(actor)));
        link.assigned(&with_kind(3, TaskKind::ActorCall(actor)));
        assert_eq!(link.outstanding(), 2, "the two calls, not the creation");
        assert!(link.send(end(2)));
        assert_eq!(link.outstanding(), 1);
    }

    #[test]
    fn a_task_waiting_in_get_is_reported_blocked_to_the_head_that_comes_back() {
        let (tx, _old_head) = unbounded_channel();
        let link = HeadLink::new(MessageSender::direct(Arc::new(tx)));
        link.assigned(&assignment(1, 1));
        link.assigned(&assignment(2, 1));
        link.blocked(TaskId(1), true);
        link.blocked(TaskId(2), true);
        link.blocked(TaskId(2), false);
        link.lost();
        let (tx, mut new_head) = unbounded_channel();
        link.back(MessageSender::direct(Arc::new(tx)), Vec::new(), Vec::new());
        let Ok(ToHead::NodeResumed(inv)) = new_head.try_recv() else {
            panic!("the inventory first");
        };
        let mut blocked: Vec<(u128, bool)> =
            inv.tasks.iter().map(|t| (t.task_id.0, t.blocked)).collect();
        blocked.sort_unstable();
        assert_eq!(blocked, vec![(1, true), (2, false)]);
    }
}
