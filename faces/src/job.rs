//! The unit of work that flows down the chain: one image and what is known of it so far.

use serde::{Deserialize, Serialize};

/// 8-bit RGB pixels, row-major, 3 bytes a pixel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RgbPixels {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A face box as face_recognition returns it: (top, right, bottom, left), trimmed to
/// the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaceBox {
    /// First row.
    pub top: i64,
    /// Last column (dlib's inclusive right edge, trimmed to the width).
    pub right: i64,
    /// Last row (trimmed to the height).
    pub bottom: i64,
    /// First column.
    pub left: i64,
}

/// One face found in an image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Face {
    /// Where it is.
    pub bbox: FaceBox,
    /// Landmark points (x, y): 5 or 68 of them; empty until the landmarks stage.
    pub landmarks: Vec<[i64; 2]>,
    /// The 128-D encoding (dlib's float32 values widened to f64); empty until encoded.
    pub encoding: Vec<f64>,
    /// Which detector found it, recorded only when a fallback detector is configured
    /// (so that the default output stays face_recognition's).
    #[serde(default)]
    pub detector: Option<crate::settings::DetectorKind>,
}

/// Where an image stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Status {
    /// Still moving down the chain (or done with faces, if the chain is complete).
    Active,
    /// Stopped: no face was found.
    NoFace,
    /// Stopped by a handler that chose to skip it (a filter), with its reason.
    Skipped(String),
    /// Stopped by an error, with its reason.
    Failed(String),
    /// Handed back unread by a node that could not read the input as the driver
    /// listed it (see [`FaceJob::listed`]), with the reason: the driver reads it and
    /// runs it again. Never an image's final status.
    NotRead(String),
}

impl Status {
    /// Whether this is a failure of the machinery rather than of the image (its task
    /// died, its result was lost, its read timed out): another run may succeed, so a
    /// journal does not keep it.
    pub fn is_transient_failure(&self) -> bool {
        match self {
            Status::Failed(reason) => TRANSIENT_FAILURES.iter().any(|p| reason.starts_with(p)),
            _ => false,
        }
    }
}

/// How the reasons of transient failures begin.
pub const TRANSIENT_FAILURES: [&str; 3] =
    ["task failed: ", "lost: ", crate::inputs::READ_TIMED_OUT];

/// One image on its way down the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceJob {
    /// Position in the input list; outputs are written in this order.
    pub index: u64,
    /// The path as given (or listed).
    pub path: String,
    /// The file's bytes, between read and decode.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    /// Decoded pixels, between decode and encode.
    pub image: Option<RgbPixels>,
    /// Faces found so far.
    pub faces: Vec<Face>,
    /// Where it stands.
    pub status: Status,
    /// The node that ran its last stage (`None` in a plain loop).
    pub node: Option<String>,
    /// Set when a node reads the input in the driver's place without being sure to
    /// see it (automatic read-on-nodes): the input's stamp as the driver listed it. A
    /// node that cannot read the input, or finds another one there (another stamp),
    /// hands the image back unread ([`Status::NotRead`]) rather than failing it.
    #[serde(default)]
    pub listed: Option<crate::inputs::Stamp>,
}

impl FaceJob {
    /// A job that has not been read yet.
    pub fn new(index: u64, path: impl Into<String>) -> Self {
        FaceJob {
            index,
            path: path.into(),
            bytes: Vec::new(),
            image: None,
            faces: Vec::new(),
            status: Status::Active,
            node: None,
            listed: None,
        }
    }

    /// Whether a handler stopped it.
    pub fn is_stopped(&self) -> bool {
        self.status != Status::Active
    }
}
