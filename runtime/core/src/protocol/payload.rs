//! Encoded values inside messages go through serde's byte-string path: the bytes on
//! the wire are the same as a sequence of `u8` (bincode writes a length, then the
//! bytes), but serde's generic `Vec<u8>` visits them one byte at a time, which showed
//! as the node's busiest code when moving megabyte objects.

use serde::{Deserializer, Serializer};

pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    serde_bytes::serialize(v, s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    serde_bytes::deserialize(d)
}
