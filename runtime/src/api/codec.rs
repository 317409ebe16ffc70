//! The user-value codec: how a task's arguments, its result and a `put` value are
//! encoded (bincode with varint integers, as the wire protocol's messages are, but a
//! separate concern: the protocol carries these bytes without looking into them).

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Serializes a value as objects and task arguments hold it.
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    bincode::DefaultOptions::new()
        .serialize(value)
        .map_err(|e| e.to_string())
}

/// The size of `value` encoded by [`encode_value`].
pub(crate) fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<u64, String> {
    bincode::DefaultOptions::new()
        .serialized_size(value)
        .map_err(|e| e.to_string())
}

/// Encodes `value` as [`encode_value`] does into `buf`, which must be exactly
/// [`encoded_len`] bytes.
pub(crate) fn encode_value_into<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut [u8],
) -> Result<(), String> {
    let len = buf.len();
    // Large byte strings are copied by several threads (a put of gigabytes).
    let mut rest = rayish_core::object_store::memcopy::SliceWriter::new(buf);
    bincode::DefaultOptions::new()
        .serialize_into(&mut rest, value)
        .map_err(|e| e.to_string())?;
    if rest.remaining() != 0 {
        return Err(format!(
            "the value encoded to {} bytes, not the {len} it measured",
            len - rest.remaining()
        ));
    }
    Ok(())
}

/// Deserializes a value encoded by [`encode_value`].
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::DefaultOptions::new()
        .deserialize(bytes)
        .map_err(|e| e.to_string())
}
