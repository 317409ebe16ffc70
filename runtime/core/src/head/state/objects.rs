//! Objects: readiness, subscribers, freeing, and loss with a node.

use super::*;

impl HeadState {
    pub(super) fn subscribe(&mut self, peer: PeerId, id: ObjectId) {
        let location = match self.objects.get_mut(&id) {
            None => Some(ObjectLocation::Error(TaskError::ObjectLost {
                object: id,
                reason: "no such object: it was freed or never existed".into(),
            })),
            Some(entry) if !entry.is_ready() => {
                entry.subscribers.push(peer);
                None
            }
            Some(_) => self.location(id),
        };
        if let Some(location) = location {
            self.send(peer, FromHead::ObjectReady { id, location });
        }
    }

    pub(super) fn location(&self, id: ObjectId) -> Option<ObjectLocation> {
        let entry = self.objects.get(&id)?;
        Some(match &entry.value {
            ObjectValue::Pending => return None,
            ObjectValue::Inline(v) => ObjectLocation::Inline(v.clone()),
            ObjectValue::OnNodes { nodes, .. } => ObjectLocation::Nodes(self.addresses(nodes)),
            ObjectValue::Error(e) => ObjectLocation::Error((**e).clone()),
        })
    }

    pub(super) fn addresses(&self, nodes: &HashSet<NodeId>) -> Vec<NodeAddress> {
        nodes
            .iter()
            .filter_map(|n| self.nodes.get(n).filter(|e| e.alive))
            .map(|e| NodeAddress {
                node: e.reg.node_id,
                address: e.reg.address,
            })
            .collect()
    }

    /// The object's value is known: tell subscribers and wake tasks waiting for it.
    pub(super) fn object_ready(&mut self, id: ObjectId) {
        let subscribers = self
            .objects
            .get_mut(&id)
            .map(|e| std::mem::take(&mut e.subscribers))
            .unwrap_or_default();
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
        let error = match self.objects.get(&id).map(|e| &e.value) {
            Some(ObjectValue::Error(e)) => Some(e.clone()),
            _ => None,
        };
        for task_id in self.dependents.remove(&id).unwrap_or_default() {
            let Some(task) = self.tasks.get_mut(&task_id) else {
                continue;
            };
            if task.state != TaskState::WaitingForArgs {
                continue;
            }
            if let Some(err) = &error {
                // Like Ray: a task whose argument is an error fails with that error.
                self.complete_task(task_id, ObjectValue::Error(err.clone()));
                continue;
            }
            task.missing_args = task.missing_args.saturating_sub(1);
            if task.missing_args == 0 {
                let shape = task.spec.resources.clone();
                self.enqueue(task_id, shape, false);
            }
        }
    }

    pub(super) fn apply_freed(&mut self, freed: Freed) {
        if !freed.objects.is_empty() {
            self.handles_freed(&freed.objects);
        }
        let mut per_node: HashMap<NodeId, Vec<ObjectId>> = HashMap::default();
        for (node, id) in freed.node_copies {
            per_node.entry(node).or_default().push(id);
        }
        for (node, ids) in per_node {
            if let Some(peer) = self.nodes.get(&node).filter(|n| n.alive).map(|n| n.peer) {
                self.send(peer, FromHead::DeleteObjects(ids));
            }
        }
    }

    /// The last copy of `id` is gone: re-run the task that made it, or record the loss.
    pub(super) fn object_lost(&mut self, id: ObjectId) {
        let Some(entry) = self.objects.get_mut(&id) else {
            return;
        };
        let creator = entry.creator.take();
        let args_alive = creator.as_ref().is_some_and(|spec| {
            spec.arg_refs().all(|a| {
                self.objects
                    .get(&a)
                    .is_some_and(|e| !matches!(e.value, ObjectValue::Error(_)))
            })
        });
        match creator {
            Some(spec) if args_alive && self.jobs.get(&spec.job).is_some_and(|j| j.alive) => {
                tracing::warn!(object = ?id, function = %spec.function, "object lost with its node; re-running the task that made it");
                if let Some(entry) = self.objects.get_mut(&id) {
                    entry.value = ObjectValue::Pending;
                }
                self.add_task(spec, 0);
            }
            _ => {
                let err = TaskError::ObjectLost {
                    object: id,
                    reason: "it was made by put or its task's arguments are gone".into(),
                };
                if let Some(entry) = self.objects.get_mut(&id) {
                    entry.value = ObjectValue::Error(Box::new(err));
                }
                self.object_ready(id);
            }
        }
    }
}
