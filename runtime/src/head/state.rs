//! The head's state machine: membership, jobs, tasks, the object directory and scheduling.
//!
//! One task owns this state and handles one [`HeadEvent`] at a time, so the tables
//! need no locks and every change is ordered. Network handling lives in
//! [`super::service`]; this module only reads events and queues messages to peers.

use super::directory::{Freed, ObjectDirectory, ObjectValue};
use super::scheduler::{dispatch_factor, is_feasible, pick_node, NodeView, SchedulingQueue};
use crate::ids::{BinaryHash, JobId, NodeId, ObjectId, PeerId, TaskId};
use crate::protocol::{
    ArgSource, ClusterStatus, FromHead, NodeAddress, NodeLoad, NodeRegistration, NodeStatus,
    ObjectLocation, PeerRole, StoredValue, TaskArg, TaskAssignment, TaskError, TaskOutcome,
    TaskSpec, ToHead, Welcome,
};
use crate::resources::{ResourceSet, CPU};
use crate::transport::MessageSender;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Something that happened, for the head to act on.
pub enum HeadEvent {
    /// A peer finished its handshake.
    Connected {
        /// Id given to the connection.
        peer: PeerId,
        /// What it said it is.
        role: PeerRole,
        /// Where to send it messages.
        sender: MessageSender<FromHead>,
        /// Whether the head's binary store lacks a driver's binary.
        needs_binary: bool,
        /// The answer to send it.
        reply: oneshot::Sender<Welcome>,
    },
    /// A peer sent a message.
    Message(PeerId, ToHead),
    /// A peer's connection ended.
    Disconnected(PeerId, String),
    /// Time passed: check for nodes that stopped sending heartbeats.
    Tick,
}

enum PeerKind {
    Node(NodeId),
    Driver(JobId),
    Worker { job: JobId },
    Client,
}

struct Peer {
    kind: PeerKind,
    sender: MessageSender<FromHead>,
}

struct NodeEntry {
    reg: NodeRegistration,
    peer: PeerId,
    alive: bool,
    used: ResourceSet,
    running: HashSet<TaskId>,
    finished: u64,
    last_heartbeat: Instant,
    load: NodeLoad,
    /// What the head may assign it: its resources times `dispatch_factor(...)`.
    capacity: ResourceSet,
    /// Moving average of its tasks' run times, in seconds; `None` before the first.
    avg_run_secs: Option<f64>,
}

impl NodeEntry {
    fn note_run_time(&mut self, micros: u64) {
        let secs = micros as f64 / 1e6;
        let avg = match self.avg_run_secs {
            Some(avg) => 0.8 * avg + 0.2 * secs,
            None => secs,
        };
        self.avg_run_secs = Some(avg);
        self.capacity = self.reg.resources.scaled(dispatch_factor(avg));
    }
}

struct JobEntry {
    binary: BinaryHash,
    driver: PeerId,
    alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    WaitingForArgs,
    Queued,
    Infeasible,
    Running(NodeId),
}

struct TaskEntry {
    spec: TaskSpec,
    attempt: u32,
    state: TaskState,
    /// Arguments not yet ready.
    missing_args: usize,
    /// What the task holds on its node now (less its CPU while blocked in `get`).
    held: ResourceSet,
    blocked: bool,
    /// Times a node could not fetch an argument of this task.
    fetch_failures: u32,
}

/// Settings of the head.
#[derive(Debug, Clone)]
pub struct HeadSettings {
    /// The head process's own node id.
    pub head_node: NodeId,
    /// A node silent for this long is declared dead.
    pub node_timeout: Duration,
}

/// The head's tables and the logic that changes them.
pub struct HeadState {
    settings: HeadSettings,
    peers: HashMap<PeerId, Peer>,
    nodes: HashMap<NodeId, NodeEntry>,
    jobs: HashMap<JobId, JobEntry>,
    tasks: HashMap<TaskId, TaskEntry>,
    objects: ObjectDirectory,
    queue: SchedulingQueue,
    /// Tasks waiting for each not-yet-ready object.
    dependents: HashMap<ObjectId, Vec<TaskId>>,
    finished_tasks: u64,
    turn: usize,
    /// Tasks to re-queue at a given time (after an argument fetch failed).
    delayed: Vec<(Instant, TaskId)>,
}

