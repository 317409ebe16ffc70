//! Placement: putting queued tasks on nodes.

use super::*;

impl HeadState {
    /// Places queued tasks on nodes with room, until nothing more fits.
    pub(super) fn schedule(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        for shape in self.queue.shapes() {
            while let Some(task_id) = self.queue.peek(&shape) {
                let Some(task) = self.tasks.get(&task_id) else {
                    self.queue.pop(&shape);
                    continue;
                };
                let arg_bytes = self.arg_bytes(task.spec());
                let views = self.nodes.views();
                let Some(node_id) = pick_node(&views, &shape, &arg_bytes, self.turn) else {
                    break;
                };
                self.turn = self.turn.wrapping_add(1);
                self.queue.pop(&shape);
                self.assign(task_id, node_id);
            }
        }
    }

    pub(super) fn arg_bytes(&self, spec: &TaskSpec) -> HashMap<NodeId, u64> {
        let mut bytes = HashMap::default();
        for id in spec.arg_refs() {
            if let Some(ObjectValue::OnNodes { nodes, size }) = self.objects.value(&id) {
                for n in nodes {
                    *bytes.entry(*n).or_insert(0) += size;
                }
            }
        }
        bytes
    }

    pub(super) fn assign(&mut self, task_id: TaskId, node_id: NodeId) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let spec = Arc::clone(task.spec());
        let sources: Vec<ArgSource> = spec
            .args
            .iter()
            .map(|arg| match arg {
                TaskArg::Value(_) => ArgSource::InSpec,
                TaskArg::Ref(id) => match self.objects.value(id) {
                    Some(ObjectValue::Inline(v)) => ArgSource::Inline(v.clone()),
                    Some(ObjectValue::OnNodes { nodes, .. }) => {
                        let mut at = self.nodes.addresses(nodes);
                        // Holders some node could not reach are tried last: a copy
                        // made around the cut comes first.
                        if let Some(unreached) = self.relays.unreached(id) {
                            at.sort_by_key(|a| unreached.contains(&a.node));
                        }
                        ArgSource::At(at)
                    }
                    // Unreachable by construction: tasks are queued only when every
                    // argument is ready and not an error; an empty holder list makes
                    // the node report the argument as lost.
                    _ => ArgSource::At(Vec::new()),
                },
            })
            .collect();
        let Some(binary) = self.jobs.binary(spec.job).cloned() else {
            return;
        };
        let demand = spec.resources.clone();
        let assignment = TaskAssignment {
            spec,
            attempt: task.attempt(),
            sources,
            binary,
        };
        let Some(peer) = self.nodes.start_task(node_id, task_id, &demand) else {
            return;
        };
        self.tasks.start(task_id, node_id, demand, self.clock_ms());
        self.send(peer, FromHead::Execute(Box::new(assignment)));
    }

    /// Tasks queued for shapes only a dead node could run become infeasible.
    pub(super) fn retry_infeasible_after_loss(&mut self) {
        let mut stuck = Vec::new();
        for shape in self.queue.shapes() {
            if !self.nodes.feasible(&shape) {
                while let Some(t) = self.queue.pop(&shape) {
                    stuck.push((t, shape.clone()));
                }
            }
        }
        for (t, shape) in stuck {
            self.enqueue(t, shape, false);
        }
    }
}
