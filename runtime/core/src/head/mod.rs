//! The head: membership, jobs, the object directory and the scheduler (Ray's GCS plus
//! its scheduling), as one state machine fed by the control streams of every peer.
//!
//! Architecture invariant: the head never runs user code and never decodes object
//! values; it moves bytes and ids only. It knows nothing of the user API.

pub mod clock;
pub mod scheduler;
mod service;
mod state;
pub mod view;

pub use service::{start_head, HeadHandle};
pub use state::{HeadEvent, HeadSettings, HeadState, DEFAULT_TASK_EVENTS};
