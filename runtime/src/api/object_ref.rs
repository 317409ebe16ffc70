//! `ObjectRef<T>`: a typed, counted handle to an object somewhere in the cluster.

use rayish_core::core_worker::note_nested;
use rayish_core::ids::ObjectId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::marker::PhantomData;

/// A reference to a value of type `T` that exists (or will exist) in the cluster.
///
/// Returned at once by remote calls and by [`crate::put`]; read with [`crate::get`].
/// Handles may be cloned, passed to other tasks (as arguments or inside values) and
/// returned from tasks; the object lives while any handle to it exists anywhere.
pub struct ObjectRef<T> {
    id: ObjectId,
    _t: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    /// A handle for an object the head already counts this process as holding.
    pub(crate) fn created(id: ObjectId) -> Self {
        if let Some(cw) = super::context::try_current() {
            cw.ref_created(id);
        }
        Self {
            id,
            _t: PhantomData,
        }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        if let Some(cw) = super::context::try_current() {
            cw.ref_cloned(self.id);
        }
        Self {
            id: self.id,
            _t: PhantomData,
        }
    }
}

impl<T> Drop for ObjectRef<T> {
    fn drop(&mut self) {
        if let Some(cw) = super::context::try_current() {
            cw.ref_dropped(self.id);
        }
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef({:?})", self.id)
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<T> Eq for ObjectRef<T> {}

impl<T> std::hash::Hash for ObjectRef<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state)
    }
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        note_nested(self.id);
        self.id.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = ObjectId::deserialize(d)?;
        if let Some(cw) = super::context::try_current() {
            cw.ref_received(id);
        }
        Ok(Self {
            id,
            _t: PhantomData,
        })
    }
}

/// An argument of a remote call: a value, or a reference resolved where the task runs.
pub enum Arg<T> {
    /// The value itself, encoded into the task.
    Value(T),
    /// A reference; the task receives the object's value.
    Ref(ObjectRef<T>),
}

impl<T> From<T> for Arg<T> {
    fn from(value: T) -> Self {
        Arg::Value(value)
    }
}

impl<T> From<ObjectRef<T>> for Arg<T> {
    fn from(r: ObjectRef<T>) -> Self {
        Arg::Ref(r)
    }
}

impl<T> From<&ObjectRef<T>> for Arg<T> {
    fn from(r: &ObjectRef<T>) -> Self {
        Arg::Ref(r.clone())
    }
}