impl HeadState {
    /// Empty tables.
    pub fn new(settings: HeadSettings) -> Self {
        Self {
            settings,
            peers: HashMap::default(),
            nodes: HashMap::default(),
            jobs: HashMap::default(),
            tasks: HashMap::default(),
            objects: ObjectDirectory::default(),
            queue: SchedulingQueue::default(),
            dependents: HashMap::default(),
            finished_tasks: 0,
            turn: 0,
            delayed: Vec::new(),
        }
    }

    /// Handles a batch of events that arrived together, then places what became
    /// runnable: one scheduling pass per batch rather than per message.
    pub fn handle_batch(&mut self, events: impl IntoIterator<Item = HeadEvent>) {
        for event in events {
            self.handle(event);
        }
        self.schedule();
    }

    /// Handles one event (callers must then schedule: see [`Self::handle_batch`]).
    fn handle(&mut self, event: HeadEvent) {
        match event {
            HeadEvent::Connected {
                peer,
                role,
                sender,
                needs_binary,
                reply,
            } => {
                let welcome = self.connect(peer, role, sender, needs_binary);
                let _ = reply.send(welcome);
            }
            HeadEvent::Message(peer, msg) => self.message(peer, msg),
            HeadEvent::Disconnected(peer, reason) => self.disconnect(peer, &reason),
            HeadEvent::Tick => self.check_heartbeats(),
        }
    }

