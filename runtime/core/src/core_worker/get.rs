//! `get` and `wait`: subscribing to objects, waiting (spinning briefly, then parking,
//! and telling the node when a task blocks so its CPU is lent), and fetching values
//! from the nodes that hold them.

use super::{spin, CoreWorker, GetError, CURRENT_TASK};
use crate::ids::{ObjectId, TaskId};
use crate::protocol::{NodeAddress, ObjectLocation, ToHead};
use crate::transfer::pull_object;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

impl CoreWorker {
    /// Registers `tx` to hear when `id` is ready; returns the location if it already is.
    /// Whether `id` is ready; if not, `tx` will hear when it is, and `id` is added to
    /// `subscribe` if the head has not been asked yet (the caller sends them in one go).
    pub(super) fn watch(
        &self,
        id: ObjectId,
        tx: &mpsc::UnboundedSender<ObjectId>,
        subscribe: &mut Vec<ObjectId>,
    ) -> bool {
        let mut slot = self.slots.entry(id).or_default();
        if slot.location.is_some() {
            return true;
        }
        // Waiters of earlier waits that returned are gone: drop them here, or a list
        // waited on again and again (Ray's "wait 1k refs") grows a sender per wait.
        slot.waiters.retain(|w| !w.is_closed());
        slot.waiters.push(tx.clone());
        if !slot.subscribed {
            slot.subscribed = true;
            subscribe.push(id);
        }
        false
    }

    pub(super) fn subscribe(&self, ids: Vec<ObjectId>) {
        if !ids.is_empty() {
            self.to_head(ToHead::Subscribe(ids));
        }
    }

    pub(super) fn ready_location(&self, id: &ObjectId) -> Option<ObjectLocation> {
        self.slots.get(id).and_then(|s| s.location.clone())
    }

    /// Runs `f` while telling the head that the current task (if any) is blocked.
    pub(super) fn blocking<R>(&self, f: impl FnOnce() -> R) -> R {
        let task = CURRENT_TASK.with(|c| c.get()).map(|(t, _)| t);
        if let Some(t) = task {
            self.announce_blocked(t, true);
        }
        let r = f();
        if let Some(t) = task {
            self.announce_blocked(t, false);
        }
        r
    }

    /// Tells the head and this worker's node that `task` blocked (or resumed), so both
    /// lend (or take back) its CPU.
    pub(super) fn announce_blocked(&self, task: TaskId, blocked: bool) {
        let to_head = if blocked {
            ToHead::TaskBlocked(task)
        } else {
            ToHead::TaskUnblocked(task)
        };
        self.to_head(to_head);
        if let Some(link) = self.node_link() {
            link.send(crate::protocol::FromWorker::Blocked {
                task_id: task,
                blocked,
            });
            link.set_blocked(blocked);
            // The blocked thread waits on the head: another must read the node's
            // socket meanwhile, to give back a follower sent behind this task.
            if blocked && link.needs_blocked_reader() {
                let this = self.this.get().and_then(std::sync::Weak::upgrade);
                let spawned = this.map(|cw| {
                    std::thread::Builder::new()
                        .name("rayish-blocked-reader".into())
                        .spawn(move || {
                            if let Some(link) = cw.node_link() {
                                link.read_while_blocked();
                            }
                        })
                });
                if !matches!(spawned, Some(Ok(_))) {
                    link.no_blocked_reader();
                }
            }
        }
    }

    /// Waits until `id` is ready (or `deadline` passes) and returns where it is.
    pub(super) fn wait_one(
        &self,
        id: ObjectId,
        deadline: Option<Instant>,
        timeout: Duration,
    ) -> Result<ObjectLocation, GetError> {
        self.wait_until(&[id], 1, deadline)?;
        self.ready_location(&id).ok_or(GetError::Timeout(timeout))
    }

