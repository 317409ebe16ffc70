//! rayish: a Ray-compatible distributed task runtime.
//!
//! ```no_run
//! #[rayish::remote]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), rayish::Error> {
//!     rayish::init(rayish::Config::default())?; // first thing: workers divert here
//!     let refs: Vec<_> = (0..4).map(square::remote).collect();
//!     assert_eq!(rayish::get_all(&refs)?, vec![0, 1, 4, 9]);
//!     Ok(())
//! }
//! ```
//!
//! See ARCHITECTURE.md at the repository root for the map of the modules.

#![warn(missing_docs)]

mod api;
pub mod autoscaler;
pub mod binaries;
pub mod core_worker;
pub mod head;
pub mod ids;
pub mod launch;
pub mod launcher;
pub mod node;
pub mod object_store;
pub mod protocol;
pub mod registry;
pub mod resources;
pub mod server;
pub mod session;
pub mod transfer;
pub mod transport;

/// README.md's Rust snippets, compiled and run as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeSnippets;

#[doc(hidden)]
pub use api::__private;
pub use api::{
    current_node_id, get, get_actor, get_all, get_timeout, init, kill, put, serve_if_worker,
    shutdown, wait, ActorClass, ActorHandle, ActorOptions, Arg, Blob, Config, Error, ObjectRef,
    Result, TaskOptions,
};
pub use ids::{ActorId, ObjectId};
pub use protocol::TaskError;
pub use rayish_macros::{actor, remote};
