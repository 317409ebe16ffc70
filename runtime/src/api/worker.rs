//! The worker process: a copy of the driver's binary started by a node. `init` diverts
//! here when it finds the node's socket in the environment; the process then runs the
//! tasks the node sends it, one at a time, until the node closes the socket.

use crate::registry::{lookup, lookup_constructor, lookup_method, ActorInstance, InvokeError};
use rayish_core::core_worker::node_link::{NodeLink, RunRequest};
use rayish_core::core_worker::{set_current_task, Connection, CoreWorker, Reconnect};
use rayish_core::ids::{JobId, NodeId};
use rayish_core::protocol::{FromWorker, Hello, PeerRole, RunKind, TaskError, Welcome};
use rayish_core::transport::tls::{ClusterKey, ClusterTls};
use rayish_core::transport::{connect, make_client_endpoint, open_control};
use std::os::fd::FromRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

/// Runs the worker and exits the process.
pub(crate) fn run_worker() -> ! {
    let code = match worker_main() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rayish worker: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

/// The 32 bytes of a hex `RAYISH_WORKER_PROOF`.
fn parse_proof(text: &str) -> Result<[u8; 32], String> {
    let mut proof = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut proof)
        .map_err(|_| "RAYISH_WORKER_PROOF is not 64 hex digits".to_string())?;
    Ok(proof)
}

fn worker_main() -> Result<(), String> {
    let fd: i32 = env("RAYISH_WORKER_FD")?
        .parse()
        .map_err(|e| format!("RAYISH_WORKER_FD: {e}"))?;
    let head = rayish_core::launch::resolve(&env("RAYISH_HEAD_ADDRESS")?)?;

    let node = NodeId(
        env("RAYISH_NODE_ID")?
            .parse()
            .map_err(|e| format!("RAYISH_NODE_ID: {e}"))?,
    );
    let job = JobId(
        env("RAYISH_JOB_ID")?
            .parse()
            .map_err(|e| format!("RAYISH_JOB_ID: {e}"))?,
    );
    let proof = parse_proof(&env("RAYISH_WORKER_PROOF")?)?;
    let node_label = format!(
        "{node} at {}",
        std::env::var("RAYISH_NODE_ADDRESS").unwrap_or_default()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rayish-worker-io")
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let handle = rt.handle().clone();
    let _enter = rt.enter();

    // SAFETY: the node passed us this descriptor (see worker_pool::spawn) and nothing
    // else in this process owns it.
    let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    let shm_dir = std::env::var_os("RAYISH_SHM_DIR")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from);
    let link = NodeLink::new(std_stream, shm_dir).map_err(|e| format!("node socket: {e}"))?;

    let key = ClusterKey::from_hex(&env("RAYISH_CLUSTER_KEY")?).map_err(|e| e.to_string())?;
    let tls = ClusterTls::from_key(&key).map_err(|e| e.to_string())?;
    // The node's own address, as `--node-ip-address` gave it, not every interface.
    let node_ip = std::env::var("RAYISH_NODE_ADDRESS")
        .ok()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip())
        .or_else(|| rayish_core::launch::route_ip(head))
        .unwrap_or_else(|| head.ip());
    let bind = std::net::SocketAddr::new(node_ip, 0);
    // The head may stall as long as the node waits for it; peers are dropped sooner.
    let head_wait = rayish_core::transport::head_reconnect_timeout_from_env();
    let endpoint = make_client_endpoint(bind, &tls, head_wait).map_err(|e| e.to_string())?;
    let peer_client = rayish_core::transport::client_config(
        &tls,
        rayish_core::transport::PEER_IDLE_TIMEOUT,
        bind,
    )
    .map_err(|e| e.to_string())?;
    let hello = Hello {
        role: PeerRole::Worker {
            node,
            job,
            proof,
            pid: std::process::id(),
        },
        software_version: env!("CARGO_PKG_VERSION").into(),
    };
    let to_head = HeadDialer {
        endpoint,
        peer_client,
        head,
        hello,
    };
    let conn = handle.block_on(to_head.connect())?;
    // A restarted head takes this worker back once its node is back: the tasks it
    // runs go on, and so do their calls to the head.
    let reconnect = Reconnect {
        connect: Arc::new(move |_job| {
            let to_head = to_head.clone();
            Box::pin(async move { to_head.connect().await })
        }),
        within: head_wait,
    };
    let cw = CoreWorker::start(handle, conn, Some((link, node)), Some(reconnect));
    crate::api::metrics::running_in_worker();
    crate::api::context::install(cw.clone());
    crate::api::register_exit_hook();
    let link = cw.node_link().ok_or("no node link")?;
    link.send(FromWorker::Ready {
        pid: std::process::id(),
    });

    // The actor this worker is dedicated to, once its constructor has run.
    let mut actor: Option<ActorInstance> = None;
    while let Some(run) = link.next_run() {
        let task_id = run.task_id;
        let return_id = run.return_id;
        set_current_task(Some((task_id, return_id)));
        let sent_before = cw.messages_sent();
        let result = execute(&run, &node_label, &mut actor);
        set_current_task(None);
        // The task's metrics reach the node before its end does.
        if let Some(metrics) = crate::api::metrics::take_if_recorded() {
            link.send(FromWorker::Metrics(metrics));
        }
        // What the task told the head (objects it made, tasks it submitted, references
        // inside its result) must be known there before the node reports the task
        // done on its own stream, or a reader of the result could ask too early.
        if cw.messages_sent() != sent_before && !cw.sync_with_head() {
            eprintln!("rayish worker: the head did not confirm this task's messages in time");
        }
        // References inside the result were declared by encode_return.
        let result = result.and_then(|encoded| {
            link.hand_over(return_id, encoded.bytes)
                .map_err(|message| TaskError::Codec {
                    function: run.function.clone(),
                    message: format!("cannot return the result: {message}"),
                })
        });
        let finished = FromWorker::Finished { task_id, result };
        if let Err(e) = link.try_send(&finished) {
            // Most likely a result too large for the socket: report that instead.
            let function = run.function.clone();
            let result = Err(TaskError::Codec {
                function,
                message: format!("cannot return the result: {e}"),
            });
            link.send(FromWorker::Finished { task_id, result });
        }
    }
    Ok(())
}

