//! A driver outliving its head: reading the head's messages, and when the head is lost,
//! waiting for it to come back (a restarted head on the same address) and telling it
//! what this driver still needs, so that pending `get`s and `wait`s complete.

use super::{Connection, CoreWorker};
use crate::ids::{JobId, ObjectId};
use crate::protocol::{ObjectLocation, TaskError, ToHead};
use crate::transport::ControlReader;
use rustc_hash::FxHashSet as HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// A new control stream to the head, on its way.
pub type Connecting = Pin<Box<dyn Future<Output = Result<Connection, String>> + Send>>;

/// How a driver reaches its head again after losing it.
#[derive(Clone)]
pub struct Reconnect {
    /// Opens a new control stream to the head as the driver of the given job, going
    /// on with it (`PeerRole::Driver::resumes`).
    pub connect: Arc<dyn Fn(JobId) -> Connecting + Send + Sync>,
    /// How long a lost head is waited for (`--head-reconnect-timeout`).
    pub within: Duration,
}

/// Longest one attempt to reach the head may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts.
const ATTEMPT_PAUSE: Duration = Duration::from_millis(250);

/// Reads the head's messages for as long as this process has a head: across head
/// restarts in a driver that reconnects, else until the first loss.
pub(super) async fn read_from_head(weak: Weak<CoreWorker>, mut reader: ControlReader) {
    loop {
        let reason = loop {
            match reader.next().await {
                Ok(Some(msg)) => match weak.upgrade() {
                    Some(cw) => cw.on_message(msg),
                    None => return,
                },
                Ok(None) => break "the head closed the connection".to_string(),
                Err(e) => break format!("lost the head: {e}"),
            }
        };
        let Some(cw) = weak.upgrade() else {
            return;
        };
        let reconnect = match &cw.reconnect {
            Some(r) if cw.is_connected() => r.clone(),
            _ => return cw.cluster_down(reason),
        };
        let job = cw.job;
        // A head silent for the whole idle timeout has been waited for already: one
        // more try, in case it is back. One that reset the connection (a restarted
        // head answers the old connection's packets so) gets the full wait.
        let silent = matches!(
            cw.head_conn().close_reason(),
            Some(quinn::ConnectionError::TimedOut)
        );
        let wait = if silent {
            Duration::ZERO
        } else {
            reconnect.within
        };
        let is_driver = cw.node.is_none();
        drop(cw);
        tracing::warn!("{reason}; waiting up to {wait:?} for the head to come back");
        if is_driver {
            eprintln!("rayish warning: {reason}; waiting up to {wait:?} for the head to come back");
        }
        let deadline = Instant::now() + wait;
        let mut last = String::new();
        let conn = loop {
            match tokio::time::timeout(ATTEMPT_TIMEOUT, (reconnect.connect)(job)).await {
                Ok(Ok(conn)) => break Some(conn),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
            }
            if Instant::now() >= deadline {
                break None;
            }
            match weak.upgrade() {
                Some(cw) if cw.is_connected() => {}
                // Shut down meanwhile.
                _ => return,
            }
            tokio::time::sleep(ATTEMPT_PAUSE).await;
        };
        let Some(cw) = weak.upgrade() else {
            return;
        };
        match conn {
            Some(conn) if cw.is_connected() => reader = cw.resume(conn),
            Some(_) => return,
            None => {
                return cw.cluster_down(format!(
                    "{reason}; the head did not come back within {:?} ({last})",
                    reconnect.within
                ))
            }
        }
    }
}

impl CoreWorker {
    /// Goes on with `conn`, a new control stream to a head that lost track of this
    /// process: tells it what this process made and still needs (values, and tasks to
    /// run again), fails here what nobody can make again, and asks again what was
    /// asked of the old head. Returns the stream's reader.
    fn resume(&self, conn: Connection) -> ControlReader {
        {
            let mut link = self.link.write().unwrap_or_else(|p| p.into_inner());
            link.conn = conn.head_conn;
            link.head_node = conn.head_node;
        }
        let mut guard = self.outgoing.lock().unwrap_or_else(|p| p.into_inner());
        let out = &mut *guard;
        out.head = conn.head;
        // Updates the old head never got: the inventory below says where things stand.
        out.refs.messages.clear();
        out.refs.count = 0;
        let mut state = out
            .lineage
            .as_mut()
            .map(|l| l.plan(|id| self.slots.get(&id).and_then(|s| s.location.clone())))
            .unwrap_or_default();
        // Actors' handle objects: the head keeps actors across its restarts.
        let actor_handles: HashSet<ObjectId> = out
            .lineage
            .as_ref()
            .map(|l| l.actor_handles().collect())
            .unwrap_or_default();
        let mut remade: HashSet<ObjectId> = state.values.iter().map(|v| v.id).collect();
        remade.extend(state.errors.iter().map(|(id, _)| *id));
        for (spec, _) in &state.tasks {
            remade.insert(spec.return_id);
            // Where it was is stale: it is being made again.
            if let Some(mut slot) = self.slots.get_mut(&spec.return_id) {
                if matches!(slot.location, Some(ObjectLocation::Nodes(_))) {
                    slot.location = None;
                }
            }
        }
        state.holds = self
            .refs
            .iter()
            .filter(|r| *r.value() > 0 && !remade.contains(r.key()))
            .map(|r| *r.key())
            .collect();
        let mut subscribe = Vec::new();
        let mut lost = 0usize;
        for mut slot in self.slots.iter_mut() {
            if slot.location.is_some() {
                continue;
            }
            let id = *slot.key();
            if remade.contains(&id) || actor_handles.contains(&id) {
                if slot.subscribed {
                    subscribe.push(id);
                }
                continue;
            }
            lost += 1;
            slot.location = Some(ObjectLocation::Error(Box::new(TaskError::ObjectLost {
                object: id,
                reason: "the head restarted, and this process had neither its value nor a \
                         task to make it again (a large put kept on the head's node, or an \
                         object another process made)"
                    .into(),
            })));
            slot.subscribed = false;
            for w in slot.waiters.drain(..) {
                let _ = w.send(id);
            }
        }
        tracing::warn!(
            values = state.values.len() + state.errors.len(),
            tasks = state.tasks.len(),
            lost,
            "reconnected to the head; resuming the job"
        );
        if self.node.is_none() {
            // A driver's user is told; a worker's line would reach them as its output.
            eprintln!(
                "rayish warning: reconnected to the head; {} tasks run again, {} values declared again, {} objects lost",
                state.tasks.len(),
                state.values.len() + state.errors.len(),
                lost
            );
        }
        out.head.send(ToHead::Resume(Box::new(state)));
        if !subscribe.is_empty() {
            out.head.send(ToHead::Subscribe(subscribe));
        }
        for n in self.syncs.iter().map(|s| *s.key()) {
            out.head.send(ToHead::Sync(n));
        }
        for q in self.actor_queries.iter() {
            out.head.send(ToHead::GetActor {
                request: *q.key(),
                name: q.value().0.clone(),
            });
        }
        if self.output.get().is_some() {
            out.head.send(ToHead::SubscribeOutput);
        }
        conn.reader
    }
}
