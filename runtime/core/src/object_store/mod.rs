//! The object store, below both the node and the transfer code (Ray's plasma store
//! and object manager buffers, kept apart from the raylet in the same way):
//!
//! - [`store`]: a node's values in memory and spilled to disk, with the memory cap,
//!   reference counts and free-segment reuse;
//! - [`shm`]: the shared-memory segments (tmpfs files) values live in, which a node's
//!   workers map instead of receiving copies;
//! - [`memcopy`]: the parallel copy that fills a large segment.
//!
//! Invariant: this module knows object ids and bytes, nothing else: no messages, no
//! connections, no tasks. Everything that moves or serves objects builds on it.

pub mod memcopy;
pub mod shm;
pub mod store;

pub use store::{ObjectStore, StoreConfig, StoreError, FREE_SEGMENT_IDLE};
