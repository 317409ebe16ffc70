//! The runtime under rayish's user API: the head (Ray's GCS), nodes (raylets) and
//! their workers, the core worker inside every driver and worker, the object store,
//! the wire protocol and the QUIC transport.
//!
//! **Internal.** This crate is shared by the `rayish` library, the `rayish` command
//! (`rayish-cli`) and the launcher (`rayish-launcher`); it has no stable API. Programs
//! use the `rayish` crate. ARCHITECTURE.md at the repository root has the map of its
//! modules, with the layers they may use.

#![warn(missing_docs)]

pub mod binaries;
pub mod core_worker;
pub mod dashboard;
pub mod head;
pub mod ids;
pub mod jobs;
pub mod launch;
pub mod metrics;
pub mod node;
pub mod object_store;
pub mod protocol;
pub mod resources;
pub mod server;
pub mod session;
pub mod storage;
pub mod transfer;
pub mod transport;
