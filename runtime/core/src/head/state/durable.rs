//! What the head keeps in its storage ([`crate::storage`]) and reads back when it
//! starts again on it: every node it has seen and every driver's job (the newest
//! dead and ended ones only, as it lists them), and every actor not dead. The table
//! of submitted jobs is kept by [`crate::jobs`]; the token and the head's starts by
//! the launcher.
//!
//! Invariant: a node's record is queued when it joins and when it dies, a driver
//! job's when its driver connects and when the job ends, never per heartbeat or
//! task, so the hot path never waits for the disk; a restarted head lists every
//! node its storage names as dead (a node that comes back joins as a new node) and
//! every job as ended (its driver's connection went with the earlier head), those
//! that were alive when the earlier head stopped with the restart as the cause.

use super::job_table::JobInfo;
use super::object_table::ObjectValue;
use super::HeadState;
use crate::ids::{ActorId, BinaryHash};
use crate::ids::{JobId, NodeId};
use crate::protocol::NodeRegistration;
use crate::protocol::{TaskKind, TaskSpec};
use crate::resources::ResourceSet;
use crate::storage::{ACTORS_TABLE, DRIVER_JOBS_TABLE, NODES_TABLE};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a node alive when the earlier head stopped is listed as dead.
const HEAD_RESTARTED: &str =
    "the head restarted, and the node did not come back within the node timeout";

/// Why the earlier head's own node is listed as dead.
const HEAD_NODE_RESTARTED: &str = "the head restarted; this was its own node";

/// Why a job whose driver was connected when the earlier head stopped is ended.
const DRIVER_WITH_THE_HEAD: &str = "the head restarted; its driver's connection went with it";

/// A driver's job as its record keeps it (keyed by its id).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredJob {
    name: String,
    driver_pid: u32,
    submission_id: Option<String>,
    /// When its driver connected, in milliseconds since the Unix epoch.
    started_ms: u64,
    /// When it ended, if it has.
    ended_ms: Option<u64>,
    /// Why its driver went without a goodbye, if it did.
    lost: Option<String>,
}

/// An actor as its record keeps it (keyed by its id): what it takes to take it back
/// from its node, or to create it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredActor {
    /// Its creation task as submitted (class, name, options, arguments).
    creation: TaskSpec,
    /// The binary its job's workers run.
    binary: BinaryHash,
    /// Times it was re-created.
    restarts: u32,
    /// The node it lives on, if it is alive.
    home: Option<NodeId>,
}

/// A node as its record keeps it (keyed by its id): what `rayish status` and the
/// state API list. The node's worker key is not kept: a dead node has no workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredNode {
    address: SocketAddr,
    hostname: String,
    pid: u32,
    resources: ResourceSet,
    metrics_address: Option<SocketAddr>,
    /// Which join of its node process it was.
    #[serde(default)]
    incarnation: u32,
    /// Whether it was the head process's own node (it dies with that head, so a
    /// restarted head does not wait for it to come back).
    #[serde(default)]
    is_head: bool,
    /// When it joined, in milliseconds since the Unix epoch.
    joined_ms: u64,
    /// When it died and why, if it has.
    died: Option<(u64, String)>,
}

impl HeadState {
    /// Queues node `id`'s record as the table has it now.
    pub(super) fn remember_node(&self, id: NodeId) {
        let Some(storage) = &self.settings.storage else {
            return;
        };
        let (Some(reg), Some(life)) = (self.nodes.registration(id), self.nodes.life(&id)) else {
            return;
        };
        let record = StoredNode {
            address: reg.address,
            hostname: reg.hostname.clone(),
            pid: reg.pid,
            resources: reg.resources.clone(),
            metrics_address: reg.metrics_address,
            incarnation: reg.incarnation,
            is_head: id == self.settings.head_node,
            joined_ms: self.epoch_ms(life.joined),
            died: life.died.map(|(at, why)| (self.epoch_ms(at), why)),
        };
        storage.put(NODES_TABLE, &id.to_string(), &record);
    }

