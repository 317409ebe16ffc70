//! The head's state machine driven as quinn tests its connection state: no sockets, no
//! threads, no sleeping. Each test plays the peers (nodes, drivers), feeds the head
//! their messages and the passing of a fake clock, and asserts the messages it sends.

use super::*;
use crate::head::clock::ManualClock;
use crate::ids::{ActorId, BinaryHash};
use crate::protocol::{ActorCreation, NodeLoad, NodeRegistration, TaskKind};
use crate::resources::{CPU, GPU};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

const NODE_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// A head and the peers it talks to.
struct Bench {
    head: HeadState,
    clock: Arc<ManualClock>,
    inboxes: HashMap<PeerId, UnboundedReceiver<FromHead>>,
    next_peer: u128,
}

/// A node as the test plays it.
#[derive(Clone, Copy)]
struct TestNode {
    peer: PeerId,
    id: NodeId,
}

/// A driver as the test plays it.
#[derive(Clone, Copy)]
struct TestDriver {
    peer: PeerId,
    job: JobId,
}

impl Bench {
    fn new() -> Self {
        Self::on_storage(None)
    }

    /// A head keeping what it must in `storage`, and starting from what is there.
    fn on_storage(storage: Option<crate::storage::Storage>) -> Self {
        let clock = Arc::new(ManualClock::new());
        let settings = HeadSettings {
            // The head process's own node is not among the test's nodes.
            head_node: NodeId(u128::MAX),
            node_timeout: NODE_TIMEOUT,
            metrics_targets_file: None,
            task_events_capacity: 4,
            head_starts: None,
            storage,
            head_reconnect_timeout: RECONNECT_TIMEOUT,
        };
        Self {
            head: HeadState::with_clock(settings, clock.clone()),
            clock,
            inboxes: HashMap::default(),
            next_peer: 1,
        }
    }

    fn connect(&mut self, role: PeerRole) -> (PeerId, Welcome) {
        let peer = PeerId(self.next_peer);
        self.next_peer += 1;
        let (tx, rx) = unbounded_channel();
        let (reply, mut answer) = oneshot::channel();
        self.head.handle_batch([HeadEvent::Connected {
            peer,
            role,
            sender: MessageSender::direct(Arc::new(tx)),
            needs_binary: false,
            reply,
        }]);
        self.inboxes.insert(peer, rx);
        (
            peer,
            answer
                .try_recv()
                .expect("the head answers a handshake at once"),
        )
    }

    fn node(&mut self, resources: ResourceSet) -> TestNode {
        self.node_with_id(NodeId::random(), resources)
    }

    fn node_with_id(&mut self, id: NodeId, resources: ResourceSet) -> TestNode {
        let address = format!("127.0.0.{}:7000", self.next_peer + 1);
        let (peer, welcome) =
            self.connect(PeerRole::Node(registration(id, resources, &address, false)));
        assert!(matches!(welcome, Welcome::Accepted { .. }), "{welcome:?}");
        TestNode { peer, id }
    }

    /// The driver of `job` (pid 4242, as `driver` makes it) back after a restart.
    fn resumed_driver(&mut self, job: JobId) -> TestDriver {
        let role = PeerRole::Driver {
            binary: BinaryHash("ab".repeat(32)),
            name: "test".into(),
            pid: 4242,
            submission_id: None,
            resumes: Some(job),
        };
        match self.connect(role) {
            (peer, Welcome::Accepted { job: Some(job), .. }) => TestDriver { peer, job },
            (_, other) => panic!("driver refused: {other:?}"),
        }
    }

    /// What node `id` offering `resources` says when it connects back with its
    /// work after a restart.
    fn returning(id: NodeId, resources: ResourceSet) -> PeerRole {
        PeerRole::Node(registration(id, resources, "127.0.0.9:7000", true))
    }

    /// Node `id` back with its work after a restart; fails if refused.
    fn node_back(&mut self, id: NodeId, resources: ResourceSet) -> TestNode {
        let (peer, welcome) = self.connect(Self::returning(id, resources));
        assert!(matches!(welcome, Welcome::Accepted { .. }), "{welcome:?}");
        TestNode { peer, id }
    }

    /// A worker that `node` started for `job`.
    fn worker(&mut self, node: TestNode, job: JobId) -> PeerId {
        let role = PeerRole::Worker {
            node: node.id,
            job,
            proof: crate::protocol::worker_proof(&[7; 32], job),
            pid: 5151,
        };
        match self.connect(role) {
            (peer, Welcome::Accepted { .. }) => peer,
            (_, other) => panic!("worker refused: {other:?}"),
        }
    }

    fn cpu_node(&mut self, cpus: f64) -> TestNode {
        self.node(ResourceSet::new().with(CPU, cpus))
    }

    fn driver(&mut self) -> TestDriver {
        let role = PeerRole::Driver {
            binary: BinaryHash("ab".repeat(32)),
            name: "test".into(),
            pid: 4242,
            submission_id: None,
            resumes: None,
        };
        match self.connect(role) {
            (peer, Welcome::Accepted { job: Some(job), .. }) => TestDriver { peer, job },
            (_, other) => panic!("driver refused: {other:?}"),
        }
    }

    fn send(&mut self, peer: PeerId, msg: ToHead) {
        self.head.handle_batch([HeadEvent::Message(peer, msg)]);
    }

    /// Submits `spec` and subscribes the driver to its result.
    fn submit(&mut self, driver: TestDriver, spec: &TaskSpec) {
        self.send(
            driver.peer,
            ToHead::SubmitTasks(vec![Arc::new(spec.clone())]),
        );
        self.send(driver.peer, ToHead::Subscribe(vec![spec.return_id]));
    }

    /// Lets `total` pass in ticks (a tenth of the node timeout each, as the service
    /// ticks), every node in `alive` sending a heartbeat at each.
    fn pass(&mut self, total: Duration, alive: &[TestNode]) {
        let step = NODE_TIMEOUT / 10;
        let mut passed = Duration::ZERO;
        while passed < total {
            self.clock.advance(step);
            passed += step;
            for node in alive {
                self.send(node.peer, ToHead::Heartbeat(NodeLoad::default()));
            }
            self.head.handle_batch([HeadEvent::Tick]);
        }
    }

