//! The fuzz targets' bodies: every decoder that reads bytes from outside the process.
//! `fuzz/` runs them under libFuzzer (`cargo fuzz`); `tests/fuzz_smoke.rs` runs
//! them on the seeds, every crash found so far, and thousands of mutations of them,
//! in the normal test suite. Each must return, whatever the bytes: an `Err`
//! is fine; a panic, a hang or an allocation out of proportion to the input is not.

use rayish::__private::decode_value;
use rayish_core::protocol::{
    decode_payload, read_frame_blocking, FromHead, FromWorker, StreamOpen, ToHead, ToWorker,
    TransferReply, TransferRequest, MAX_FRAME_LEN,
};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name (as `fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: [(&str, Target); 5] = [
    ("frames", frames),
    ("messages", messages),
    ("values", values),
    ("cluster_yaml", cluster_yaml),
    ("images", images),
];

/// A stream of frames, read as each message family: the first byte picks the family.
pub fn frames(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let mut r = rest;
    // Up to 8 frames from one stream, as a reader would go on.
    for _ in 0..8 {
        let more = match which % 7 {
            0 => read_frame_blocking::<_, ToHead>(&mut r, MAX_FRAME_LEN).map(|m| m.is_some()),
            1 => read_frame_blocking::<_, FromHead>(&mut r, MAX_FRAME_LEN).map(|m| m.is_some()),
            2 => read_frame_blocking::<_, StreamOpen>(&mut r, MAX_FRAME_LEN).map(|m| m.is_some()),
            3 => read_frame_blocking::<_, TransferRequest>(&mut r, MAX_FRAME_LEN)
                .map(|m| m.is_some()),
            4 => {
                read_frame_blocking::<_, TransferReply>(&mut r, MAX_FRAME_LEN).map(|m| m.is_some())
            }
            5 => read_frame_blocking::<_, ToWorker>(&mut r, MAX_FRAME_LEN).map(|m| m.is_some()),
            _ => read_frame_blocking::<_, FromWorker>(&mut r, MAX_FRAME_LEN).map(|m| m.is_some()),
        };
        if !matches!(more, Ok(true)) {
            return;
        }
    }
}

/// A frame's payload, decoded as every message type (what follows a good header).
pub fn messages(data: &[u8]) {
    let _ = decode_payload::<ToHead>(data);
    let _ = decode_payload::<FromHead>(data);
    let _ = decode_payload::<StreamOpen>(data);
    let _ = decode_payload::<TransferRequest>(data);
    let _ = decode_payload::<TransferReply>(data);
    let _ = decode_payload::<ToWorker>(data);
    let _ = decode_payload::<FromWorker>(data);
}

/// A user value, decoded as the shapes tasks take and return (`decode_value` is what
/// `get` and a task's arguments go through).
#[allow(clippy::type_complexity)]
pub fn values(data: &[u8]) {
    let _ = decode_value::<u64>(data);
    let _ = decode_value::<String>(data);
    let _ = decode_value::<Vec<u64>>(data);
    let _ = decode_value::<serde_bytes::ByteBuf>(data);
    let _ = decode_value::<(Vec<u64>, String)>(data);
    let _ = decode_value::<Option<Vec<(String, f64)>>>(data);
    let _ = decode_value::<std::collections::BTreeMap<String, Vec<Vec<u8>>>>(data);
    let _ = decode_value::<Result<Vec<f32>, String>>(data);
    let _ = decode_value::<rayish::Blob>(data);
    let _ = decode_value::<rayish::TaskError>(data);
    let _ = decode_value::<Vec<rayish_faces::FaceJob>>(data);
}

/// A cluster YAML file, as `rayish up` reads it.
pub fn cluster_yaml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = rayish_launcher::launcher::config::ClusterConfig::parse(text, "fuzz.yaml");
    }
}

/// An image file, as the faces pipeline decodes it (JPEG, PNG, …), with a pixel cap
/// that keeps a header's claimed size from allocating more than a few MB.
pub fn images(data: &[u8]) {
    let _ = rayish_faces::decode::decode_rgb(data, 1 << 20);
}
