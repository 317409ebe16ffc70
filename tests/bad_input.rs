//! Malformed, truncated, oversized and wrong-version frames, and raw UDP garbage, sent
//! to a real head: each is refused and logged, and the head keeps serving everyone else.

use rayish::protocol::{encode_frame, StreamOpen, TransferRequest, MAGIC, PROTOCOL_VERSION};
use rayish::transport::tls::ClusterTls;
use rayish::transport::{connect, make_endpoint};
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