    fn connect(
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
                        last_heartbeat: Instant::now(),
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
                    },
                );
                job = Some(id);
                PeerKind::Driver(id)
            }
            PeerRole::Worker { job, .. } => {
                if !self.jobs.get(&job).is_some_and(|j| j.alive) {
                    return Welcome::Rejected(format!("job {job} has ended"));
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

    fn send(&self, peer: PeerId, msg: FromHead) {
        if let Some(p) = self.peers.get(&peer) {
            p.sender.send(msg);
        }
    }

    fn peer_job(&self, peer: PeerId) -> Option<JobId> {
        match self.peers.get(&peer)?.kind {
            PeerKind::Driver(job) | PeerKind::Worker { job } => Some(job),
            _ => None,
        }
    }

    fn peer_node(&self, peer: PeerId) -> Option<NodeId> {
        match self.peers.get(&peer)?.kind {
            PeerKind::Node(node) => Some(node),
            _ => None,
        }
    }

    fn message(&mut self, peer: PeerId, msg: ToHead) {
        let mut freed = Freed::default();
        match msg {
            ToHead::SubmitTasks(specs) => {
                let Some(job) = self.peer_job(peer) else {
                    tracing::warn!(
                        ?peer,
                        "task submission from a peer that is not a driver or worker; ignored"
                    );
                    return;
                };
                for spec in specs {
                    if spec.job != job {
                        tracing::warn!(?peer, "task for another job; ignored");
                        continue;
                    }
                    self.submit(peer, spec);
                }
            }
            ToHead::PutInline { id, value } => {
                self.objects
                    .create(id, ObjectValue::Inline(value), Some(peer));
                self.object_ready(id);
            }
            ToHead::PutStored { id, node, size } => {
                let value = ObjectValue::OnNodes {
                    nodes: HashSet::from_iter([node]),
                    size,
                };
                self.objects.create(id, value, Some(peer));
                self.object_ready(id);
            }
            ToHead::Nest { outer, inner } => self.objects.nest(outer, inner),
            ToHead::AddRefs(ids) => {
                for id in ids {
                    self.objects.add_holder(peer, id);
                }
            }
            ToHead::RemoveRefs(ids) => {
                for id in ids {
                    self.objects.remove_holder(peer, id, &mut freed);
                }
            }
            ToHead::Subscribe(ids) => {
                for id in ids {
                    self.subscribe(peer, id);
                }
            }
            ToHead::TaskBlocked(task) => self.set_blocked(task, true),
            ToHead::TaskUnblocked(task) => self.set_blocked(task, false),
            ToHead::Heartbeat(load) => {
                if let Some(node) = self.peer_node(peer).and_then(|n| self.nodes.get_mut(&n)) {
                    node.last_heartbeat = Instant::now();
                    node.load = load;
                }
            }
            ToHead::TaskFinished {
                task_id,
                attempt,
                outcome,
                run_micros,
            } => {
                if let Some(node) = self.peer_node(peer) {
                    if let Some(entry) = self.nodes.get_mut(&node) {
                        entry.note_run_time(run_micros);
                    }
                    self.task_finished(node, task_id, attempt, outcome);
                }
            }
            ToHead::ObjectCopied(id) => {
                if let Some(node) = self.peer_node(peer) {
                    if let Some(ObjectValue::OnNodes { nodes, .. }) =
                        self.objects.get_mut(&id).map(|e| &mut e.value)
                    {
                        nodes.insert(node);
                    } else {
                        // Freed meanwhile: the copy is garbage.
                        self.send(peer, FromHead::DeleteObjects(vec![id]));
                    }
                }
            }
            ToHead::Goodbye => {
                self.disconnect(peer, "the process exited");
                return;
            }
            ToHead::StatusRequest => {
                let status = self.status();
                self.send(peer, FromHead::Status(Box::new(status)));
            }
        }
        self.apply_freed(freed);
        // No scheduling here: `handle_batch` schedules once per batch of messages.
    }

    fn submit(&mut self, submitter: PeerId, spec: TaskSpec) {
        let return_id = spec.return_id;
        self.objects
            .create(return_id, ObjectValue::Pending, Some(submitter));
        self.add_task(spec, 0);
    }

    /// Registers a task (new, or re-made from lineage) and queues it when its args are ready.
    fn add_task(&mut self, spec: TaskSpec, attempt: u32) {
        let task_id = spec.task_id;
        let mut missing = 0;
        let mut failed: Option<TaskError> = None;
        for id in spec.arg_refs().chain(spec.nested_refs.iter().copied()) {
            self.objects.retain(id);
        }
        for id in spec.arg_refs() {
            match self.objects.get(&id).map(|e| &e.value) {
                None => {
                    failed.get_or_insert(TaskError::ObjectLost {
                        object: id.to_string(),
                        reason: "the argument was freed or never existed".into(),
                    });
                }
                Some(ObjectValue::Pending) => {
                    missing += 1;
                    self.dependents.entry(id).or_default().push(task_id);
                }
                Some(ObjectValue::Error(e)) => {
                    failed.get_or_insert(e.clone());
                }
                Some(_) => {}
            }
        }
        let resources = spec.resources.clone();
        self.tasks.insert(
            task_id,
            TaskEntry {
                spec,
                attempt,
                state: TaskState::WaitingForArgs,
                missing_args: missing,
                held: ResourceSet::new(),
                blocked: false,
                fetch_failures: 0,
            },
        );
        if let Some(err) = failed {
            self.complete_task(task_id, ObjectValue::Error(err));
        } else if missing == 0 {
            self.enqueue(task_id, resources, false);
        }
    }

    fn enqueue(&mut self, task_id: TaskId, shape: ResourceSet, front: bool) {
        let totals = self
            .nodes
            .values()
            .filter(|n| n.alive)
            .map(|n| n.reg.resources.clone());
        let feasible = is_feasible(totals, &shape);
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        if feasible {
            task.state = TaskState::Queued;
            if front {
                self.queue.push_front(shape, task_id);
            } else {
                self.queue.push(shape, task_id);
            }
        } else {
            task.state = TaskState::Infeasible;
            let warning = format!(
                "task {} needs {shape}, which no node in the cluster has; it stays pending until such a node joins",
                task.spec.function
            );
            tracing::warn!("{warning}");
            let job = task.spec.job;
            if let Some(driver) = self.jobs.get(&job).map(|j| j.driver) {
                self.send(driver, FromHead::Warning(warning));
            }
        }
    }

    fn retry_infeasible(&mut self) {
        let stuck: Vec<(TaskId, ResourceSet)> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::Infeasible)
            .map(|(id, t)| (*id, t.spec.resources.clone()))
            .collect();
        let totals: Vec<ResourceSet> = self
            .nodes
            .values()
            .filter(|n| n.alive)
            .map(|n| n.reg.resources.clone())
            .collect();
        for (id, shape) in stuck {
            if is_feasible(totals.iter().cloned(), &shape) {
                self.enqueue(id, shape, false);
            }
        }
    }

    fn subscribe(&mut self, peer: PeerId, id: ObjectId) {
        let location = match self.objects.get_mut(&id) {
            None => Some(ObjectLocation::Error(TaskError::ObjectLost {
                object: id.to_string(),
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

    fn location(&self, id: ObjectId) -> Option<ObjectLocation> {
        let entry = self.objects.get(&id)?;
        Some(match &entry.value {
            ObjectValue::Pending => return None,
            ObjectValue::Inline(v) => ObjectLocation::Inline(v.clone()),
            ObjectValue::OnNodes { nodes, .. } => ObjectLocation::Nodes(self.addresses(nodes)),
            ObjectValue::Error(e) => ObjectLocation::Error(e.clone()),
        })
    }

    fn addresses(&self, nodes: &HashSet<NodeId>) -> Vec<NodeAddress> {
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
    fn object_ready(&mut self, id: ObjectId) {
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

    fn set_blocked(&mut self, task_id: TaskId, blocked: bool) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let TaskState::Running(node_id) = task.state else {
            return;
        };
        if task.blocked == blocked {
            return;
        }
        task.blocked = blocked;
        let cpu = ResourceSet::new().with(CPU, task.spec.resources.get(CPU));
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        if blocked {
            // A task waiting in `get` gives its CPU to others, so that a full cluster of
            // waiting parents cannot starve their children.
            task.held.subtract(&cpu);
            node.used.subtract(&cpu);
        } else {
            task.held.add(&cpu);
            node.used.add(&cpu);
        }
    }

    fn task_finished(
        &mut self,
        node_id: NodeId,
        task_id: TaskId,
        attempt: u32,
        outcome: TaskOutcome,
    ) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        if task.state != TaskState::Running(node_id) || task.attempt != attempt {
            tracing::debug!(?task_id, "stale report of a task that was already re-run");
            return;
        }
        self.release_resources(task_id, node_id);
        if let Some(node) = self.nodes.get_mut(&node_id) {
            node.finished += 1;
        }
        match outcome {
            TaskOutcome::Stored(StoredValue::Inline(v)) => {
                self.complete_task(task_id, ObjectValue::Inline(v))
            }
            TaskOutcome::Stored(StoredValue::OnNode { size }) => self.complete_task(
                task_id,
                ObjectValue::OnNodes {
                    nodes: HashSet::from_iter([node_id]),
                    size,
                },
            ),
            TaskOutcome::Failed(err) => self.complete_task(task_id, ObjectValue::Error(err)),
            TaskOutcome::WorkerDied(reason) => self.attempt_failed(task_id, reason),
            TaskOutcome::ArgumentUnavailable { object, reason } => {
                self.argument_unavailable(task_id, object, reason)
            }
        }
    }

    fn release_resources(&mut self, task_id: TaskId, node_id: NodeId) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let held = std::mem::take(&mut task.held);
        task.blocked = false;
        if let Some(node) = self.nodes.get_mut(&node_id) {
            node.used.subtract(&held);
            node.running.remove(&task_id);
        }
    }

    /// The task's worker or node died: re-run it while retries remain.
    fn attempt_failed(&mut self, task_id: TaskId, reason: String) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let job_alive = self.jobs.get(&task.spec.job).is_some_and(|j| j.alive);
        if job_alive && task.attempt < task.spec.max_retries {
            task.attempt += 1;
            tracing::warn!(
                function = %task.spec.function, attempt = task.attempt, max_retries = task.spec.max_retries,
                "task lost its worker ({reason}); retrying"
            );
            self.requeue(task_id);
        } else {
            let err = TaskError::WorkerDied {
                function: task.spec.function.clone(),
                attempts: task.attempt + 1,
                reason,
            };
            self.complete_task(task_id, ObjectValue::Error(err));
        }
    }

    /// A node could not fetch one of the task's arguments. Its holders may have died
    /// without the head knowing yet, so the task is retried after a pause (without
    /// using up a retry) until the head learns where the argument is, re-makes it, or
    /// declares it lost; past a few node timeouts the task fails with `ObjectLost`.
    fn argument_unavailable(&mut self, task_id: TaskId, object: ObjectId, reason: String) {
        let pause = (self.settings.node_timeout / 4).max(Duration::from_millis(100));
        let patience =
            (4 * self.settings.node_timeout.as_millis() / pause.as_millis().max(1)) as u32 + 4;
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        task.fetch_failures += 1;
        if task.fetch_failures > patience {
            let err = TaskError::ObjectLost {
                object: object.to_string(),
                reason: format!("no holder could serve it: {reason}"),
            };
            self.complete_task(task_id, ObjectValue::Error(err));
            return;
        }
        tracing::debug!(
            ?task_id,
            ?object,
            "argument unavailable ({reason}); retrying later"
        );
        task.state = TaskState::WaitingForArgs;
        self.delayed.push((Instant::now() + pause, task_id));
    }

    /// Puts a task that must run again back in line: it waits for any argument that is
    /// not ready now (being re-made after a loss) and fails if one became an error.
    fn requeue(&mut self, task_id: TaskId) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let args: Vec<ObjectId> = task.spec.arg_refs().collect();
        let shape = task.spec.resources.clone();
        let mut missing = 0;
        for id in args {
            match self.objects.get(&id).map(|e| &e.value) {
                Some(ObjectValue::Pending) => {
                    missing += 1;
                    self.dependents.entry(id).or_default().push(task_id);
                }
                Some(ObjectValue::Error(e)) => {
                    let e = e.clone();
                    self.complete_task(task_id, ObjectValue::Error(e));
                    return;
                }
                Some(_) => {}
                None => {
                    let err = TaskError::ObjectLost {
                        object: id.to_string(),
                        reason: "the argument was freed".into(),
                    };
                    self.complete_task(task_id, ObjectValue::Error(err));
                    return;
                }
            }
        }
        if let Some(task) = self.tasks.get_mut(&task_id) {
            task.state = TaskState::WaitingForArgs;
            task.missing_args = missing;
        }
        if missing == 0 {
            self.enqueue(task_id, shape, true);
        }
    }

    /// The task is over for good: record its value, unpin its arguments.
    fn complete_task(&mut self, task_id: TaskId, value: ObjectValue) {
        let Some(task) = self.tasks.remove(&task_id) else {
            return;
        };
        if let TaskState::Running(node) = task.state {
            if let Some(n) = self.nodes.get_mut(&node) {
                n.running.remove(&task_id);
                n.used.subtract(&task.held);
            }
        }
        self.finished_tasks += 1;
        let return_id = task.spec.return_id;
        let keep_lineage = matches!(value, ObjectValue::OnNodes { .. });
        let mut freed = Freed::default();
        let entry = self.objects.create(return_id, value, None);
        let arg_pins: Vec<ObjectId> = task
            .spec
            .arg_refs()
            .chain(task.spec.nested_refs.iter().copied())
            .collect();
        if keep_lineage {
            entry.creator = Some(task.spec);
        }
        self.object_ready(return_id);
        for id in arg_pins {
            self.objects.release(id, &mut freed);
        }
        self.objects.free_if_unreferenced(return_id, &mut freed);
        self.apply_freed(freed);
    }

    fn apply_freed(&mut self, freed: Freed) {
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

    /// Places queued tasks on nodes with room, until nothing more fits.
    fn schedule(&mut self) {
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

    fn arg_bytes(&self, spec: &TaskSpec) -> HashMap<NodeId, u64> {
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

    fn assign(&mut self, task_id: TaskId, node_id: NodeId) {
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
            spec: task.spec.clone(),
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

    fn disconnect(&mut self, peer: PeerId, reason: &str) {
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

    fn check_heartbeats(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.delayed.drain(..).partition(|(at, _)| *at <= now);
        self.delayed = later;
        for (_, task_id) in due {
            self.requeue(task_id);
        }
        let timeout = self.settings.node_timeout;
        let silent: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.alive && n.last_heartbeat.elapsed() > timeout)
            .map(|n| n.reg.node_id)
            .collect();
        for node in silent {
            self.node_died(node, &format!("no heartbeat for {timeout:?}"));
        }
        self.schedule();
    }

    fn node_died(&mut self, node_id: NodeId, reason: &str) {
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        if !node.alive {
            return;
        }
        node.alive = false;
        node.used = ResourceSet::new();
        let running: Vec<TaskId> = node.running.drain().collect();
        tracing::warn!(node = ?node_id, address = %node.reg.address, running = running.len(), "node died: {reason}");
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

    /// The last copy of `id` is gone: re-run the task that made it, or record the loss.
    fn object_lost(&mut self, id: ObjectId) {
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
                    object: id.to_string(),
                    reason: "it was made by put or its task's arguments are gone".into(),
                };
                if let Some(entry) = self.objects.get_mut(&id) {
                    entry.value = ObjectValue::Error(err);
                }
                self.object_ready(id);
            }
        }
    }

    /// Tasks queued for shapes only a dead node could run become infeasible.
    fn retry_infeasible_after_loss(&mut self) {
        let totals: Vec<ResourceSet> = self
            .nodes
            .values()
            .filter(|n| n.alive)
            .map(|n| n.reg.resources.clone())
            .collect();
        let mut stuck = Vec::new();
        for shape in self.queue.shapes() {
            if !is_feasible(totals.iter().cloned(), &shape) {
                while let Some(t) = self.queue.pop(&shape) {
                    stuck.push((t, shape.clone()));
                }
            }
        }
        for (t, shape) in stuck {
            self.enqueue(t, shape, false);
        }
    }

    fn job_ended(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.alive = false;
        tracing::info!(job = ?job_id, "driver disconnected; job ended");
        let orphans: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.spec.job == job_id)
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
            self.complete_task(task_id, ObjectValue::Error(ended.clone()));
        }
        let node_peers: Vec<PeerId> = self
            .nodes
            .values()
            .filter(|n| n.alive)
            .map(|n| n.peer)
            .collect();
        for peer in node_peers {
            self.send(peer, FromHead::JobEnded(job_id));
        }
        self.jobs.remove(&job_id);
    }

    /// A snapshot for `rayish status`.
    pub fn status(&self) -> ClusterStatus {
        let mut nodes: Vec<NodeStatus> = self
            .nodes
            .values()
            .map(|n| NodeStatus {
                node_id: n.reg.node_id,
                address: n.reg.address,
                hostname: n.reg.hostname.clone(),
                alive: n.alive,
                total: n.reg.resources.clone(),
                available: if n.alive {
                    n.reg.resources.minus(&n.used)
                } else {
                    ResourceSet::new()
                },
                running_tasks: n.running.len() as u64,
                finished_tasks: n.finished,
                load: n.load,
            })
            .collect();
        nodes.sort_by_key(|n| (!n.alive, n.address));
        let mut infeasible: HashMap<ResourceSet, u64> = HashMap::default();
        let mut waiting = 0;
        let mut running = 0;
        for t in self.tasks.values() {
            match t.state {
                TaskState::Infeasible => {
                    *infeasible.entry(t.spec.resources.clone()).or_insert(0) += 1
                }
                TaskState::WaitingForArgs => waiting += 1,
                TaskState::Running(_) => running += 1,
                TaskState::Queued => {}
            }
        }
        let mut infeasible_demand: Vec<_> = infeasible.into_iter().collect();
        infeasible_demand.sort();
        ClusterStatus {
            nodes,
            pending_tasks: (self.queue.len() + waiting) as u64,
            running_tasks: running,
            finished_tasks: self.finished_tasks,
            pending_demand: self.queue.demand(),
            infeasible_demand,
            objects: self.objects.len() as u64,
            drivers: self.jobs.values().filter(|j| j.alive).count() as u64,
        }
    }
}