    /// Everything the head sent `peer` since the last look.
    fn inbox(&mut self, peer: PeerId) -> Vec<FromHead> {
        let rx = self.inboxes.get_mut(&peer).expect("a connected peer");
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    /// The assignments the head sent `node` since the last look (other messages dropped).
    fn assigned(&mut self, node: TestNode) -> Vec<TaskAssignment> {
        self.inbox(node.peer)
            .into_iter()
            .filter_map(|m| match m {
                FromHead::Execute(a) => Some(*a),
                _ => None,
            })
            .collect()
    }

    /// The one assignment `node` got; fails if there is not exactly one.
    fn only_assignment(&mut self, node: TestNode) -> TaskAssignment {
        let mut got = self.assigned(node);
        assert_eq!(got.len(), 1, "assignments: {got:?}");
        got.remove(0)
    }

    /// What the driver was told about `id`, if anything.
    fn location(&mut self, driver: TestDriver, id: ObjectId) -> Option<ObjectLocation> {
        self.location_of(driver.peer, id)
    }

    /// What `peer` was told about `id`, if anything.
    fn location_of(&mut self, peer: PeerId, id: ObjectId) -> Option<ObjectLocation> {
        self.inbox(peer).into_iter().find_map(|m| match m {
            FromHead::ObjectReady { id: got, location } if got == id => Some(location),
            _ => None,
        })
    }

    fn finish(&mut self, node: TestNode, a: &TaskAssignment, outcome: TaskOutcome) {
        self.send(
            node.peer,
            ToHead::TaskFinished {
                task_id: a.spec.task_id,
                attempt: a.attempt,
                outcome,
                run_micros: 1000,
                worker_pid: 777,
            },
        );
    }
}

/// A test node's registration (its worker key is all sevens).
fn registration(
    id: NodeId,
    resources: ResourceSet,
    address: &str,
    resumes: bool,
) -> NodeRegistration {
    NodeRegistration {
        node_id: id,
        address: address.parse().expect("an address"),
        resources,
        hostname: "test".into(),
        pid: 1,
        worker_key: [7; 32],
        metrics_address: None,
        incarnation: 1,
        resumes,
    }
}

fn task(job: JobId, function: &str, args: Vec<TaskArg>, max_retries: u32) -> TaskSpec {
    TaskSpec {
        task_id: TaskId::random(),
        job,
        function: function.into(),
        args,
        nested_refs: Vec::new(),
        return_id: ObjectId::random(),
        resources: ResourceSet::new().with(CPU, 1.0),
        max_retries,
        kind: TaskKind::Function,
        parent: TaskId::DRIVER,
    }
}

/// The error a location holds, if it is one.
fn error_of(location: Option<ObjectLocation>) -> Option<TaskError> {
    match location {
        Some(ObjectLocation::Error(e)) => Some(*e),
        _ => None,
    }
}

fn stored_inline(v: u8) -> TaskOutcome {
    TaskOutcome::Stored(StoredValue::Inline(vec![v]))
}

/// A large value left in the store of the node that made it.
fn stored_on_node() -> TaskOutcome {
    TaskOutcome::Stored(StoredValue::OnNode { size: 1 << 20 })
}

/// Whether `location` names `node` as the object's only holder.
fn held_only_by(location: Option<ObjectLocation>, node: TestNode) -> bool {
    matches!(location, Some(ObjectLocation::Nodes(n)) if n.len() == 1 && n[0].node == node.id)
}

#[test]
fn a_task_whose_worker_dies_is_retried_then_fails_with_worker_died() {
    let mut b = Bench::new();
    let node = b.cpu_node(1.0);
    let driver = b.driver();
    let spec = task(driver.job, "crashes", Vec::new(), 1);
    b.submit(driver, &spec);

    let first = b.only_assignment(node);
    assert_eq!((first.spec.task_id, first.attempt), (spec.task_id, 0));
    b.finish(node, &first, TaskOutcome::WorkerDied("SIGKILL".into()));
    assert!(
        b.location(driver, spec.return_id).is_none(),
        "one retry is left"
    );

    let second = b.only_assignment(node);
    assert_eq!((second.spec.task_id, second.attempt), (spec.task_id, 1));
    // A late report of the first attempt changes nothing.
    b.finish(node, &first, stored_inline(1));
    assert!(b.location(driver, spec.return_id).is_none());

    b.finish(node, &second, TaskOutcome::WorkerDied("SIGKILL".into()));
    match error_of(b.location(driver, spec.return_id)) {
        Some(TaskError::WorkerDied {
            attempts, reason, ..
        }) => assert_eq!((attempts, reason.as_str()), (2, "SIGKILL")),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert!(b.assigned(node).is_empty(), "no third attempt");
}

#[test]
fn a_dead_nodes_running_task_is_queued_again_and_runs_elsewhere() {
    let mut b = Bench::new();
    let a = b.cpu_node(1.0);
    let c = b.cpu_node(1.0);
    let driver = b.driver();
    let one = task(driver.job, "one", Vec::new(), 3);
    let two = task(driver.job, "two", Vec::new(), 3);
    b.submit(driver, &one);
    b.submit(driver, &two);
    let on_a = b.only_assignment(a);
    let on_c = b.only_assignment(c);

    // Node a falls silent; c keeps sending heartbeats.
    b.pass(NODE_TIMEOUT / 2, &[a, c]);
    b.pass(NODE_TIMEOUT + NODE_TIMEOUT / 2, &[c]);
    assert!(
        b.inbox(a.peer)
            .iter()
            .any(|m| matches!(m, FromHead::NodeDead(_))),
        "the silent node is told it was declared dead"
    );
    // c is busy: a's task waits in the queue until c's task ends.
    assert!(b.assigned(c).is_empty());
    b.finish(c, &on_c, stored_inline(2));
    let again = b.only_assignment(c);
    assert_eq!(again.spec.task_id, on_a.spec.task_id);
    assert_eq!(again.attempt, 1, "a node's death uses up one retry");
    // The dead node's late report is ignored; the new attempt's counts.
    b.finish(a, &on_a, stored_inline(9));
    b.finish(c, &again, stored_inline(1));
    assert_eq!(
        b.location(driver, on_a.spec.return_id)
            .map(|l| format!("{l:?}")),
        Some(format!("{:?}", ObjectLocation::Inline(vec![1])))
    );
}

#[test]
fn a_stalled_head_declares_no_node_dead() {
    let mut b = Bench::new();
    let node = b.cpu_node(1.0);
    b.pass(NODE_TIMEOUT / 2, &[node]);
    // The head itself stops for five node timeouts: no tick, no message read.
    b.clock.advance(NODE_TIMEOUT * 5);
    b.head.handle_batch([HeadEvent::Tick]);
    assert!(
        !b.inbox(node.peer)
            .iter()
            .any(|m| matches!(m, FromHead::NodeDead(_))),
        "the node was declared dead for the head's own stall"
    );
    // The node gets a full timeout from the end of the stall, not more.
    b.pass(NODE_TIMEOUT / 2, &[node]);
    b.pass(NODE_TIMEOUT + NODE_TIMEOUT / 2, &[]);
    assert!(b
        .inbox(node.peer)
        .iter()
        .any(|m| matches!(m, FromHead::NodeDead(_))));
}

#[test]
fn a_lost_object_is_made_again_from_lineage_and_a_lost_put_fails_with_object_lost() {
    let mut b = Bench::new();
    let a = b.cpu_node(1.0);
    let c = b.cpu_node(1.0);
    let driver = b.driver();
    // `make` runs on one of the nodes and leaves its large value there.
    let make = task(driver.job, "make", Vec::new(), 0);
    b.submit(driver, &make);
    let (holder, other, made) = match (b.assigned(a).pop(), b.assigned(c).pop()) {
        (Some(x), None) => (a, c, x),
        (None, Some(x)) => (c, a, x),
        got => panic!("expected one assignment, got {got:?}"),
    };
    b.finish(holder, &made, stored_on_node());
    assert!(held_only_by(b.location(driver, make.return_id), holder));
    // The driver also put a large value on the same node.
    let put = ObjectId::random();
    b.send(
        driver.peer,
        ToHead::PutStored {
            id: put,
            node: holder.id,
            size: 1 << 20,
        },
    );

    b.pass(NODE_TIMEOUT * 2, &[other]);
    // `make` runs again (lineage), on the node that is left, as a first attempt: a
    // re-make does not spend the task's retries.
    let remade = b.only_assignment(other);
    assert_eq!(remade.spec.task_id, make.task_id);
    assert_eq!(remade.attempt, 0);
    // The put has no task to make it again.
    b.send(driver.peer, ToHead::Subscribe(vec![put, make.return_id]));
    match error_of(b.location(driver, put)) {
        Some(TaskError::ObjectLost { object, .. }) => {
            assert_eq!(object, put)
        }
        other => panic!("expected ObjectLost, got {other:?}"),
    }
    b.finish(other, &remade, stored_on_node());
    assert!(held_only_by(b.location(driver, make.return_id), other));
}

fn actor_creation(job: JobId, max_restarts: i32) -> (ActorId, TaskSpec) {
    let actor = ActorId::random();
    let mut spec = task(job, "Counter::new", Vec::new(), 0);
    spec.kind = TaskKind::CreateActor(Box::new(ActorCreation {
        actor,
        class: "Counter".into(),
        name: None,
        detached: false,
        max_restarts,
        max_task_retries: 0,
    }));
    (actor, spec)
}

#[test]
fn an_actor_restarts_until_max_restarts_then_its_calls_fail_with_actor_died() {
    let mut b = Bench::new();
    let node = b.cpu_node(2.0);
    let driver = b.driver();
    let (actor, create) = actor_creation(driver.job, 1);
    b.submit(driver, &create);
    let created = b.only_assignment(node);
    b.finish(node, &created, stored_inline(0));

    // The actor's process dies: it is made again (one restart allowed).
    b.send(
        node.peer,
        ToHead::ActorDied {
            actor,
            reason: "SIGKILL".into(),
        },
    );
    let restarted = b.only_assignment(node);
    assert_eq!(restarted.spec.task_id, create.task_id);
    b.finish(node, &restarted, stored_inline(0));

    // A call, then a second death: no restarts are left.
    let mut call = task(driver.job, "Counter::add", Vec::new(), 0);
    call.kind = TaskKind::ActorCall(actor);
    b.submit(driver, &call);
    let sent = b.only_assignment(node);
    assert_eq!(sent.spec.task_id, call.task_id);
    b.send(
        node.peer,
        ToHead::ActorDied {
            actor,
            reason: "SIGKILL again".into(),
        },
    );
    // The node also reports the call that was running in the dead process.
    b.finish(node, &sent, TaskOutcome::WorkerDied("SIGKILL again".into()));
    assert!(b.assigned(node).is_empty(), "no second restart");
    match error_of(b.location(driver, call.return_id)) {
        Some(TaskError::ActorDied {
            actor: id, class, ..
        }) => assert_eq!((id, class.as_str()), (actor, "Counter")),
        other => panic!("expected ActorDied, got {other:?}"),
    }
    // A call made after the death fails at once.
    let mut late = task(driver.job, "Counter::add", Vec::new(), 0);
    late.kind = TaskKind::ActorCall(actor);
    b.submit(driver, &late);
    assert!(matches!(
        error_of(b.location(driver, late.return_id)),
        Some(TaskError::ActorDied { .. })
    ));
}

#[test]
fn an_infeasible_task_is_reported_and_runs_when_a_node_that_fits_joins() {
    let mut b = Bench::new();
    let cpu_only = b.cpu_node(4.0);
    let driver = b.driver();
    let mut spec = task(driver.job, "train", Vec::new(), 0);
    spec.resources = ResourceSet::new().with(CPU, 1.0).with(GPU, 1.0);
    b.submit(driver, &spec);
    assert!(b.assigned(cpu_only).is_empty());
    assert!(
        b.inbox(driver.peer).iter().any(
            |m| matches!(m, FromHead::Warning(w) if w.contains("which no node in the cluster has"))
        ),
        "the driver is warned"
    );

    let gpu = b.node(ResourceSet::new().with(CPU, 1.0).with(GPU, 1.0));
    let a = b.only_assignment(gpu);
    assert_eq!(a.spec.task_id, spec.task_id);
    assert!(b.assigned(cpu_only).is_empty());
}

/// The head's `ray_tasks` samples: (State, Name, IsRetry) → count.
/// Series at 0 (states a function's tasks were in before) are left out.
fn task_counts(b: &mut Bench) -> Vec<(String, String, String, f64)> {
    let mut set = crate::metrics::MetricSet::new(&[]);
    b.head.metrics(&mut set);
    let text = set.encode();
    let mut counts: Vec<(String, String, String, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ray_tasks{"))
        .map(|l| {
            let (labels, value) = l.split_once("} ").expect("a sample");
            let label = |k: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
                    .expect("label")
            };
            (
                label("State"),
                label("Name"),
                label("IsRetry"),
                value.parse().expect("value"),
            )
        })
        .filter(|c: &(String, String, String, f64)| c.3 != 0.0)
        .collect();
    counts.sort_by(|a, b| a.partial_cmp(b).expect("ordered"));
    counts
}

#[test]
fn ray_tasks_counts_each_task_once_in_its_state_and_keeps_the_ended() {
    let mut b = Bench::new();
    let node = b.cpu_node(1.0);
    let driver = b.driver();
    let ok = task(driver.job, "app::ok", Vec::new(), 1);
    let flaky = task(driver.job, "app::flaky", Vec::new(), 1);
    b.submit(driver, &ok);
    b.submit(driver, &flaky);
    let s = |v: &str| v.to_string();
    // One is sent to the 1-CPU node (whose own samples count it from then on, as
    // Ray's executors do), the other waits for room.
    let running = b.only_assignment(node);
    assert_eq!(
        task_counts(&mut b),
        vec![(s("PENDING_NODE_ASSIGNMENT"), s("app::flaky"), s("0"), 1.0)]
    );
    b.finish(node, &running, stored_inline(1));
    let second = b.only_assignment(node);
    b.finish(node, &second, TaskOutcome::WorkerDied("SIGKILL".into()));
    let retry = b.only_assignment(node);
    assert_eq!(retry.attempt, 1);
    assert_eq!(
        task_counts(&mut b),
        vec![(s("FINISHED"), s("app::ok"), s("0"), 1.0)]
    );
    b.finish(node, &retry, TaskOutcome::WorkerDied("SIGKILL".into()));
    assert_eq!(
        task_counts(&mut b),
        vec![
            (s("FAILED"), s("app::flaky"), s("1"), 1.0),
            (s("FINISHED"), s("app::ok"), s("0"), 1.0),
        ]
    );
    // The states they passed through stay exported, at 0; running ones are the
    // nodes' to report.
    let mut set = crate::metrics::MetricSet::new(&[]);
    b.head.metrics(&mut set);
    let pending = [
        ("State", "PENDING_NODE_ASSIGNMENT"),
        ("Name", "app::flaky"),
        ("IsRetry", "0"),
        ("Source", "owner"),
    ];
    assert_eq!(set.value("ray_tasks", &pending), Some(0.0));
    let running = [
        ("State", "RUNNING"),
        ("Name", "app::ok"),
        ("IsRetry", "0"),
        ("Source", "owner"),
    ];
    assert_eq!(set.value("ray_tasks", &running), None);
}

fn task_rows(b: &Bench) -> crate::head::view::TaskRows {
    match b.head.view(crate::head::view::StateQuery::Tasks) {
        crate::head::view::StateRows::Tasks(t) => t,
        other => panic!("asked for tasks, got {other:?}"),
    }
}

#[test]
fn the_state_api_lists_live_and_ended_tasks_and_counts_what_the_log_dropped() {
    use crate::head::view::TaskStatus;
    let mut b = Bench::new();
    let node = b.cpu_node(1.0);
    let driver = b.driver();
    // The bench's log keeps 4 ended tasks: 6 end, the 2 oldest are dropped.
    let specs: Vec<TaskSpec> = (0..6)
        .map(|i| task(driver.job, &format!("f{i}"), Vec::new(), 0))
        .collect();
    for (i, spec) in specs.iter().enumerate() {
        b.submit(driver, spec);
        let a = b.only_assignment(node);
        b.clock.advance(Duration::from_millis(5));
        let outcome = if i == 5 {
            TaskOutcome::Failed(TaskError::Failed {
                function: "f5".into(),
                message: "bad input".into(),
                node: "n".into(),
            })
        } else {
            stored_inline(1)
        };
        b.finish(node, &a, outcome);
    }
    // One more, running now.
    let running = task(driver.job, "slow", Vec::new(), 0);
    b.submit(driver, &running);
    let _ = b.only_assignment(node);

    let rows = task_rows(&b);
    assert_eq!((rows.dropped, rows.capacity), (2, 4));
    let names: Vec<&str> = rows.rows.iter().map(|r| &*r.name).collect();
    // Live first, then the ended ones newest first.
    assert_eq!(names, ["slow", "f5", "f4", "f3", "f2"]);
    assert_eq!(rows.rows[0].state, TaskStatus::Running);
    assert_eq!(rows.rows[0].node, Some(node.id));
    let failed = &rows.rows[1];
    assert_eq!(failed.state, TaskStatus::Failed);
    let failure = failed.failure.as_ref().expect("the failure");
    assert_eq!(failure.error_type, "TASK_EXECUTION_EXCEPTION");
    assert!(failure.message.contains("bad input"), "{}", failure.message);
    assert_eq!(failed.worker_pid, Some(777));
    assert!(rows.rows[2..]
        .iter()
        .all(|r| r.state == TaskStatus::Finished));
    // Times: submitted, started and ended in order, on the wall clock.
    let end = failed.end_time_ms.expect("end");
    let start = failed.start_time_ms.expect("start");
    assert!(
        failed.creation_time_ms <= start && start + 5 <= end,
        "{failed:?}"
    );
}

#[test]
fn a_job_whose_driver_said_goodbye_ended_cleanly_and_one_whose_driver_was_lost_did_not() {
    let mut b = Bench::new();
    let clean = b.driver();
    let lost = b.driver();
    b.send(clean.peer, ToHead::Goodbye);
    b.head
        .handle_batch([HeadEvent::Disconnected(lost.peer, "timed out".into())]);
    let jobs = match b.head.view(crate::head::view::StateQuery::Jobs) {
        crate::head::view::StateRows::Jobs(j) => j,
        other => panic!("asked for jobs, got {other:?}"),
    };
    let row = |job: JobId| {
        jobs.iter()
            .find(|j| j.job_id == job)
            .unwrap_or_else(|| panic!("job {job} not listed: {jobs:?}"))
    };
    let (c, l) = (row(clean.job), row(lost.job));
    assert!(
        !c.running && c.end_time_ms.is_some() && c.lost.is_none(),
        "{c:?}"
    );
    assert!(!l.running && l.end_time_ms.is_some(), "{l:?}");
    assert_eq!(l.lost.as_deref(), Some("timed out"));
    assert_eq!(c.driver_pid, 4242);
}

#[test]
fn a_running_entrypoint_holds_its_resources_on_the_head_node_until_it_ends() {
    let mut b = Bench::new();
    let head_node = b.head.settings.head_node;
    let node = b.node_with_id(head_node, ResourceSet::new().with(CPU, 2.0));
    let driver = b.driver();
    b.head.handle_batch([HeadEvent::HoldForEntrypoint(
        "raysubmit_1".into(),
        ResourceSet::new().with(CPU, 1.0),
    )]);
    let (first, second) = (
        task(driver.job, "f", Vec::new(), 0),
        task(driver.job, "f", Vec::new(), 0),
    );
    b.submit(driver, &first);
    b.submit(driver, &second);
    // Two CPUs, one held by the entrypoint: one task runs, the other waits.
    let running = b.only_assignment(node);
    // A release of a job that holds nothing changes nothing.
    b.head
        .handle_batch([HeadEvent::ReleaseEntrypoint("raysubmit_2".into())]);
    assert!(b.assigned(node).is_empty());
    b.head
        .handle_batch([HeadEvent::ReleaseEntrypoint("raysubmit_1".into())]);
    let next = b.only_assignment(node);
    assert_ne!(running.spec.task_id, next.spec.task_id);
    // Released once only: a second release does not free a CPU the tasks hold.
    b.head
        .handle_batch([HeadEvent::ReleaseEntrypoint("raysubmit_1".into())]);
    let third = task(driver.job, "f", Vec::new(), 0);
    b.submit(driver, &third);
    assert!(b.assigned(node).is_empty());
}

/// A new, empty storage directory for a head, and the storage on it.
fn fresh_storage(tag: &str) -> (std::path::PathBuf, crate::storage::Storage) {
    let dir =
        std::env::temp_dir().join(format!("rayish-head-{tag}-{:016x}", rand::random::<u64>()));
    let storage = crate::storage::Storage::open(&dir).expect("the storage");
    (dir, storage)
}

fn job_rows(b: &Bench) -> Vec<crate::head::view::JobRow> {
    match b.head.view(crate::head::view::StateQuery::Jobs) {
        crate::head::view::StateRows::Jobs(j) => j,
        other => panic!("asked for jobs, got {other:?}"),
    }
}

#[test]
fn a_restarted_head_lists_the_driver_jobs_its_storage_names_as_ended() {
    let (dir, storage) = fresh_storage("jobs");
    let mut b = Bench::on_storage(Some(storage.clone()));
    let clean = b.driver();
    let lost = b.driver();
    let connected = b.driver();
    b.send(clean.peer, ToHead::Goodbye);
    b.head
        .handle_batch([HeadEvent::Disconnected(lost.peer, "timed out".into())]);
    let before = job_rows(&b);
    storage.flush_blocking().expect("written");
    drop(b);

    let b = Bench::on_storage(Some(storage.clone()));
    let after = job_rows(&b);
    assert_eq!(after.len(), 3, "{after:?}");
    let row = |rows: &[crate::head::view::JobRow], job: JobId| {
        rows.iter()
            .find(|j| j.job_id == job)
            .cloned()
            .unwrap_or_else(|| panic!("job {job} not listed: {rows:?}"))
    };
    // The ended ones as they were ...
    for job in [clean.job, lost.job] {
        let (was, is) = (row(&before, job), row(&after, job));
        assert_eq!(
            (is.lost.clone(), is.driver_pid, is.running),
            (was.lost.clone(), was.driver_pid, false)
        );
        // The two heads' clocks are anchored to the wall time a little apart.
        assert!(
            is.start_time_ms.abs_diff(was.start_time_ms) <= 2,
            "{is:?} {was:?}"
        );
        assert!(is.end_time_ms.is_some());
    }
    assert_eq!(row(&after, lost.job).lost.as_deref(), Some("timed out"));
    // ... and the one whose driver was connected ended with the head.
    let c = row(&after, connected.job);
    assert!(!c.running && c.end_time_ms.is_some(), "{c:?}");
    assert!(c
        .lost
        .as_deref()
        .is_some_and(|l| l.contains("the head restarted")));
    drop(b);
    drop(storage);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_restarted_head_lists_the_nodes_its_storage_names_as_dead() {
    let (dir, storage) = fresh_storage("nodes");
    let mut b = Bench::on_storage(Some(storage.clone()));
    let gone = b.cpu_node(1.0);
    let stays = b.cpu_node(2.0);
    b.head
        .handle_batch([HeadEvent::Disconnected(gone.peer, "cut".into())]);
    storage.flush_blocking().expect("written");
    drop(b);

    // The next head on the storage: both listed, neither alive; the one that was
    // alive when the first head went is dead of the restart, and says so on disk.
    let reason = |b: &Bench, node: TestNode| {
        let life = b.head.nodes.life(&node.id).expect("listed");
        life.died.expect("dead").1
    };
    let mut b = Bench::on_storage(Some(storage.clone()));
    let statuses = b.head.nodes.statuses();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(statuses.iter().all(|n| !n.alive));
    assert!(reason(&b, gone).contains("connection lost: cut"));
    assert!(reason(&b, stays).contains("the head restarted"));
    assert!(b.head.nodes.views().is_empty(), "nothing to place tasks on");
    // A node joining it is alive beside them; a dead node is never scheduled on.
    let fresh = b.cpu_node(1.0);
    assert!(b.head.nodes.is_live(fresh.id));
    assert!(!b.head.nodes.is_live(stays.id));
    storage.flush_blocking().expect("written");
    drop(b);
    let b = Bench::on_storage(Some(storage.clone()));
    assert_eq!(b.head.nodes.statuses().len(), 3);
    assert!(reason(&b, stays).contains("the head restarted"));
    assert!(reason(&b, fresh).contains("the head restarted"));
    drop(b);
    drop(storage);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_driver_back_after_a_restart_goes_on_with_its_job_and_nothing_it_received_runs_again() {
    let (dir, storage) = fresh_storage("resume");
    let mut b = Bench::on_storage(Some(storage.clone()));
    let before = b.driver();
    storage.flush_blocking().expect("written");
    drop(b);

    // The next head lists the job as ended; its driver comes back to it.
    let mut b = Bench::on_storage(Some(storage.clone()));
    let node = b.cpu_node(1.0);
    let role = PeerRole::Driver {
        binary: BinaryHash("ab".repeat(32)),
        name: "test".into(),
        pid: 4242,
        submission_id: None,
        resumes: Some(before.job),
    };
    let driver = match b.connect(role.clone()) {
        (peer, Welcome::Accepted { job: Some(job), .. }) => TestDriver { peer, job },
        (_, other) => panic!("driver refused: {other:?}"),
    };
    assert_eq!(driver.job, before.job, "the same job goes on");
    let row = job_rows(&b)
        .into_iter()
        .find(|j| j.job_id == before.job)
        .expect("listed");
    assert!(row.running && row.lost.is_none(), "{row:?}");

    // Its put (value known), a task taking it (result not received: runs again as
    // attempt 1), and a task out of retries (fails without running).
    let put = ObjectId::random();
    let again = task(driver.job, "again", vec![TaskArg::Ref(put)], 3);
    let spent = task(driver.job, "spent", Vec::new(), 0);
    let state = crate::protocol::ResumeState {
        values: vec![crate::protocol::ResumedValue {
            id: put,
            value: vec![9],
        }],
        errors: Vec::new(),
        tasks: vec![(Arc::new(again.clone()), 1), (Arc::new(spent.clone()), 1)],
        holds: Vec::new(),
        unheld: vec![put],
    };
    b.send(driver.peer, ToHead::Resume(Box::new(state)));
    b.send(
        driver.peer,
        ToHead::Subscribe(vec![again.return_id, spent.return_id]),
    );
    let a = b.only_assignment(node);
    assert_eq!((a.spec.task_id, a.attempt), (again.task_id, 1));
    match error_of(b.location(driver, spent.return_id)) {
        Some(TaskError::WorkerDied { attempts, .. }) => {
            assert_eq!(attempts, 1)
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    b.finish(node, &a, stored_inline(4));
    assert!(matches!(
        b.location(driver, again.return_id),
        Some(ObjectLocation::Inline(v)) if v == [4]
    ));
    // The put was held only for the task: freed with it.
    assert!(!b.head.objects.contains(&put), "the put outlived its task");

    // Another process cannot take the job over; the same one, on a new connection
    // (it lost its link before the head noticed), can: the old connection is over.
    let mut other = role.clone();
    if let PeerRole::Driver { pid, .. } = &mut other {
        *pid = 4343;
    }
    assert!(matches!(b.connect(other).1, Welcome::Rejected(_)));
    assert_eq!(
        b.head.peers.job(driver.peer),
        Some(driver.job),
        "the claim harmed it"
    );
    let (_, welcome) = b.connect(role);
    assert!(matches!(welcome, Welcome::Accepted { job: Some(j), .. } if j == driver.job));
    assert!(
        b.head.peers.job(driver.peer).is_none(),
        "the old link is over"
    );
    drop(b);
    drop(storage);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A head that had a driver and two nodes (2 and 1 CPUs) on storage `tag`,
/// restarted, with the driver back: the next head, and who was there before.
struct Restarted {
    dir: std::path::PathBuf,
    storage: crate::storage::Storage,
    b: Bench,
    driver: TestDriver,
    kept: TestNode,
    gone: TestNode,
}

impl Restarted {
    fn new(tag: &str) -> Self {
        let (dir, storage) = fresh_storage(tag);
        let mut b = Bench::on_storage(Some(storage.clone()));
        let before = b.driver();
        let kept = b.cpu_node(2.0);
        let gone = b.cpu_node(1.0);
        storage.flush_blocking().expect("written");
        drop(b);
        let mut b = Bench::on_storage(Some(storage.clone()));
        let driver = b.resumed_driver(before.job);
        Self {
            dir,
            storage,
            b,
            driver,
            kept,
            gone,
        }
    }
}

#[test]
fn a_node_back_from_a_restart_keeps_its_work_and_nothing_it_ran_runs_again() {
    // The next head: the driver is back first, with four tasks it has no result of.
    let Restarted {
        dir,
        storage,
        mut b,
        driver,
        kept,
        gone,
    } = Restarted::new("reclaim");
    let running = task(driver.job, "running", Vec::new(), 3);
    let large = task(driver.job, "large", Vec::new(), 3);
    let small = task(driver.job, "small", Vec::new(), 3);
    let lost = task(driver.job, "lost", Vec::new(), 3);
    let all = [&running, &large, &small, &lost];
    let state = crate::protocol::ResumeState {
        tasks: all.iter().map(|t| (Arc::new((*t).clone()), 1)).collect(),
        ..Default::default()
    };
    b.send(driver.peer, ToHead::Resume(Box::new(state)));
    b.send(
        driver.peer,
        ToHead::Subscribe(all.iter().map(|t| t.return_id).collect()),
    );
    assert!(
        b.location(driver, running.return_id).is_none(),
        "nothing is decided while the nodes may come back"
    );

    // A node this head never saw cannot come back; the kept one can, as itself.
    let two_cpus = || ResourceSet::new().with(CPU, 2.0);
    let (_, welcome) = b.connect(Bench::returning(NodeId::random(), two_cpus()));
    assert!(matches!(welcome, Welcome::Rejected(_)), "{welcome:?}");
    let back = b.node_back(kept.id, two_cpus());
    // Its inventory: `running` still runs, `small` is not reported (it ended just
    // before the restart: its end is sent again below), `large`'s result is stored.
    let inventory = crate::protocol::NodeInventory {
        tasks: vec![held(&running, false)],
        objects: vec![(large.return_id, 1 << 20)],
        actors: Vec::new(),
    };
    b.send(back.peer, ToHead::NodeResumed(Box::new(inventory)));
    b.send(
        back.peer,
        ToHead::TaskFinished {
            task_id: small.task_id,
            attempt: 0,
            outcome: stored_inline(5),
            run_micros: 1000,
            worker_pid: 777,
        },
    );
    b.send(back.peer, ToHead::NodeCaughtUp);
    assert!(
        b.assigned(back).is_empty(),
        "the other node may still come back"
    );

    // The other node does not come back within the node timeout: given up.
    b.pass(NODE_TIMEOUT + NODE_TIMEOUT / 5, &[back]);
    let a = b.only_assignment(back);
    assert_eq!(
        (a.spec.task_id, a.attempt),
        (lost.task_id, 1),
        "only the lost task runs again, as a retry"
    );
    let mut told: HashMap<ObjectId, ObjectLocation> = HashMap::default();
    for m in b.inbox(driver.peer) {
        if let FromHead::ObjectReady { id, location } = m {
            told.insert(id, location);
        }
    }
    assert!(held_only_by(told.remove(&large.return_id), back));
    assert!(matches!(told.remove(&small.return_id), Some(ObjectLocation::Inline(v)) if v == [5]));
    assert!(told.is_empty(), "{told:?}");
    // The running one is the head's again: its end completes it, and the node holds
    // what both tasks hold meanwhile.
    let status = b.head.status();
    let node = status
        .nodes
        .iter()
        .find(|n| n.node_id == back.id)
        .expect("listed");
    assert!(node.alive);
    assert_eq!(node.running_tasks, 2);
    b.finish(
        back,
        &TaskAssignment {
            spec: Arc::new(running.clone()),
            attempt: 0,
            sources: Vec::new(),
            binary: BinaryHash("ab".repeat(32)),
        },
        stored_inline(8),
    );
    assert!(matches!(
        b.location(driver, running.return_id),
        Some(ObjectLocation::Inline(v)) if v == [8]
    ));
    // Too late for the node given up: it must join as a new node.
    let (_, welcome) = b.connect(Bench::returning(gone.id, two_cpus()));
    assert!(matches!(welcome, Welcome::Rejected(_)), "{welcome:?}");
    drop(b);
    drop(storage);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_detached_actor_is_taken_back_from_its_returning_node_or_created_again() {
    let (dir, storage) = fresh_storage("detached");
    let mut b = Bench::on_storage(Some(storage.clone()));
    // Each node has a resource of its own, so each actor goes where the test says.
    let kept = b.node(ResourceSet::new().with(CPU, 2.0).with("a", 1.0));
    let lost = b.node(ResourceSet::new().with(CPU, 2.0).with("b", 1.0));
    let driver = b.driver();
    let detached = |b: &mut Bench, node: TestNode, resource: &str| {
        let (actor, mut create) = actor_creation(driver.job, 1);
        if let TaskKind::CreateActor(c) = &mut create.kind {
            c.detached = true;
        }
        create.resources = ResourceSet::new().with(resource, 1.0);
        b.submit(driver, &create);
        let a = b.only_assignment(node);
        b.finish(node, &a, stored_inline(0));
        actor
    };
    let stays = detached(&mut b, kept, "a");
    let moves = detached(&mut b, lost, "b");
    // Its driver exits: the detached actors keep the job alive.
    b.send(driver.peer, ToHead::Goodbye);
    storage.flush_blocking().expect("written");
    drop(b);

    let mut b = Bench::on_storage(Some(storage.clone()));
    assert!(b.head.jobs.is_alive(driver.job), "the job lives on");
    let back = b.node_back(
        kept.id,
        ResourceSet::new()
            .with(CPU, 2.0)
            .with("a", 1.0)
            .with("b", 1.0),
    );
    let stranger = ActorId::random();
    let inventory = crate::protocol::NodeInventory {
        actors: vec![(stays, 4321), (stranger, 99)],
        ..Default::default()
    };
    b.send(back.peer, ToHead::NodeResumed(Box::new(inventory)));
    b.send(back.peer, ToHead::NodeCaughtUp);
    let state = |b: &Bench, a: ActorId| b.head.actors.get(&a).map(|a| a.state().clone());
    assert_eq!(state(&b, stays), Some(ActorState::Alive(kept.id)));
    assert!(
        b.inbox(back.peer)
            .iter()
            .any(|m| matches!(m, FromHead::KillActor(a) if *a == stranger)),
        "an actor the head does not know is ended"
    );
    // The other node does not come back: its actor is created again (its one
    // restart), on the node that did (which now has `b` too).
    assert_eq!(state(&b, moves), Some(ActorState::Creating));
    b.pass(NODE_TIMEOUT + NODE_TIMEOUT / 5, &[back]);
    let again = b.only_assignment(back);
    assert_eq!(again.spec.actor(), Some(moves));
    assert_eq!(b.head.actors.get(&moves).map(|a| a.restarts()), Some(1));
    drop(b);
    drop(storage);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_parked_task_whose_driver_left_meanwhile_does_not_run() {
    let Restarted {
        dir,
        storage,
        mut b,
        driver,
        kept,
        ..
    } = Restarted::new("parked-left");
    let left = task(driver.job, "left", Vec::new(), 3);
    let state = crate::protocol::ResumeState {
        tasks: vec![(Arc::new(left.clone()), 1)],
        ..Default::default()
    };
    b.send(driver.peer, ToHead::Resume(Box::new(state)));
    // The driver goes while its task waits for the nodes.
    b.send(driver.peer, ToHead::Goodbye);
    let back = b.node_back(kept.id, ResourceSet::new().with(CPU, 2.0));
    b.send(back.peer, ToHead::NodeResumed(Box::default()));
    b.send(back.peer, ToHead::NodeCaughtUp);
    b.pass(NODE_TIMEOUT + NODE_TIMEOUT / 5, &[back]);
    assert!(b.assigned(back).is_empty(), "a task nobody waits for ran");
    assert!(!b.head.objects.contains(&left.return_id));
    drop(b);
    drop(storage);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The copies the head asked `node` to make since the last look: each object, with
/// the holders named to copy it from.
fn copies_asked(b: &mut Bench, node: TestNode) -> Vec<(ObjectId, Vec<NodeId>)> {
    b.inbox(node.peer)
        .into_iter()
        .filter_map(|m| match m {
            FromHead::CopyObject { id, holders } => {
                Some((id, holders.iter().map(|h| h.node).collect()))
            }
            _ => None,
        })
        .collect()
}

/// A cut between two nodes the head hears from: `make` left its large value on
/// `maker` alone, and `read`, which takes it, ran on `reader` (each has a resource
/// of its own), which reported that it could not fetch the value; `relay` is a
/// third node.
struct Cut {
    b: Bench,
    maker: TestNode,
    reader: TestNode,
    relay: TestNode,
    driver: TestDriver,
    make: TaskSpec,
    read: TaskSpec,
}

impl Cut {
    fn new() -> Self {
        let mut b = Bench::new();
        let only = |name: &str| ResourceSet::new().with(CPU, 1.0).with(name, 1.0);
        let maker = b.node(only("maker"));
        let reader = b.node(only("reader"));
        let relay = b.cpu_node(1.0);
        let driver = b.driver();
        let mut make = task(driver.job, "make", Vec::new(), 0);
        make.resources = ResourceSet::new().with("maker", 1.0);
        b.submit(driver, &make);
        let made = b.only_assignment(maker);
        b.finish(maker, &made, stored_on_node());
        let mut read = task(driver.job, "read", vec![TaskArg::Ref(make.return_id)], 0);
        read.resources = ResourceSet::new().with("reader", 1.0);
        b.submit(driver, &read);
        let first = b.only_assignment(reader);
        let mut cut = Self {
            b,
            maker,
            reader,
            relay,
            driver,
            make,
            read,
        };
        cut.b.finish(reader, &first, cut.unreachable());
        cut
    }

    /// What the reader reports: it could not fetch `make`'s value.
    fn unreachable(&self) -> TaskOutcome {
        TaskOutcome::ArgumentUnavailable {
            object: self.make.return_id,
            reason: "timed out".into(),
        }
    }

    /// Lets a node timeout pass with every node heard from.
    fn pass(&mut self) {
        let alive = [self.maker, self.reader, self.relay];
        self.b.pass(NODE_TIMEOUT, &alive);
    }
}

#[test]
fn a_node_cut_off_from_an_object_s_holder_reads_a_copy_another_node_made() {
    let mut c = Cut::new();
    let (maker, reader, relay) = (c.maker, c.reader, c.relay);
    assert_eq!(
        copies_asked(&mut c.b, relay),
        vec![(c.make.return_id, vec![maker.id])]
    );
    // A second failure while the copy is under way asks for no other copy.
    c.pass();
    let second = c.b.only_assignment(reader);
    c.b.finish(reader, &second, c.unreachable());
    assert!(copies_asked(&mut c.b, relay).is_empty());
    assert!(copies_asked(&mut c.b, maker).is_empty());
    // The copy is made: the next try lists it first, the unreachable holder last.
    c.b.send(relay.peer, ToHead::ObjectCopied(c.make.return_id));
    c.pass();
    let third = c.b.only_assignment(reader);
    match &third.sources[0] {
        ArgSource::At(at) => assert_eq!(
            at.iter().map(|h| h.node).collect::<Vec<_>>(),
            vec![relay.id, maker.id]
        ),
        other => panic!("expected holders, got {other:?}"),
    }
    c.b.finish(reader, &third, stored_inline(9));
    assert!(matches!(
        c.b.location(c.driver, c.read.return_id),
        Some(ObjectLocation::Inline(v)) if v == vec![9]
    ));
    // Once the object is freed, nothing of the cut is kept.
    c.b.send(c.driver.peer, ToHead::RemoveRefs(vec![c.make.return_id]));
    assert!(c.b.head.relays.is_empty());
}

#[test]
fn a_failed_copy_around_a_cut_is_not_asked_of_the_same_node_again() {
    let mut c = Cut::new();
    let (reader, relay) = (c.reader, c.relay);
    assert_eq!(
        copies_asked(&mut c.b, relay),
        vec![(c.make.return_id, vec![c.maker.id])]
    );
    c.b.send(
        relay.peer,
        ToHead::ObjectCopyFailed {
            id: c.make.return_id,
            reason: "cut off too".into(),
        },
    );
    // No node is left to ask: the reader keeps trying until the patience runs out,
    // and then fails with ObjectLost, as before there were copies.
    let mut tries = 1;
    loop {
        c.pass();
        assert!(
            copies_asked(&mut c.b, relay).is_empty(),
            "asked the failed node again"
        );
        let Some(again) = c.b.assigned(reader).pop() else {
            break;
        };
        tries += 1;
        c.b.finish(reader, &again, c.unreachable());
        assert!(tries < 100, "never gave up");
    }
    match error_of(c.b.location(c.driver, c.read.return_id)) {
        Some(TaskError::ObjectLost { object, .. }) => assert_eq!(object, c.make.return_id),
        other => panic!("expected ObjectLost, got {other:?}"),
    }
}

#[test]
fn a_driver_s_actors_outlive_a_head_restart_while_held_and_end_with_a_driver_that_is_gone() {
    let (dir, storage) = fresh_storage("drivers-actors");
    let mut b = Bench::on_storage(Some(storage.clone()));
    let node = b.cpu_node(4.0);
    let comes_back = b.driver();
    let stays_away = b.driver();
    let create = |b: &mut Bench, driver: TestDriver| {
        let (actor, spec) = actor_creation(driver.job, 1);
        b.submit(driver, &spec);
        let a = b.only_assignment(node);
        b.finish(node, &a, stored_inline(0));
        (actor, spec.return_id)
    };
    let (held, held_handle) = create(&mut b, comes_back);
    let (dropped, _) = create(&mut b, comes_back);
    let (orphan, _) = create(&mut b, stays_away);
    // The driver that stays away has a detached actor too, which dies meanwhile.
    let (lone, mut spec) = actor_creation(stays_away.job, 0);
    if let TaskKind::CreateActor(c) = &mut spec.kind {
        c.detached = true;
    }
    b.submit(stays_away, &spec);
    let a = b.only_assignment(node);
    b.finish(node, &a, stored_inline(0));
    storage.flush_blocking().expect("written");
    drop(b);

    let mut b = Bench::on_storage(Some(storage.clone()));
    let back = b.node_back(node.id, ResourceSet::new().with(CPU, 4.0));
    let inventory = crate::protocol::NodeInventory {
        actors: vec![(held, 11), (dropped, 12), (orphan, 13), (lone, 14)],
        ..Default::default()
    };
    b.send(back.peer, ToHead::NodeResumed(Box::new(inventory)));
    b.send(back.peer, ToHead::NodeCaughtUp);
    let state = |b: &Bench, a: ActorId| b.head.actors.get(&a).map(|a| a.state().clone());
    for a in [held, dropped, orphan] {
        assert_eq!(state(&b, a), Some(ActorState::Alive(node.id)), "{a:?}");
    }
    // One driver comes back holding a handle to one of its two actors.
    let driver = b.resumed_driver(comes_back.job);
    let resume = crate::protocol::ResumeState {
        holds: vec![held_handle],
        ..Default::default()
    };
    b.send(driver.peer, ToHead::Resume(Box::new(resume)));
    // The last detached actor of the job whose driver is away dies: the job waits
    // for its driver all the same.
    b.send(
        back.peer,
        ToHead::ActorDied {
            actor: lone,
            reason: "exited".into(),
        },
    );
    assert!(b.head.jobs.is_alive(stays_away.job));
    assert_eq!(state(&b, orphan), Some(ActorState::Alive(node.id)));
    assert!(
        !b.inbox(back.peer)
            .iter()
            .any(|m| matches!(m, FromHead::KillActor(a) if *a != lone)),
        "nothing else ended before the window"
    );
    // Past the window: the held actor lives on; the one no handle names ends, and
    // so does the job whose driver did not come back, with its actor.
    b.pass(RECONNECT_TIMEOUT + NODE_TIMEOUT, &[back]);
    assert_eq!(state(&b, held), Some(ActorState::Alive(node.id)));
    let killed: Vec<ActorId> = b
        .inbox(back.peer)
        .into_iter()
        .filter_map(|m| match m {
            FromHead::KillActor(a) => Some(a),
            _ => None,
        })
        .collect();
    assert!(
        killed.contains(&dropped) && killed.contains(&orphan),
        "{killed:?}"
    );
    assert!(!killed.contains(&held), "{killed:?}");
    assert!(b.head.jobs.is_alive(comes_back.job));
    assert!(!b.head.jobs.is_alive(stays_away.job));
    drop(b);
    drop(storage);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `t`, as a returning node's inventory lists it (first attempt).
fn held(t: &TaskSpec, blocked: bool) -> crate::protocol::AssignedTask {
    crate::protocol::AssignedTask {
        task_id: t.task_id,
        job: t.job,
        attempt: 0,
        resources: t.resources.clone(),
        blocked,
    }
}

/// A call to `actor`, taking `args`.
fn actor_call(job: JobId, actor: ActorId, args: Vec<TaskArg>) -> TaskSpec {
    let mut call = task(job, "Counter::add", args, 0);
    call.kind = TaskKind::ActorCall(actor);
    call.resources = ResourceSet::new();
    call
}

/// What the driver was told about each object since the last look.
fn told(b: &mut Bench, driver: TestDriver) -> HashMap<ObjectId, ObjectLocation> {
    let mut told = HashMap::default();
    for m in b.inbox(driver.peer) {
        if let FromHead::ObjectReady { id, location } = m {
            told.insert(id, location);
        }
    }
    told
}

#[test]
fn actor_calls_in_flight_at_a_head_restart_are_taken_back_and_none_runs_twice() {
    let (dir, storage) = fresh_storage("calls");
    let mut b = Bench::on_storage(Some(storage.clone()));
    let node = b.cpu_node(4.0);
    let before = b.driver();
    let (actor, create) = actor_creation(before.job, 0);
    b.submit(before, &create);
    let a = b.only_assignment(node);
    b.finish(node, &a, stored_inline(0));
    // Four calls reach the node: the first ends and its result reaches the driver;
    // the second runs when the head dies; the third ends while the head is away; the
    // fourth was lost on its way to the node.
    let calls: Vec<TaskSpec> = (0..4)
        .map(|_| actor_call(before.job, actor, Vec::new()))
        .collect();
    for c in &calls {
        b.submit(before, c);
    }
    assert_eq!(b.assigned(node).len(), 4);
    storage.flush_blocking().expect("written");
    drop(b);

    let mut b = Bench::on_storage(Some(storage.clone()));
    // The driver is back first, with the calls it has no result of, and one it
    // made while the head was away; its node is not back yet.
    let driver = b.resumed_driver(before.job);
    let made_meanwhile = actor_call(before.job, actor, Vec::new());
    let resumed = [&calls[1], &calls[2], &calls[3], &made_meanwhile];
    let state = crate::protocol::ResumeState {
        tasks: resumed
            .iter()
            .map(|t| (Arc::new((*t).clone()), 1))
            .collect(),
        holds: vec![create.return_id],
        ..Default::default()
    };
    b.send(driver.peer, ToHead::Resume(Box::new(state)));
    b.send(
        driver.peer,
        ToHead::Subscribe(resumed.iter().map(|t| t.return_id).collect()),
    );
    // A call made now waits behind them, as its caller's later call.
    let made_now = actor_call(before.job, actor, Vec::new());
    b.submit(driver, &made_now);
    let back = b.node_back(node.id, ResourceSet::new().with(CPU, 4.0));
    assert!(
        b.assigned(back).is_empty(),
        "nothing runs before the inventory"
    );
    // The third call ended while the head was away: it is not in the inventory,
    // and its end, held for the head, comes after it.
    let inventory = crate::protocol::NodeInventory {
        tasks: vec![held(&calls[1], false)],
        actors: vec![(actor, 4321)],
        ..Default::default()
    };
    b.send(back.peer, ToHead::NodeResumed(Box::new(inventory)));
    assert!(
        b.assigned(back).is_empty(),
        "nothing is claimed before what the node held is in"
    );
    b.send(
        back.peer,
        ToHead::TaskFinished {
            task_id: calls[2].task_id,
            attempt: 0,
            outcome: stored_inline(3),
            run_micros: 1000,
            worker_pid: 4321,
        },
    );
    b.send(back.peer, ToHead::NodeCaughtUp);
    // Only the calls the node never got run, in the caller's order, as first
    // attempts: the running one is not sent again.
    let sent: Vec<(TaskId, u32)> = b
        .assigned(back)
        .iter()
        .map(|a| (a.spec.task_id, a.attempt))
        .collect();
    let expected: Vec<(TaskId, u32)> = [&calls[3], &made_meanwhile, &made_now]
        .iter()
        .map(|t| (t.task_id, 0))
        .collect();
    assert_eq!(sent, expected);
    let mut told = told(&mut b, driver);
    assert!(
        matches!(told.remove(&calls[2].return_id), Some(ObjectLocation::Inline(v)) if v == [3])
    );
    assert!(told.is_empty(), "{told:?}");
    // The running call is the head's again: its end reaches the driver.
    b.send(
        back.peer,
        ToHead::TaskFinished {
            task_id: calls[1].task_id,
            attempt: 0,
            outcome: stored_inline(2),
            run_micros: 1000,
            worker_pid: 4321,
        },
    );
    assert!(matches!(
        b.location(driver, calls[1].return_id),
        Some(ObjectLocation::Inline(v)) if v == [2]
    ));
    drop(b);
    drop(storage);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_call_whose_actor_was_lost_with_its_node_at_a_head_restart_runs_again_only_as_a_retry() {
    let (dir, storage) = fresh_storage("lost-calls");
    let mut b = Bench::on_storage(Some(storage.clone()));
    let kept = b.cpu_node(4.0);
    let lost = b.node(ResourceSet::new().with(CPU, 4.0).with("x", 2.0));
    let before = b.driver();
    // Two actors on the node that will not come back, one restart each; only the
    // second lets a call run again.
    let create = |b: &mut Bench, retries: i32| {
        let (actor, mut spec) = actor_creation(before.job, 1);
        spec.resources = ResourceSet::new().with("x", 1.0);
        if let TaskKind::CreateActor(c) = &mut spec.kind {
            c.max_task_retries = retries;
        }
        b.submit(before, &spec);
        let a = b.only_assignment(lost);
        b.finish(lost, &a, stored_inline(0));
        (actor, spec.return_id)
    };
    let (once, once_handle) = create(&mut b, 0);
    let (twice, twice_handle) = create(&mut b, 1);
    let call_once = actor_call(before.job, once, Vec::new());
    let call_twice = actor_call(before.job, twice, Vec::new());
    b.submit(before, &call_once);
    b.submit(before, &call_twice);
    assert_eq!(b.assigned(lost).len(), 2);
    storage.flush_blocking().expect("written");
    drop(b);

    let mut b = Bench::on_storage(Some(storage.clone()));
    let back = b.node_back(kept.id, ResourceSet::new().with(CPU, 4.0).with("x", 2.0));
    b.send(back.peer, ToHead::NodeResumed(Box::default()));
    b.send(back.peer, ToHead::NodeCaughtUp);
    let driver = b.resumed_driver(before.job);
    let state = crate::protocol::ResumeState {
        tasks: vec![
            (Arc::new(call_once.clone()), 1),
            (Arc::new(call_twice.clone()), 1),
        ],
        holds: vec![once_handle, twice_handle],
        ..Default::default()
    };
    b.send(driver.peer, ToHead::Resume(Box::new(state)));
    b.send(
        driver.peer,
        ToHead::Subscribe(vec![call_once.return_id, call_twice.return_id]),
    );
    // The other node does not come back: both actors are created again on this one.
    b.pass(NODE_TIMEOUT + NODE_TIMEOUT / 5, &[back]);
    let creations = b.assigned(back);
    assert_eq!(creations.len(), 2, "{creations:?}");
    match error_of(b.location(driver, call_once.return_id)) {
        Some(TaskError::ActorDied { actor, cause, .. }) => {
            assert_eq!(actor, once);
            assert!(cause.contains("max_task_retries=0"), "{cause}");
        }
        other => panic!("expected ActorDied, got {other:?}"),
    }
    for a in &creations {
        b.finish(back, a, stored_inline(0));
    }
    // The other runs again on the new process, as its retry.
    let a = b.only_assignment(back);
    assert_eq!((a.spec.task_id, a.attempt), (call_twice.task_id, 1));
    drop(b);
    drop(storage);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_call_whose_argument_is_an_error_does_not_hold_back_its_caller_s_later_calls() {
    let mut b = Bench::new();
    let node = b.cpu_node(2.0);
    let driver = b.driver();
    let (actor, create) = actor_creation(driver.job, 0);
    b.submit(driver, &create);
    let a = b.only_assignment(node);
    b.finish(node, &a, stored_inline(0));
    let broken = task(driver.job, "broken", Vec::new(), 0);
    b.submit(driver, &broken);
    let a = b.only_assignment(node);
    let err = TaskError::Failed {
        function: "broken".into(),
        message: "no".into(),
        node: "n".into(),
    };
    b.finish(node, &a, TaskOutcome::Failed(err));
    let first = actor_call(driver.job, actor, vec![TaskArg::Ref(broken.return_id)]);
    b.submit(driver, &first);
    assert!(matches!(
        error_of(b.location(driver, first.return_id)),
        Some(TaskError::Failed { .. })
    ));
    let second = actor_call(driver.job, actor, Vec::new());
    b.submit(driver, &second);
    assert_eq!(b.only_assignment(node).spec.task_id, second.task_id);
}

#[test]
fn an_actor_call_s_result_lost_with_its_node_is_reported_lost_not_run_again() {
    let mut b = Bench::new();
    let home = b.cpu_node(2.0);
    let driver = b.driver();
    let (actor, create) = actor_creation(driver.job, 0);
    b.submit(driver, &create);
    let a = b.only_assignment(home);
    b.finish(home, &a, stored_inline(0));
    let call = actor_call(driver.job, actor, Vec::new());
    b.submit(driver, &call);
    let a = b.only_assignment(home);
    b.finish(home, &a, stored_on_node());
    assert!(held_only_by(b.location(driver, call.return_id), home));
    // Its node dies with the only copy (and the actor).
    let other = b.cpu_node(2.0);
    b.pass(NODE_TIMEOUT + NODE_TIMEOUT / 5, &[other]);
    assert!(b.assigned(other).is_empty(), "nothing runs again");
    match b.head.objects.value(&call.return_id) {
        Some(ObjectValue::Error(e)) => {
            assert!(matches!(**e, TaskError::ObjectLost { .. }), "{e}")
        }
        other => panic!("expected ObjectLost, got {other:?}"),
    }
}

#[test]
fn a_task_waiting_on_its_own_tasks_at_a_head_restart_gets_them_back_and_keeps_lending_its_cpu() {
    let (dir, storage) = fresh_storage("nested");
    let mut b = Bench::on_storage(Some(storage.clone()));
    let node = b.cpu_node(1.0);
    let before = b.driver();
    storage.flush_blocking().expect("written");
    drop(b);

    // The parent ran on the node, waiting in `get` for two children it submitted,
    // one of them running (on the CPU the parent lent), one waiting at the head;
    // the second takes a large value the parent put, kept on the node.
    let mut b = Bench::on_storage(Some(storage.clone()));
    let job = before.job;
    let parent = task(job, "parent", Vec::new(), 3);
    let put = ObjectId::random();
    let child = |args| {
        let mut t = task(job, "child", args, 3);
        t.parent = parent.task_id;
        t
    };
    let running = child(Vec::new());
    let waiting = child(vec![TaskArg::Ref(put)]);
    let back = b.node_back(node.id, ResourceSet::new().with(CPU, 1.0));
    let inventory = crate::protocol::NodeInventory {
        tasks: vec![held(&parent, true), held(&running, false)],
        objects: vec![(put, 1 << 20)],
        actors: Vec::new(),
    };
    b.send(back.peer, ToHead::NodeResumed(Box::new(inventory)));
    b.send(back.peer, ToHead::NodeCaughtUp);
    let driver = b.resumed_driver(job);
    let state = crate::protocol::ResumeState {
        tasks: vec![(Arc::new(parent.clone()), 1)],
        ..Default::default()
    };
    b.send(driver.peer, ToHead::Resume(Box::new(state)));
    // The parent's worker comes back and says what it submitted and holds.
    let worker = b.worker(back, job);
    let state = crate::protocol::ResumeState {
        tasks: vec![
            (Arc::new(running.clone()), 1),
            (Arc::new(waiting.clone()), 1),
        ],
        holds: vec![put],
        ..Default::default()
    };
    b.send(worker, ToHead::Resume(Box::new(state)));
    b.send(
        worker,
        ToHead::Subscribe(vec![running.return_id, waiting.return_id]),
    );
    assert!(
        b.assigned(back).is_empty(),
        "the running child is not sent again"
    );
    // The running child ends; the waiting one gets the CPU the blocked parent
    // still lends, and reads the put where it is.
    b.send(
        back.peer,
        ToHead::TaskFinished {
            task_id: running.task_id,
            attempt: 0,
            outcome: stored_inline(1),
            run_micros: 1000,
            worker_pid: 777,
        },
    );
    let a = b.only_assignment(back);
    assert_eq!(a.spec.task_id, waiting.task_id);
    assert!(
        matches!(&a.sources[0], ArgSource::At(at) if at.len() == 1 && at[0].node == back.id),
        "{:?}",
        a.sources
    );
    assert!(matches!(
        b.location_of(worker, running.return_id),
        Some(ObjectLocation::Inline(v)) if v == [1]
    ));
    // When the parent goes on, it takes its CPU back.
    let used_cpu = |b: &Bench| {
        b.head
            .nodes
            .views()
            .iter()
            .find(|v| v.id == back.id)
            .map(|v| v.used.get(CPU))
    };
    assert_eq!(used_cpu(&b), Some(1.0), "the second child only");
    b.send(worker, ToHead::TaskUnblocked(parent.task_id));
    assert_eq!(used_cpu(&b), Some(2.0), "the parent and the second child");
    b.finish(back, &a, stored_inline(2));
    assert_eq!(used_cpu(&b), Some(1.0), "the parent");
    drop(b);
    drop(storage);
    let _ = std::fs::remove_dir_all(&dir);
}
