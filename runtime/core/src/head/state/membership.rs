//! Membership: peers and nodes joining and leaving, heartbeats, node death, jobs ending.

use super::*;

impl HeadState {
    pub(super) fn connect(
        &mut self,
        peer: PeerId,
        role: PeerRole,
        sender: MessageSender<FromHead>,
        needs_binary: bool,
    ) -> Welcome {
        let mut job = None;
        let now = self.clock.now();
        let mut pid = 0;
        let kind = match role {
            PeerRole::Node(reg) => {
                let (id, address) = (reg.node_id, reg.address);
                let resources = reg.resources.to_string();
                let joined = if reg.resumes {
                    self.node_returns(reg, peer)
                } else {
                    self.nodes.join(reg, peer, self.clock.now())
                };
                if let Err(reason) = joined {
                    return Welcome::Rejected(reason);
                }
                tracing::info!(node = ?id, %address, %resources, "node joined");
                self.remember_node(id);
                PeerKind::Node(id)
            }
            PeerRole::Driver {
                binary,
                name,
                pid: driver_pid,
                submission_id,
                resumes,
            } => {
                if !binary.is_well_formed() {
                    return Welcome::Rejected("the driver's binary hash is not a SHA-256".into());
                }
                pid = driver_pid;
                let id = match resumes {
                    Some(id) => {
                        if let Err(reason) = self.jobs.may_resume(id, driver_pid) {
                            return Welcome::Rejected(reason);
                        }
                        // Its old connection may not have timed out yet here (a
                        // driver that lost only its link): that one is over.
                        if let Some(old) = self.jobs.driver(id) {
                            if !self.jobs.driver_gone(id) && self.peers.job(old) == Some(id) {
                                self.disconnect(old, "its driver reconnected");
                            }
                        }
                        if let Err(reason) = self.jobs.resume(
                            id,
                            binary,
                            peer,
                            &name,
                            driver_pid,
                            submission_id,
                            now,
                        ) {
                            return Welcome::Rejected(reason);
                        }
                        tracing::info!(job = ?id, %name, "driver reconnected");
                        id
                    }
                    None => {
                        let id =
                            self.jobs
                                .start(binary, peer, &name, driver_pid, submission_id, now);
                        tracing::info!(job = ?id, %name, "driver connected");
                        id
                    }
                };
                self.remember_job(id);
                job = Some(id);
                PeerKind::Driver(id)
            }
            PeerRole::Worker {
                node,
                job,
                proof,
                pid: worker_pid,
            } => {
                if !self.jobs.is_alive(job) {
                    return Welcome::Rejected(format!("job {job} has ended"));
                }
                // Only a process its (live) node started for this job knows the proof:
                // holding the token is not enough to act as another job's worker.
                if !self.nodes.started_worker(node, job, &proof) {
                    return Welcome::Rejected(format!(
                        "not a worker that node {node} started for job {job}"
                    ));
                }
                pid = worker_pid;
                PeerKind::Worker { job, node }
            }
            PeerRole::Client => PeerKind::Client,
        };
        let welcome = Welcome::Accepted {
            peer,
            job,
            upload_binary: job.is_some() && needs_binary,
            head_node: self.settings.head_node,
        };
        // The welcome goes first on the stream, before anything scheduled below.
        sender.send(FromHead::Welcome(welcome.clone()));
        self.peers
            .insert(peer, kind, sender, PeerProcess { pid, since: now });
        // A new node may make queued or infeasible tasks runnable.
        self.retry_infeasible();
        self.schedule();
        welcome
    }

    pub(super) fn disconnect(&mut self, peer: PeerId, reason: &str) {
        let Some(kind) = self.peers.remove(peer) else {
            return;
        };
        let mut freed = Freed::default();
        self.objects.remove_peer(peer, &mut freed);
        self.user_metrics.ended(&peer);
        self.drop_agent_requests(peer);
        match kind {
            PeerKind::Node(node) => self.node_died(node, &format!("connection lost: {reason}")),
            PeerKind::Driver(job) => {
                if reason != GOODBYE {
                    self.jobs.driver_lost(job, reason);
                }
                self.job_ended(job)
            }
            PeerKind::Worker { .. } | PeerKind::Client => {}
        }
        self.apply_freed(freed);
        self.schedule();
    }

