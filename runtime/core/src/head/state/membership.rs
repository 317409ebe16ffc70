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
        let kind = match role {
            PeerRole::Node(reg) => {
                let id = reg.node_id;
                if self.nodes.get(&id).is_some_and(|n| n.alive) {
                    return Welcome::Rejected(format!(
                        "a live node with id {id} is already registered"
                    ));
                }
                tracing::info!(node = ?id, address = %reg.address, resources = %reg.resources, "node joined");
                // No queueing ahead until the node's tasks are known to be short.
                let capacity = reg.resources.clone();
                self.nodes.insert(
                    id,
                    NodeEntry {
                        capacity,
                        avg_run_secs: None,
                        reg,
                        peer,
                        alive: true,
                        used: ResourceSet::new(),
                        running: HashSet::default(),
                        finished: 0,
                        last_heartbeat: self.clock.now(),
                        load: NodeLoad::default(),
                    },
                );
                PeerKind::Node(id)
            }
            PeerRole::Driver { binary, name } => {
                if !binary.is_well_formed() {
                    return Welcome::Rejected("the driver's binary hash is not a SHA-256".into());
                }
                let id = JobId::random();
                tracing::info!(job = ?id, %name, "driver connected");
                self.jobs.insert(
                    id,
                    JobEntry {
                        binary,
                        driver: peer,
                        alive: true,
                        driver_gone: false,
                    },
                );
                job = Some(id);
                PeerKind::Driver(id)
            }
            PeerRole::Worker { node, job, proof } => {
                if !self.jobs.get(&job).is_some_and(|j| j.alive) {
                    return Welcome::Rejected(format!("job {job} has ended"));
                }
                // Only a process its (live) node started for this job knows the proof:
                // holding the token is not enough to act as another job's worker.
                let genuine = self.nodes.get(&node).is_some_and(|n| {
                    n.alive && crate::protocol::worker_proof(&n.reg.worker_key, job) == proof
                });
                if !genuine {
                    return Welcome::Rejected(format!(
                        "not a worker that node {node} started for job {job}"
                    ));
                }
                PeerKind::Worker { job }
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
        self.peers.insert(peer, Peer { kind, sender });
        // A new node may make queued or infeasible tasks runnable.
        self.retry_infeasible();
        self.schedule();
        welcome
    }

    pub(super) fn disconnect(&mut self, peer: PeerId, reason: &str) {
        let Some(p) = self.peers.remove(&peer) else {
            return;
        };
        let mut freed = Freed::default();
        self.objects.remove_peer(peer, &mut freed);
        match p.kind {
            PeerKind::Node(node) => self.node_died(node, &format!("connection lost: {reason}")),
            PeerKind::Driver(job) => self.job_ended(job),
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
            for node in self.nodes.values_mut().filter(|n| n.alive) {
                node.last_heartbeat = node.last_heartbeat.max(now);
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = self.delayed.drain(..).partition(|(at, _)| *at <= now);
        self.delayed = later;
        for (_, task_id) in due {
            self.requeue(task_id);
        }
        let timeout = self.settings.node_timeout;
        // The head's own node runs in this process: if the head runs, so does it.
        let head_node = self.settings.head_node;
        let silent: Vec<(NodeId, PeerId)> = self
            .nodes
            .values()
            .filter(|n| {
                n.alive
                    && n.reg.node_id != head_node
                    && now.saturating_duration_since(n.last_heartbeat) > timeout
            })
            .map(|n| (n.reg.node_id, n.peer))
            .collect();
        for (node, peer) in silent {
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
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        if !node.alive {
            return;
        }
        node.alive = false;
        node.used = ResourceSet::new();
        // Dead nodes stay listed for `rayish status`, the newest MAX_DEAD_NODES only
        // (Ray's maximum_gcs_dead_node_cached_count): a node that rejoins after each
        // pause must not grow the table forever.
        self.dead_nodes.push_back(node_id);
        while self.dead_nodes.len() > MAX_DEAD_NODES {
            if let Some(old) = self.dead_nodes.pop_front() {
                if self.nodes.get(&old).is_some_and(|n| !n.alive) {
                    self.nodes.remove(&old);
                }
            }
        }
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        let running: Vec<TaskId> = node.running.drain().collect();
        tracing::warn!(node = ?node_id, address = %node.reg.address, running = running.len(), "node died: {reason}");
        // Actors first: calls that were running there are then retried into a
        // restarting actor, not sent back to the dead node.
        for actor in self.actors_on(node_id) {
            self.actor_lost(actor, format!("its node {node_id} died ({reason})"));
        }
        for task_id in running {
            if let Some(task) = self.tasks.get_mut(&task_id) {
                task.held = ResourceSet::new();
                task.blocked = false;
            }
            self.attempt_failed(task_id, format!("node {node_id} died ({reason})"));
        }
        for id in self.objects.objects_on(node_id) {
            let Some(entry) = self.objects.get_mut(&id) else {
                continue;
            };
            let ObjectValue::OnNodes { nodes, .. } = &mut entry.value else {
                continue;
            };
            nodes.remove(&node_id);
            if nodes.is_empty() {
                self.object_lost(id);
            }
        }
        self.retry_infeasible_after_loss();
    }

    pub(super) fn job_ended(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.driver_gone = true;
        tracing::info!(job = ?job_id, "driver disconnected; job ended");
        self.end_job_actors(job_id);
        let detached = self.job_has_detached_actors(job_id);
        if let Some(job) = self.jobs.get_mut(&job_id) {
            // Detached actors keep the job alive: they may be restarted and call tasks.
            job.alive = detached;
        }
        let orphans: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.spec.job == job_id && !self.is_detached_creation(&t.spec))
            .map(|(id, _)| *id)
            .collect();
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
            self.jobs.remove(&job_id);
        }
    }

    /// Tells the nodes to stop the job's workers (they spare detached actors').
    fn announce_job_end(&self, job_id: JobId) {
        let node_peers: Vec<PeerId> = self
            .nodes
            .values()
            .filter(|n| n.alive)
            .map(|n| n.peer)
            .collect();
        for peer in node_peers {
            self.send(peer, FromHead::JobEnded(job_id));
        }
    }

    /// A detached actor died: if its job's driver is gone and it was the last, the
    /// job ends now.
    pub(super) fn end_job_if_finished(&mut self, job_id: JobId) {
        let gone = self.jobs.get(&job_id).is_some_and(|j| j.driver_gone);
        if gone && !self.job_has_detached_actors(job_id) {
            tracing::info!(job = ?job_id, "last detached actor ended; job ended");
            self.jobs.remove(&job_id);
            self.announce_job_end(job_id);
        }
    }
}
