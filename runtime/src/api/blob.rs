//! [`Blob`]: bytes that `get` hands back without copying them.
//!
//! Ray returns a large numpy array from `ray.get` as a read-only view of the object
//! store's shared memory. `Blob` is the same for Rust: an immutable, reference-counted
//! byte buffer that encodes as a byte string, and that decodes, when `get` or a task
//! argument reads it from a stored object, as a view of the object's memory (a slice of
//! the mapped segment) instead of a copy. Anywhere else (another format, a value built
//! by hand) it is an ordinary buffer.
//!
//! How: `get` and argument decoding run the decoder under [`decode_shared`], which
//! names the buffer being decoded in a thread-local; `Blob`'s visitor receives a slice
//! borrowed from that buffer and keeps a reference-counted slice of it.

use bytes::Bytes;
use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;

thread_local! {
    /// The buffer being decoded on this thread, if any.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Decodes a stored value; the [`Blob`]s inside it borrow `bytes` instead of copying.
pub(crate) fn decode_shared<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, String> {
    let outer = SOURCE.with(|s| s.borrow_mut().replace(bytes.clone()));
    let value = super::codec::decode_value(bytes);
    SOURCE.with(|s| *s.borrow_mut() = outer);
    value
}

/// An immutable byte buffer that `rayish::get` returns as a view of the object store's
/// memory (no copy), as Ray does for numpy arrays. Cloning it is cheap; it derefs to
/// `[u8]`. The memory it views stays valid while the `Blob` lives, even after the
/// object is freed.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Blob(Bytes);

impl Blob {
    /// A blob holding `bytes`.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Blob(bytes.into())
    }

    /// The buffer, as `bytes::Bytes`.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// A copy of the bytes as a vector.
    pub fn to_vec(&self) -> Vec<u8> {
        self.0.to_vec()
    }
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Blob(Bytes::from(v))
    }
}

impl From<Bytes> for Blob {
    fn from(b: Bytes) -> Self {
        Blob(b)
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(BlobVisitor)
    }
}

struct BlobVisitor;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Blob, E> {
        let view = SOURCE.with(|s| {
            let source = s.borrow();
            let source = source.as_ref()?;
            let start = source.as_ptr() as usize;
            let at = v.as_ptr() as usize;
            // Only a slice lying inside the buffer being decoded can be a view of it.
            (at >= start && at + v.len() <= start + source.len()).then(|| source.slice_ref(v))
        });
        Ok(Blob(view.unwrap_or_else(|| Bytes::copy_from_slice(v))))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
        Ok(Blob(Bytes::copy_from_slice(v)))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
        Ok(Blob::from(v))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Blob::from(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoded_blob_views_the_source_and_outlives_it() {
        let value = (7u32, Blob::from(vec![5u8; 4096]), String::from("x"));
        let encoded = Bytes::from(crate::api::codec::encode_value(&value).expect("encode"));
        let (n, blob, s): (u32, Blob, String) = decode_shared(&encoded).expect("decode");
        assert_eq!((n, s.as_str()), (7, "x"));
        assert_eq!(&blob[..], &[5u8; 4096][..]);
        let start = encoded.as_ptr() as usize;
        let at = blob.as_ptr() as usize;
        assert!(
            at >= start && at < start + encoded.len(),
            "the blob is a view, not a copy"
        );
        drop(encoded);
        assert_eq!(blob.len(), 4096, "the view keeps the buffer alive");
        // Decoded from a plain slice, it is a copy.
        let again = crate::api::codec::encode_value(&Blob::from(vec![1, 2, 3])).expect("encode");
        let copied: Blob = crate::api::codec::decode_value(&again).expect("decode");
        assert_eq!(&copied[..], &[1, 2, 3]);
        // Same bytes as a Vec<u8> would give.
        let as_vec: serde_bytes::ByteBuf = crate::api::codec::decode_value(&again).expect("decode");
        assert_eq!(as_vec.into_vec(), vec![1, 2, 3]);
    }
}
