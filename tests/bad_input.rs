//! Malformed, truncated, oversized and wrong-version frames, and raw UDP garbage, sent
//! to a real head: each is refused and logged, and the head keeps serving everyone else.

use rayish_core::protocol::{encode_frame, StreamOpen, TransferRequest, MAGIC, PROTOCOL_VERSION};
use rayish_core::transport::tls::ClusterTls;
use rayish_core::transport::{connect, make_endpoint};
use rayish_suite::TestCluster;
use std::time::Duration;

async fn send_raw(address: &str, token: &str, bytes: Vec<u8>) {
    let tls = ClusterTls::from_token(token).unwrap();
    let endpoint =
        make_endpoint("127.0.0.1:0".parse().unwrap(), &tls, Duration::from_secs(5)).unwrap();
    let conn = connect(&endpoint, address.parse().unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(&bytes).await;
    let _ = send.finish();
    // The head answers by closing the stream or the connection; either is fine.
    let _ = tokio::time::timeout(Duration::from_secs(3), recv.read_to_end(1 << 20)).await;
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
}

fn header(version: u16, len: u32) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b
}

#[test]
fn bad_frames_are_rejected_and_the_head_keeps_serving() {
    let cluster = TestCluster::start(1, 1, 5000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut good = Vec::new();
    encode_frame(
        &StreamOpen::Transfer(TransferRequest::PullObject(rayish::ObjectId(1))),
        &mut good,
    )
    .unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("wrong version", {
            let mut b = header(PROTOCOL_VERSION + 7, 1);
            b.push(0);
            b
        }),
        ("oversized", header(PROTOCOL_VERSION, u32::MAX)),
        ("truncated", good[..good.len() - 3].to_vec()),
        ("malformed payload", {
            let mut b = header(PROTOCOL_VERSION, 4);
            b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
            b
        }),
    ];
    for (name, bytes) in cases {
        rt.block_on(send_raw(&cluster.address, &cluster.token, bytes));
        assert_eq!(cluster.alive_nodes(), 2, "after {name}");
    }
    // Raw UDP garbage at the QUIC port.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..100 {
        udp.send_to(&[0x42; 1200], &cluster.address).unwrap();
    }
    // A real driver still gets served.
    assert_eq!(cluster.scenario(["many", "--n", "200"])["wrong"], 0);
    // And the refusals were logged.
    let logs = rayish_suite::read_logs(cluster.root());
    for expected in [
        "bad frame magic",
        "protocol version",
        "exceeds",
        "stream ended inside a frame",
        "malformed",
    ] {
        assert!(
            logs.contains(expected),
            "no {expected:?} in the logs:\n{logs}"
        );
    }
}

/// Opens a control stream to the head as `role`.
async fn join_as(
    endpoint: &rayish_core::transport::Endpoint,
    head: std::net::SocketAddr,
    role: rayish_core::protocol::PeerRole,
) -> Result<rayish_core::transport::ControlStream, rayish_core::transport::HandshakeError> {
    let conn = connect(endpoint, head, Duration::from_secs(5))
        .await
        .unwrap();
    let hello = rayish_core::protocol::Hello {
        role,
        software_version: env!("CARGO_PKG_VERSION").into(),
    };
    rayish_core::transport::open_control(&conn, hello).await
}

#[test]
fn a_peer_with_the_token_cannot_act_for_others_or_out_of_turn() {
    use rayish::ObjectId;
    use rayish_core::ids::{JobId, TaskId};
    use rayish_core::protocol::{
        FromHead, PeerRole, TaskKind, TaskOutcome, TaskSpec, ToHead, Welcome,
    };
    let cluster = TestCluster::start(1, 1, 5000);
    let head: std::net::SocketAddr = cluster.address.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tls = ClusterTls::from_token(&cluster.token).unwrap();
        let endpoint = rayish_core::transport::make_client_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &tls,
            Duration::from_secs(10),
        )
        .unwrap();
        // A driver: a live job of its own.
        let binary = rayish_core::binaries::hash_file(&rayish_suite::example_bin("hello")).unwrap();
        let mut driver = join_as(
            &endpoint,
            head,
            PeerRole::Driver {
                binary,
                name: "intruder".into(),
                pid: std::process::id(),
                submission_id: None,
                resumes: None,
            },
        )
        .await
        .unwrap();
        let Welcome::Accepted {
            job: Some(job),
            head_node,
            ..
        } = driver.welcome.clone()
        else {
            panic!("no job: {:?}", driver.welcome);
        };
        // A worker of that job the node never started: refused.
        let fake = join_as(
            &endpoint,
            head,
            PeerRole::Worker {
                node: head_node,
                job,
                proof: [7; 32],
                pid: std::process::id(),
            },
        )
        .await;
        let err = fake
            .err()
            .expect("a worker with a made-up proof was accepted");
        assert!(err.to_string().contains("not a worker"), "{err}");

        // A task for another job, a node's report from a driver, a block report
        // about someone else's task, a put of a client: all ignored.
        let spec = TaskSpec {
            task_id: TaskId(42),
            job: JobId(12345),
            function: "nothing".into(),
            args: vec![],
            nested_refs: vec![],
            return_id: ObjectId(43),
            resources: rayish_core::resources::ResourceSet::new(),
            max_retries: 0,
            kind: TaskKind::Function,
            parent: TaskId::DRIVER,
        };
        driver
            .sender
            .send(ToHead::SubmitTasks(vec![std::sync::Arc::new(spec)]));
        driver.sender.send(ToHead::TaskFinished {
            task_id: TaskId(42),
            attempt: 0,
            outcome: TaskOutcome::WorkerDied("forged".into()),
            run_micros: 1,
            worker_pid: 1,
        });
        driver.sender.send(ToHead::TaskBlocked(TaskId(42)));
        driver.sender.send(ToHead::ObjectCopied(ObjectId(43)));
        let mut client = join_as(&endpoint, head, PeerRole::Client).await.unwrap();
        client.sender.send(ToHead::PutInline {
            id: ObjectId(44),
            value: vec![1, 2, 3],
        });
        client.sender.send(ToHead::SubmitTasks(vec![]));
        client.sender.send(ToHead::ActorDied {
            actor: rayish::ActorId(5),
            reason: "forged".into(),
        });
        client.sender.send(ToHead::Sync(9));
        // Both are still served, in order.
        driver.sender.send(ToHead::Sync(1));
        loop {
            match driver.reader.next().await.unwrap() {
                Some(FromHead::Synced(1)) => break,
                Some(_) => continue,
                None => panic!("the head dropped the driver"),
            }
        }
        loop {
            match client.reader.next().await.unwrap() {
                Some(FromHead::Synced(9)) => break,
                Some(_) => continue,
                None => panic!("the head dropped the client"),
            }
        }
        let status_after = {
            client.sender.send(ToHead::StatusRequest);
            loop {
                match client.reader.next().await.unwrap() {
                    Some(FromHead::Status(s)) => break s,
                    Some(_) => continue,
                    None => panic!("no status"),
                }
            }
        };
        assert_eq!(status_after.pending_tasks, 0, "the foreign task was queued");
    });
    // Everyone else is served as before.
    assert_eq!(cluster.scenario(["many", "--n", "200"])["wrong"], 0);
    assert_eq!(cluster.alive_nodes(), 2);
    let logs = rayish_suite::read_logs(cluster.root());
    for expected in [
        "not a worker that node",
        "task for another job",
        "block report about a task of another job",
        "not a driver or worker",
    ] {
        assert!(logs.contains(expected), "no {expected:?} in the logs");
    }
}