    /// Lists the nodes an earlier head of this storage saw, as dead.
    pub(super) fn restore_nodes(&mut self) {
        let Some(records) = self.stored_by_id::<StoredNode>(NODES_TABLE) else {
            return;
        };
        let now_ms = self.epoch_ms(self.clock.now());
        let mut nodes: Vec<(NodeId, StoredNode)> = records
            .into_iter()
            .map(|(id, record)| (NodeId(id), record))
            .collect();
        // Oldest death first, as the table keeps its dead.
        nodes.sort_by_key(|(_, n)| n.died.as_ref().map_or(now_ms, |(at, _)| *at));
        let mut forgotten = Vec::new();
        let mut ended_here = Vec::new();
        let mut may_return = Vec::new();
        for (id, record) in nodes {
            let died = match record.died {
                Some((at, why)) => (at, why),
                None => {
                    ended_here.push(id);
                    if record.is_head {
                        (now_ms, HEAD_NODE_RESTARTED.to_string())
                    } else {
                        may_return.push(id);
                        (now_ms, HEAD_RESTARTED.to_string())
                    }
                }
            };
            let reg = NodeRegistration {
                node_id: id,
                address: record.address,
                resources: record.resources,
                hostname: record.hostname,
                pid: record.pid,
                worker_key: [0; 32],
                metrics_address: record.metrics_address,
                incarnation: record.incarnation,
                resumes: false,
            };
            let joined = self.instant_of(record.joined_ms);
            let died = (self.instant_of(died.0), died.1);
            forgotten.extend(self.nodes.restore_dead(reg, joined, died));
        }
        for id in &ended_here {
            self.remember_node(*id);
        }
        self.forget(NODES_TABLE, &forgotten);
        // Those may come back with their work, as the same nodes; the earlier
        // head's own node went with it.
        self.expect_nodes(may_return);
    }

    /// Queues actor `actor`'s record as the table has it now (deleted once it is
    /// dead). Written when it is submitted, alive, re-created or dead: never per call.
    pub(super) fn remember_actor(&self, actor: ActorId) {
        let Some(storage) = &self.settings.storage else {
            return;
        };
        let key = actor.to_string();
        let Some(a) = self.actors.get(&actor) else {
            return;
        };
        if a.is_dead() {
            storage.delete(ACTORS_TABLE, &key);
            return;
        }
        let Some(binary) = self.jobs.binary(a.creation().job) else {
            return;
        };
        let record = StoredActor {
            creation: (**a.creation()).clone(),
            binary: binary.clone(),
            restarts: a.restarts(),
            home: match a.state() {
                super::actor_table::ActorState::Alive(node) => Some(*node),
                _ => None,
            },
        };
        storage.put(ACTORS_TABLE, &key, &record);
    }

    /// Takes back the actors an earlier head of this storage knew: each waits for
    /// its node to come back with it, or is created again (per its `max_restarts`)
    /// if its node cannot; their jobs live on. A driver's actor lives on as long as
    /// the claim window: its driver (or a worker) holding a handle to it then
    /// declares it; else it ends as actors whose handles are gone do, and a job
    /// whose driver did not come back ends with its actors.
    pub(super) fn restore_actors(&mut self) {
        let Some(records) = self.stored_by_id::<StoredActor>(ACTORS_TABLE) else {
            return;
        };
        let now = self.clock.now();
        for (id, record) in records {
            let actor = ActorId(id);
            let TaskKind::CreateActor(opts) = &record.creation.kind else {
                tracing::warn!(?actor, "a stored actor's creation is not one; skipped");
                continue;
            };
            let opts = (**opts).clone();
            if opts.actor != actor || !record.binary.is_well_formed() {
                tracing::warn!(?actor, "a stored actor does not match its key; skipped");
                continue;
            }
            let creation = Arc::new(record.creation);
            let handle = creation.return_id;
            self.jobs
                .revive_without_driver(creation.job, record.binary, now);
            self.remember_job(creation.job);
            let detached = opts.detached;
            self.actors
                .restore(Arc::clone(&creation), opts, record.restarts);
            // The handle object exists (the actor did). A detached actor holds it;
            // a driver's is held for its holders to declare.
            self.objects
                .create(handle, ObjectValue::Inline(Vec::new()), None);
            self.objects.retain(handle);
            if !detached {
                self.reclaim.hold_handle(
                    handle,
                    creation.job,
                    now + self.settings.head_reconnect_timeout,
                );
            }
            match record.home {
                Some(node) if self.reclaim.awaits(node) => {
                    self.reclaim.await_actor(actor, node);
                }
                Some(_) => self.actor_lost(
                    actor,
                    "its node was gone when the head restarted".to_string(),
                ),
                None => {
                    // It was being created: its creation runs again (not a restart).
                    let task_id = creation.task_id;
                    self.tasks
                        .insert(Arc::clone(&creation), record.restarts, self.clock_ms());
                    self.requeue(task_id);
                }
            }
        }
    }

