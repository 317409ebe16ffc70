//! The face-encoding pipeline: a folder of photos in, dlib 128-D face encodings and
//! their average out, with exactly Python `face_recognition` 1.3.0's numbers.
//!
//! The work is a Chain of Responsibility ([`chain`]): read → decode → detect →
//! landmarks → encode, each stage a handler with one job that passes an image on or
//! stops it with a reason; the aggregate ([`aggregate`]) sums what comes out. The
//! chain runs in a plain loop or as rayish remote tasks ([`pipeline`]).
//!
//! Module map: [`settings`] (face_recognition's parameters), [`job`] (what flows),
//! [`chain`] (handlers, registry), [`stages`] (the built-in handlers), [`decode`]
//! (PIL-identical pixels), [`models`] (model files, per-process cache), `dlib_shim`
//! (the C++ calls the dlib crate lacks), [`blas`] (OpenBLAS threads and kernels),
//! [`hog`] (dlib's HOG detector with a wider filter loop), [`pipeline`] (runtime and plain runs),
//! [`inputs`] and [`output`] (files in and out), [`s3`] (inputs in an S3-compatible
//! object store), [`journal`] (finished images kept as
//! they come, for resuming).

pub mod aggregate;
pub mod blas;
pub mod chain;
pub mod decode;
mod dlib_shim;
pub mod hog;
pub mod inputs;
pub mod job;
pub mod journal;
pub mod models;
pub mod output;
pub mod pipeline;
pub mod s3;
pub mod settings;
pub mod stages;

pub use aggregate::Aggregate;
pub use chain::{Chain, Handler, Stage, Stop};
pub use job::{Face, FaceBox, FaceJob, RgbPixels, Status};
pub use pipeline::{run_on_runtime, run_plain, Progress, RunObserver, RunOptions, RunOutput};
pub use settings::{DetectorKind, LandmarkModel, Settings};

/// What `register_handler!` expands to. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
    pub use serde_json;
}