/// What a worker says to join its head, kept to say it again to a restarted head.
#[derive(Clone)]
struct HeadDialer {
    endpoint: rayish_core::transport::Endpoint,
    peer_client: rayish_core::transport::ClientConfig,
    head: std::net::SocketAddr,
    hello: Hello,
}

impl HeadDialer {
    /// A control stream to the head, as this worker.
    async fn connect(&self) -> Result<Connection, String> {
        let head_conn = connect(&self.endpoint, self.head, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        let control = open_control(&head_conn, self.hello.clone())
            .await
            .map_err(|e| e.to_string())?;
        let Welcome::Accepted {
            peer, head_node, ..
        } = control.welcome
        else {
            return Err("the head refused this worker".to_string());
        };
        let PeerRole::Worker { job, .. } = self.hello.role else {
            return Err("not a worker's hello".to_string());
        };
        Ok(Connection {
            endpoint: self.endpoint.clone(),
            peer_client: self.peer_client.clone(),
            head_conn,
            head: control.sender,
            reader: control.reader,
            peer,
            job,
            head_node,
        })
    }
}

fn execute(
    run: &RunRequest,
    node: &str,
    actor: &mut Option<ActorInstance>,
) -> Result<crate::registry::Encoded, TaskError> {
    let function = run.function.clone();
    let unknown = || TaskError::UnknownFunction {
        function: run.function.clone(),
    };
    let args = run.args.as_ref().map_err(|message| TaskError::Codec {
        function: function.clone(),
        message: format!("an argument could not be read: {message}"),
    })?;
    let outcome = match run.kind {
        RunKind::Function => {
            let f = lookup(&run.function).ok_or_else(unknown)?;
            catch_unwind(AssertUnwindSafe(|| (f.invoke)(args)))
        }
        RunKind::CreateActor => {
            let c = lookup_constructor(&run.function).ok_or_else(unknown)?;
            catch_unwind(AssertUnwindSafe(|| (c.construct)(args))).map(|built| {
                built.map(|instance| {
                    *actor = Some(instance);
                    crate::registry::Encoded {
                        bytes: Vec::new(),
                        nested: Vec::new(),
                    }
                })
            })
        }
        RunKind::ActorMethod => {
            let m = lookup_method(&run.function).ok_or_else(unknown)?;
            let Some(instance) = actor.as_mut() else {
                return Err(TaskError::Codec {
                    function,
                    message: "this worker holds no actor".into(),
                });
            };
            // A panicking method leaves the actor as the panic left it, as an
            // exception in a Ray actor method does.
            catch_unwind(AssertUnwindSafe(|| (m.invoke)(instance, args)))
        }
    };
    match outcome {
        Ok(Ok(encoded)) => Ok(encoded),
        Ok(Err(InvokeError::Failed(message))) => Err(TaskError::Failed {
            function,
            message,
            node: node.to_string(),
        }),
        Ok(Err(InvokeError::Codec(message))) => Err(TaskError::Codec { function, message }),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            Err(TaskError::Panicked {
                function,
                message,
                node: node.to_string(),
            })
        }
    }
}
