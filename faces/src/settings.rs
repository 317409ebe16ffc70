//! What a run computes: face_recognition 1.3.0's parameters with its defaults.

use serde::{Deserialize, Serialize};

/// Which landmark model feeds the encoder (face_recognition's `model=` of
/// `face_encodings`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LandmarkModel {
    /// 5 points (`shape_predictor_5_face_landmarks.dat`), face_recognition's default.
    Small,
    /// 68 points (`shape_predictor_68_face_landmarks.dat`).
    Large,
}

/// Which face detector runs (face_recognition's `model=` of `face_locations`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DetectorKind {
    /// dlib's HOG frontal face detector, face_recognition's default.
    Hog,
    /// dlib's CNN (MMOD) detector, `mmod_human_face_detector.dat`.
    Cnn,
}

/// PIL's `Image.MAX_IMAGE_PIXELS * 2`: above it PIL refuses to open an image
/// (`DecompressionBombError`), and so does the decode stage, before allocating anything.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// Default of `--max-file-bytes`: larger than any photo a camera makes (a 200 MP
/// raw-ish TIFF is ~600 MB), small enough that a stray disk image is refused unread.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;

/// Default of `--read-timeout`, in seconds: a read of one photo from a healthy disk or
/// network mount takes well under a second.
pub const DEFAULT_READ_TIMEOUT_SECS: u64 = 60;

/// The settings of one run; plain data, so that it travels with every remote task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// `number_of_times_to_upsample` of `face_locations` (default 1).
    pub upsample: u32,
    /// HOG (default) or CNN.
    pub detector: DetectorKind,
    /// 5-point (default) or 68-point landmarks.
    pub landmarks: LandmarkModel,
    /// `num_jitters` of `face_encodings` (default 1).
    pub jitters: u32,
    /// Images with more pixels than this are refused from their header.
    pub max_pixels: u64,
    /// Where the model files are, if not the node's default (see [`crate::models`]).
    #[serde(default)]
    pub models_dir: Option<std::path::PathBuf>,
    /// Files larger than this are refused before they are read.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// A read not finished in this many seconds fails its image.
    #[serde(default = "default_read_timeout_secs")]
    pub read_timeout_secs: u64,
    /// Run dlib's CNN detector on the images where HOG found no face (`--fallback
    /// cnn`); each face then records which detector found it.
    #[serde(default)]
    pub fallback_cnn: bool,
}

fn default_max_file_bytes() -> u64 {
    DEFAULT_MAX_FILE_BYTES
}

fn default_read_timeout_secs() -> u64 {
    DEFAULT_READ_TIMEOUT_SECS
}

impl Settings {
    /// The settings as `average.json` records them: face_recognition's parameters,
    /// and the fallback detector when there is one.
    pub fn output_record(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "detector": self.detector,
            "number_of_times_to_upsample": self.upsample,
            "landmarks": self.landmarks,
            "num_jitters": self.jitters,
        });
        if self.fallback_cnn {
            v["fallback_detector"] = serde_json::json!(DetectorKind::Cnn);
        }
        v
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            upsample: 1,
            detector: DetectorKind::Hog,
            landmarks: LandmarkModel::Small,
            jitters: 1,
            max_pixels: DEFAULT_MAX_PIXELS,
            models_dir: None,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            read_timeout_secs: DEFAULT_READ_TIMEOUT_SECS,
            fallback_cnn: false,
        }
    }
}
