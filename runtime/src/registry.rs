//! The registry of remote functions and actor classes, filled at link time by
//! `#[remote]` and `#[actor]`.
//!
//! Every binary built against rayish carries the table of its own remote functions, so
//! a worker started from the driver's binary can run any of them by name.

use bytes::Bytes;
use rayish_core::ids::ObjectId;
use std::collections::HashMap;
use std::sync::OnceLock;

/// A task's encoded return value and the references inside it.
pub struct Encoded {
    /// The encoded value.
    pub bytes: Vec<u8>,
    /// References it contains.
    pub nested: Vec<ObjectId>,
}

/// Why a remote function produced no value.
#[derive(Debug)]
pub enum InvokeError {
    /// Arguments or result could not be decoded or encoded.
    Codec(String),
    /// The function returned an error.
    Failed(String),
}

/// One remote function, as `#[remote]` registers it.
pub struct RemoteFunction {
    /// Its stable name: the module path and the function's name.
    pub name: &'static str,
    /// Decodes the arguments, calls the function, encodes the result.
    pub invoke: fn(&[Bytes]) -> Result<Encoded, InvokeError>,
}

inventory::collect!(RemoteFunction);

/// The value an actor's worker holds between calls.
pub type ActorInstance = Box<dyn std::any::Any + Send>;

/// An actor class's constructor, as `#[actor]` registers it.
pub struct ActorConstructor {
    /// Its stable name: the class's module path and name, then `::new`.
    pub name: &'static str,
    /// Decodes the arguments and builds the actor.
    pub construct: fn(&[Bytes]) -> Result<ActorInstance, InvokeError>,
}

inventory::collect!(ActorConstructor);

/// One method of an actor class, as `#[actor]` registers it.
pub struct ActorMethod {
    /// Its stable name: the class's module path and name, then `::method`.
    pub name: &'static str,
    /// Decodes the arguments, calls the method on the actor, encodes the result.
    pub invoke: fn(&mut ActorInstance, &[Bytes]) -> Result<Encoded, InvokeError>,
}

inventory::collect!(ActorMethod);

fn table() -> &'static HashMap<&'static str, &'static RemoteFunction> {
    static TABLE: OnceLock<HashMap<&'static str, &'static RemoteFunction>> = OnceLock::new();
    TABLE.get_or_init(|| {
        inventory::iter::<RemoteFunction>
            .into_iter()
            .map(|f| (f.name, f))
            .collect()
    })
}

/// The function registered under `name`.
pub fn lookup(name: &str) -> Option<&'static RemoteFunction> {
    table().get(name).copied()
}

/// The actor constructor registered under `name`.
pub fn lookup_constructor(name: &str) -> Option<&'static ActorConstructor> {
    inventory::iter::<ActorConstructor>
        .into_iter()
        .find(|c| c.name == name)
}

/// The actor method registered under `name`.
pub fn lookup_method(name: &str) -> Option<&'static ActorMethod> {
    static TABLE: OnceLock<HashMap<&'static str, &'static ActorMethod>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            inventory::iter::<ActorMethod>
                .into_iter()
                .map(|m| (m.name, m))
                .collect()
        })
        .get(name)
        .copied()
}