    /// Queues driver job `job`'s record as the table has it now.
    pub(super) fn remember_job(&self, job: JobId) {
        let (Some(storage), Some(info)) = (&self.settings.storage, self.jobs.info(job)) else {
            return;
        };
        let record = StoredJob {
            name: info.name.clone(),
            driver_pid: info.driver_pid,
            submission_id: info.submission_id.clone(),
            started_ms: self.epoch_ms(info.started),
            ended_ms: info.ended.map(|t| self.epoch_ms(t)),
            lost: info.lost.clone(),
        };
        storage.put(DRIVER_JOBS_TABLE, &job.to_string(), &record);
    }

    /// Queues the removal of the records in `table` of `ids`, which the head's
    /// tables no longer list.
    pub(super) fn forget<I: std::fmt::Display>(&self, table: &'static str, ids: &[I]) {
        if let Some(storage) = &self.settings.storage {
            for id in ids {
                storage.delete(table, &id.to_string());
            }
        }
    }

    /// Every record of `table`, keyed by a 128-bit id as ids print (hex), with its
    /// id: what an earlier head of this storage left. `None` without storage; a
    /// record under any other key, or a table that cannot be read, is skipped with
    /// a warning (it costs only itself, or only this list).
    fn stored_by_id<V: DeserializeOwned>(&self, table: &'static str) -> Option<Vec<(u128, V)>> {
        let storage = self.settings.storage.as_ref()?;
        let records: Vec<(String, V)> = match storage.all(table) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(table, "what an earlier head stored cannot be read: {e}");
                return None;
            }
        };
        let parsed = records
            .into_iter()
            .filter_map(|(key, record)| match u128::from_str_radix(&key, 16) {
                Ok(id) => Some((id, record)),
                Err(_) => {
                    tracing::warn!(table, key, "a stored record is not keyed by an id; skipped");
                    None
                }
            })
            .collect();
        Some(parsed)
    }

    /// Lists the driver jobs an earlier head of this storage knew, as ended.
    pub(super) fn restore_jobs(&mut self) {
        let Some(records) = self.stored_by_id::<StoredJob>(DRIVER_JOBS_TABLE) else {
            return;
        };
        let now_ms = self.epoch_ms(self.clock.now());
        let mut jobs: Vec<(JobId, StoredJob)> = records
            .into_iter()
            .map(|(id, record)| (JobId(id), record))
            .collect();
        // Oldest end first, as the table keeps its ended jobs.
        jobs.sort_by_key(|(_, j)| j.ended_ms.unwrap_or(now_ms));
        let mut forgotten = Vec::new();
        let mut ended_here = Vec::new();
        for (id, record) in jobs {
            let (ended_ms, lost) = match record.ended_ms {
                Some(at) => (at, record.lost),
                None => {
                    ended_here.push(id);
                    (now_ms, Some(DRIVER_WITH_THE_HEAD.to_string()))
                }
            };
            forgotten.extend(self.jobs.restore_ended(JobInfo {
                id,
                name: record.name,
                driver_pid: record.driver_pid,
                submission_id: record.submission_id,
                started: self.instant_of(record.started_ms),
                ended: Some(self.instant_of(ended_ms)),
                lost,
            }));
        }
        for id in ended_here {
            self.remember_job(id);
        }
        self.forget(DRIVER_JOBS_TABLE, &forgotten);
    }

    /// A time in milliseconds since the Unix epoch as an instant of the head's
    /// clock (the earliest the clock can tell, for a time before it can).
    fn instant_of(&self, epoch_ms: u64) -> Instant {
        let (at, wall_ms) = self.wall_anchor;
        if epoch_ms >= wall_ms {
            at + Duration::from_millis(epoch_ms - wall_ms)
        } else {
            let back = Duration::from_millis(wall_ms - epoch_ms);
            at.checked_sub(back).unwrap_or(at)
        }
    }
}
