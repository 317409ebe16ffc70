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
                let arg_bytes = self.arg_bytes(&task.spec);
                let views: Vec<NodeView<'_>> = self
                    .nodes
                    .values()
                    .filter(|n| n.alive)
                    .map(|n| NodeView {
                        id: n.reg.node_id,
                        total: &n.capacity,
                        used: &n.used,
                    })
                    .collect();
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
            if let Some(ObjectValue::OnNodes { nodes, size }) =
                self.objects.get(&id).map(|e| &e.value)
            {
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
        let sources: Vec<ArgSource> = task
            .spec
            .args
            .iter()
            .map(|arg| match arg {
                TaskArg::Value(_) => ArgSource::InSpec,
                TaskArg::Ref(id) => match self.objects.get(id).map(|e| &e.value) {
                    Some(ObjectValue::Inline(v)) => ArgSource::Inline(v.clone()),
                    Some(ObjectValue::OnNodes { nodes, .. }) => {
                        ArgSource::At(self.addresses(nodes))
                    }
                    // Unreachable by construction: tasks are queued only when every
                    // argument is ready and not an error; an empty holder list makes
                    // the node report the argument as lost.
                    _ => ArgSource::At(Vec::new()),
                },
            })
            .collect();
        let Some(binary) = self.jobs.get(&task.spec.job).map(|j| j.binary.clone()) else {
            return;
        };
        let assignment = TaskAssignment {
            spec: Arc::clone(&task.spec),
            attempt: task.attempt,
            sources,
            binary,
        };
        let demand = task.spec.resources.clone();
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        node.used.add(&demand);
        node.running.insert(task_id);
        let peer = node.peer;
        if let Some(task) = self.tasks.get_mut(&task_id) {
            task.state = TaskState::Running(node_id);
            task.held = demand;
        }
        self.send(peer, FromHead::Execute(Box::new(assignment)));
    }

    /// Tasks queued for shapes only a dead node could run become infeasible.
    pub(super) fn retry_infeasible_after_loss(&mut self) {
        let mut stuck = Vec::new();
        for shape in self.queue.shapes() {
            if !self.feasible(&shape) {
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