    /// The encoded value of `id`, waiting up to `timeout` (forever if `None`).
    pub fn get(&self, id: ObjectId, timeout: Option<Duration>) -> Result<Bytes, GetError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let shown = timeout.unwrap_or(Duration::MAX);
        let mut failures = 0u32;
        loop {
            match self.wait_one(id, deadline, shown)? {
                ObjectLocation::Inline(v) => return Ok(Bytes::from(v)),
                ObjectLocation::Error(e) => return Err(GetError::Task(*e)),
                ObjectLocation::Nodes(holders) => match self.fetch(id, holders) {
                    Ok(v) => return Ok(v),
                    Err(reason) => {
                        // The holder may have just died; ask the head again, which by
                        // then re-makes the object or says it is lost.
                        failures += 1;
                        if failures > 50 || deadline.is_some_and(|d| Instant::now() >= d) {
                            return Err(GetError::Unavailable { id, reason });
                        }
                        if let Some(mut slot) = self.slots.get_mut(&id) {
                            slot.location = None;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                },
            }
        }
    }

    pub(super) fn fetch(&self, id: ObjectId, holders: Vec<NodeAddress>) -> Result<Bytes, String> {
        if let Some((link, _)) = &self.node {
            return self.blocking(|| link.get(id, holders));
        }
        if let Some((node, store)) = self.local_store.get() {
            if holders.iter().any(|h| h.node == *node) {
                if let Some(v) = store.get(&id) {
                    return Ok(v);
                }
            }
        }
        let mut last = "no live node holds it".to_string();
        for holder in holders {
            let result = self.blocking(|| {
                self.rt.block_on(async {
                    let conn = self.peer(holder.address).await?;
                    pull_object(&conn, id).await.map_err(|e| e.to_string())
                })
            });
            match result {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub(super) async fn peer(&self, addr: SocketAddr) -> Result<quinn::Connection, String> {
        let head = self.head_conn();
        if addr == head.remote_address() {
            return Ok(head);
        }
        self.peers.get(addr).await.map_err(|e| e.to_string())
    }

    /// Waits until `num_returns` of `ids` are ready or `timeout` passes; returns the
    /// ready flags, in order.
    pub fn wait(
        &self,
        ids: &[ObjectId],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<bool>, GetError> {
        self.wait_until(ids, num_returns, timeout.map(|t| Instant::now() + t))
    }

    /// [`Self::wait`] with an absolute deadline.
    pub(super) fn wait_until(
        &self,
        ids: &[ObjectId],
        num_returns: usize,
        deadline: Option<Instant>,
    ) -> Result<Vec<bool>, GetError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut ready = vec![false; ids.len()];
        let mut n_ready = 0;
        // Where each not-yet-ready id sits in `ids` (an id may appear twice).
        let mut positions: HashMap<ObjectId, Vec<usize>> = HashMap::new();
        let mut subscribe = Vec::new();
        let want = num_returns.min(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if self.watch(*id, &tx, &mut subscribe) {
                ready[i] = true;
                n_ready += 1;
                if n_ready == want {
                    // Enough: the rest need not be looked at (Ray's `wait` returns at
                    // most `num_returns` ready, the first ones in order).
                    break;
                }
            } else {
                positions.entry(*id).or_default().push(i);
            }
        }
        self.subscribe(subscribe);
        if n_ready >= want {
            return Ok(ready);
        }
        let mut mark = |id: ObjectId, ready: &mut Vec<bool>, n_ready: &mut usize| {
            for i in positions.remove(&id).unwrap_or_default() {
                ready[i] = true;
                *n_ready += 1;
            }
        };
        // Poll a little first when this thread's waits are short (see `spin`): the
        // answer often comes before parking and being woken would.
        let started = Instant::now();
        let until = started + spin::budget(deadline.map(|d| d.saturating_duration_since(started)));
        while Instant::now() < until && self.is_connected() {
            while let Ok(id) = rx.try_recv() {
                mark(id, &mut ready, &mut n_ready);
            }
            if n_ready >= want {
                spin::record(started.elapsed());
                return Ok(ready);
            }
            std::hint::spin_loop();
        }
        let waited = self.blocking(|| loop {
            let wake = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    self.rt
                        .block_on(async { tokio::time::timeout(left, rx.recv()).await })
                }
                None => Ok(self.rt.block_on(rx.recv())),
            };
            match wake {
                Err(_) => return Ok(ready.clone()),
                Ok(None) => return Err(self.down_error()),
                Ok(Some(id)) => {
                    // Take everything that arrived together: one wake-up for a batch.
                    mark(id, &mut ready, &mut n_ready);
                    while let Ok(id) = rx.try_recv() {
                        mark(id, &mut ready, &mut n_ready);
                    }
                }
            }
            if !self.is_connected() {
                return Err(self.down_error());
            }
            if n_ready >= want {
                return Ok(ready.clone());
            }
        });
        spin::record(started.elapsed());
        waited
    }
}
