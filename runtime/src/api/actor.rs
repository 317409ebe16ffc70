//! Actors in the user API: options, handles, `get_actor`, `kill`.
//!
//! `#[rayish::actor]` on an `impl` block makes its type an actor class: `Type::remote(..)`
//! creates one on the cluster and returns a typed handle (`TypeHandle`) whose methods
//! return `ObjectRef`s. The typed handle derefs to [`ActorHandle`], the untyped one.

use super::{context, Error, ObjectRef, Result};
use rayish_core::ids::ActorId;
use rayish_core::resources::{ResourceSet, CPU, GPU};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Options of an actor's creation (Ray's `.options(...)` on an actor class).
#[derive(Debug, Clone, Default)]
pub struct ActorOptions {
    pub(crate) resources: ResourceSet,
    pub(crate) max_restarts: i32,
    pub(crate) max_task_retries: i32,
    pub(crate) name: Option<String>,
    pub(crate) detached: bool,
}

impl ActorOptions {
    /// Defaults as Ray's: no resources held while alive, no restart, no call retry,
    /// no name, ends with its job.
    pub fn new() -> Self {
        Self::default()
    }

    /// CPUs the actor holds for its whole life (default 0, as Ray's actors).
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.resources.set(CPU, n);
        self
    }

    /// GPUs the actor holds for its whole life.
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.resources.set(GPU, n);
        self
    }

    /// A custom resource the actor holds for its whole life.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.set(name, amount);
        self
    }

    /// Times the actor is re-created (from its constructor, state lost) after its
    /// process or node dies; `-1` for no limit. Default 0.
    pub fn max_restarts(mut self, n: i32) -> Self {
        self.max_restarts = n;
        self
    }

    /// Times a call is sent again after the actor died while running or holding it;
    /// `-1` for no limit. Default 0: such calls fail with `ActorDied`.
    pub fn max_task_retries(mut self, n: i32) -> Self {
        self.max_task_retries = n;
        self
    }

    /// A cluster-wide name: any driver or task finds the actor with [`get_actor`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Outlive the job that creates it (Ray's `lifetime="detached"`): it ends only by
    /// [`ActorHandle::kill`] or with the cluster.
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }
}

/// An untyped handle to an actor. Cloning it, passing it to tasks or other actors,
/// or storing it inside objects all count as holding it; when no handle is left
/// anywhere in the cluster the actor ends (unless detached).
#[derive(Clone)]
pub struct ActorHandle {
    actor: ActorId,
    /// Every handle holds the actor's handle object.
    handle: ObjectRef<()>,
}

impl ActorHandle {
    pub(crate) fn new(actor: ActorId, handle: ObjectRef<()>) -> Self {
        Self { actor, handle }
    }

    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.actor
    }

    /// A reference that becomes ready once the actor has been created, or holds the
    /// `ActorDied` error if its creation failed (`get(handle.ready())` waits for it).
    pub fn ready(&self) -> ObjectRef<()> {
        self.handle.clone()
    }

    /// Ends the actor for good (Ray's `ray.kill(actor)`): its process is killed, calls
    /// not yet run fail with `ActorDied`, and it is not restarted.
    pub fn kill(&self) -> Result<()> {
        kill(self, true)
    }
}

impl fmt::Debug for ActorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorHandle({:?})", self.actor)
    }
}

impl Serialize for ActorHandle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The handle object travels as a reference, so borrowing keeps the actor alive.
        (self.actor, &self.handle).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ActorHandle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (actor, handle) = <(ActorId, ObjectRef<()>)>::deserialize(d)?;
        Ok(Self { actor, handle })
    }
}

/// What `#[actor]` implements for an actor class.
pub trait ActorClass {
    /// The registered name of the class (module path and type name).
    const NAME: &'static str;
    /// Its typed handle.
    type Handle: From<ActorHandle>;
}

/// The live actor registered under `name` by any driver of the cluster (Ray's
/// `ray.get_actor`); an error if there is none or it is of another class.
pub fn get_actor<A: ActorClass>(name: &str) -> Result<A::Handle> {
    let cw = context::current()?;
    let info = cw.get_actor(name)?;
    // The head counted us as holding the handle object before answering.
    let handle = ActorHandle::new(info.actor, ObjectRef::created(info.handle));
    if info.class != A::NAME {
        return Err(Error::Codec(format!(
            "actor {name:?} is a {}, not a {}",
            info.class,
            A::NAME
        )));
    }
    Ok(handle.into())
}

/// Ends an actor (Ray's `ray.kill`); with `no_restart` false it is re-created as
/// after a crash, if its `max_restarts` allows.
pub fn kill(handle: &ActorHandle, no_restart: bool) -> Result<()> {
    let cw = context::current()?;
    cw.kill_actor(handle.actor, no_restart)?;
    Ok(())
}
