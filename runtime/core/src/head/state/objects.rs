//! Objects: readiness, subscribers, freeing, copies around a cut between nodes, and
//! loss with a node.

use super::*;

impl HeadState {
    pub(super) fn subscribe(&mut self, peer: PeerId, id: ObjectId) {
        let location = match self.objects.subscribe(&id, peer) {
            None => Some(ObjectLocation::Error(Box::new(TaskError::ObjectLost {
                object: id,
                reason: "no such object: it was freed or never existed".into(),
            }))),
            Some(false) => None,
            Some(true) => self.location(id),
        };
        if let Some(location) = location {
            self.send(peer, FromHead::ObjectReady { id, location });
        }
    }

    pub(super) fn location(&self, id: ObjectId) -> Option<ObjectLocation> {
        Some(match self.objects.value(&id)? {
            ObjectValue::Pending => return None,
            ObjectValue::Inline(v) => ObjectLocation::Inline(v.clone()),
            ObjectValue::OnNodes { nodes, .. } => {
                ObjectLocation::Nodes(self.nodes.addresses(nodes))
            }
            ObjectValue::Error(e) => ObjectLocation::Error(e.clone()),
        })
    }

    /// The object's value is known: tell subscribers and wake tasks waiting for it.
    pub(super) fn object_ready(&mut self, id: ObjectId) {
        let subscribers = self.objects.take_subscribers(&id);
        if !subscribers.is_empty() {
            if let Some(location) = self.location(id) {
                for peer in subscribers {
                    self.send(
                        peer,
                        FromHead::ObjectReady {
                            id,
                            location: location.clone(),
                        },
                    );
                }
            }
        }
        let error = match self.objects.value(&id) {
            Some(ObjectValue::Error(e)) => Some(e.clone()),
            _ => None,
        };
        for task_id in self.tasks.take_dependents(id) {
            let Some(task) = self.tasks.get(&task_id) else {
                continue;
            };
            if task.state() != TaskState::WaitingForArgs {
                continue;
            }
            if let Some(err) = &error {
                // Like Ray: a task whose argument is an error fails with that error.
                self.complete_task(task_id, ObjectValue::Error(err.clone()));
                continue;
            }
            let shape = task.spec().resources.clone();
            if self.tasks.arg_ready(task_id) {
                self.enqueue(task_id, shape, false);
            }
        }
    }

    pub(super) fn apply_freed(&mut self, freed: Freed) {
        if !self.relays.is_empty() {
            for id in &freed.objects {
                self.relays.forget(id);
            }
        }
        if !freed.objects.is_empty() {
            self.handles_freed(&freed.objects);
        }
        let mut per_node: HashMap<NodeId, Vec<ObjectId>> = HashMap::default();
        for (node, id) in freed.node_copies {
            per_node.entry(node).or_default().push(id);
        }
        for (node, ids) in per_node {
            if let Some(peer) = self.nodes.live_peer(node) {
                self.send(peer, FromHead::DeleteObjects(ids));
            }
        }
    }

    /// `id`, stored on nodes, was made by `spec`: kept to run again if every copy is
    /// lost, when `spec` is a function task. An actor call is not run again for
    /// that (its actor's state moved on since), nor is an actor's creation.
    pub(super) fn keep_lineage(&mut self, id: &ObjectId, spec: Arc<TaskSpec>) {
        if spec.kind == TaskKind::Function {
            self.objects.set_creator(id, spec);
        }
    }

    /// The last copy of `id` is gone: re-run the task that made it, or record the loss.
    pub(super) fn object_lost(&mut self, id: ObjectId) {
        if !self.objects.contains(&id) {
            return;
        }
        self.relays.forget(&id);
        let creator = self.objects.take_creator(&id);
        let args_alive = creator.as_ref().is_some_and(|spec| {
            spec.arg_refs().all(|a| {
                self.objects
                    .value(&a)
                    .is_some_and(|v| !matches!(v, ObjectValue::Error(_)))
            })
        });
        match creator {
            Some(spec) if args_alive && self.jobs.is_alive(spec.job) => {
                tracing::warn!(object = ?id, function = %spec.function, "object lost with its node; re-running the task that made it");
                self.objects.set_value(&id, ObjectValue::Pending);
                self.add_task(spec, 0);
            }
            _ => {
                let err = TaskError::ObjectLost {
                    object: id,
                    reason: "it was made by put or by an actor call (neither is run again \
                             to make it), or its task's arguments are gone"
                        .into(),
                };
                self.objects
                    .set_value(&id, ObjectValue::Error(Box::new(err)));
                self.object_ready(id);
            }
        }
    }

    /// Node `fetcher` could not fetch `id` from any of its holders. If the head still
    /// hears from one of them, the cut may be between the nodes alone (a partition,
    /// a firewall): another node is asked to copy it, the head's own first (every
    /// node reaches the head's host), so that the next try fetches it from there.
    /// Holders that are in fact dead are the loss path's business.
    pub(super) fn copy_around_cut(&mut self, id: ObjectId, fetcher: NodeId) {
        let Some(ObjectValue::OnNodes { nodes, .. }) = self.objects.value(&id) else {
            return;
        };
        if nodes.contains(&fetcher) || !nodes.iter().any(|n| self.nodes.is_live(*n)) {
            return;
        }
        let holders = nodes.clone();
        let head = self.settings.head_node;
        let mut candidates: Vec<NodeId> = self.nodes.views().iter().map(|v| v.id).collect();
        candidates.sort_by_key(|n| (*n != head, *n));
        let Some(copier) = self.relays.fetch_failed(id, fetcher, &holders, candidates) else {
            return;
        };
        let Some(peer) = self.nodes.live_peer(copier) else {
            return;
        };
        tracing::warn!(
            object = ?id, node = ?fetcher, copier = ?copier,
            "a node could not fetch an object from holders the head still hears from; copying it to another node"
        );
        let holders = self.nodes.addresses(&holders);
        self.send(peer, FromHead::CopyObject { id, holders });
    }
}