    pub(super) fn check_heartbeats(&mut self) {
        let now = self.clock.now();
        // Ticks come every tenth of the node timeout. A much longer gap means this
        // process was stalled (SIGSTOP, a VM pause, swapping), not the nodes: their
        // heartbeats are waiting unread. Give every node a full timeout from now
        // rather than declare them all dead for the head's own silence.
        let gap = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        if gap > self.settings.node_timeout / 2 {
            tracing::warn!(
                "the head was stalled for {gap:?}; every node gets a new {:?} to be heard from",
                self.settings.node_timeout
            );
            self.nodes.excuse_stall(now);
        }
        // After a restart: nodes that did not come back in time are given up, and
        // what came back unclaimed is let go at the end of its window.
        self.release_parked();
        self.expire_reclaim();
        for task_id in self.tasks.due(now) {
            self.requeue(task_id);
        }
        let timeout = self.settings.node_timeout;
        // The head's own node runs in this process: if the head runs, so does it.
        let head_node = self.settings.head_node;
        for (node, peer) in self.nodes.silent(now, timeout, head_node) {
            let reason = format!("no heartbeat for {timeout:?}");
            self.node_died(node, &reason);
            // If it was only paused, it must not go on as if nothing happened: tell
            // it, and drop its stream, so it joins again as a new node.
            self.send(peer, FromHead::NodeDead(reason.clone()));
            self.disconnect(peer, &reason);
        }
        self.schedule();
    }

    pub(super) fn node_died(&mut self, node_id: NodeId, reason: &str) {
        let mut forgotten = Vec::new();
        let now = self.clock.now();
        let Some(dead) = self.nodes.mark_dead(node_id, now, reason, &mut forgotten) else {
            return;
        };
        self.remember_node(node_id);
        self.forget(crate::storage::NODES_TABLE, &forgotten);
        self.reclaim.node_gone(node_id);
        self.relays.node_gone(node_id);
        let running = dead.running;
        tracing::warn!(node = ?node_id, address = %dead.address, running = running.len(), "node died: {reason}");
        // Actors first: calls that were running there are then retried into a
        // restarting actor, not sent back to the dead node.
        for actor in self.actors.alive_on(node_id) {
            self.actor_lost(actor, format!("its node {node_id} died ({reason})"));
        }
        for task_id in running {
            // The dead node holds nothing any more: neither does the task.
            self.tasks.take_held(task_id);
            self.attempt_failed(task_id, format!("node {node_id} died ({reason})"));
        }
        for id in self.objects.objects_on(node_id) {
            if self.objects.drop_copy(&id, node_id) {
                self.object_lost(id);
            }
        }
        self.retry_infeasible_after_loss();
    }

    pub(super) fn job_ended(&mut self, job_id: JobId) {
        if self.jobs.driver(job_id).is_none() {
            return;
        }
        tracing::info!(job = ?job_id, "driver disconnected; job ended");
        self.end_job_actors(job_id);
        // Detached actors keep the job alive: they may be restarted and call tasks.
        let detached = self.actors.has_detached(job_id);
        self.jobs.driver_exited(job_id, detached);
        let orphans = self
            .tasks
            .of_job(job_id, |spec| !is_detached_creation(spec));
        let ended = TaskError::WorkerDied {
            function: String::new(),
            attempts: 0,
            reason: "the job's driver exited".into(),
        };
        let queued: HashSet<TaskId> = orphans.iter().copied().collect();
        self.queue.retain(|t| !queued.contains(&t));
        for task_id in orphans {
            self.complete_task(task_id, ObjectValue::Error(Box::new(ended.clone())));
        }
        self.announce_job_end(job_id);
        if !detached {
            let forgotten = self.jobs.remove(job_id, self.clock.now());
            self.remember_job(job_id);
            self.forget(crate::storage::DRIVER_JOBS_TABLE, &forgotten);
        }
    }

    /// Tells the nodes to stop the job's workers (they spare detached actors').
    fn announce_job_end(&self, job_id: JobId) {
        for peer in self.nodes.live_peers() {
            self.send(peer, FromHead::JobEnded(job_id));
        }
    }

    /// A detached actor died: if its job's driver is gone and it was the last, the
    /// job ends now (unless its driver may still come back after a head restart:
    /// the claim window decides then).
    pub(super) fn end_job_if_finished(&mut self, job_id: JobId) {
        if self.jobs.driver_gone(job_id)
            && !self.actors.has_detached(job_id)
            && !self.reclaim.awaits_driver(job_id)
        {
            tracing::info!(job = ?job_id, "last detached actor ended; job ended");
            let forgotten = self.jobs.remove(job_id, self.clock.now());
            self.remember_job(job_id);
            self.forget(crate::storage::DRIVER_JOBS_TABLE, &forgotten);
            self.announce_job_end(job_id);
        }
    }
}
