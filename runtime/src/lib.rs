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
//! This crate is the user API. The runtime under it (head, node, transport, object
//! store) is the internal crate `rayish-core`; the `rayish` command is `rayish-cli`,
//! and the cluster launcher and autoscaler are `rayish-launcher`, so a program that
//! uses rayish compiles none of the command-line or launcher dependencies. See
//! ARCHITECTURE.md at the repository root for the map of the crates and modules.

#![warn(missing_docs)]

mod api;
mod registry;

/// README.md's Rust snippets, compiled and run as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeSnippets;

#[doc(hidden)]
pub use api::__private;
pub use api::metrics;
pub use api::{
    current_node_id, get, get_actor, get_all, get_timeout, init, kill, put, serve_if_worker,
    shutdown, wait, ActorClass, ActorHandle, ActorOptions, Arg, Blob, Config, Error, ObjectRef,
    Result, TaskOptions,
};
pub use rayish_core::ids::{ActorId, ObjectId};
pub use rayish_core::protocol::TaskError;
pub use rayish_macros::{actor, remote};
