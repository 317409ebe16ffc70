//! The built-in handlers, one job each: read → decode → detect → landmarks → encode.
//! Each is configured by the run's [`Settings`] and registered under its name.

use crate::chain::{Handler, Stop};
use crate::decode::decode_rgb;
use crate::dlib_shim;
use crate::job::{Face, FaceBox, FaceJob};
use crate::models;
use crate::settings::{DetectorKind, Settings};
use dlib_face_recognition::{
    FaceDetectorTrait, FaceEncoderTrait, ImageMatrix, LandmarkPredictorTrait, Rectangle,
};
use serde::Deserialize;

/// Reads the input's bytes (a local file or an `s3://` object): regular files only,
/// up to `max_file_bytes`, within `read_timeout_secs` ([`crate::inputs::read_input`]).
/// A job with a [`FaceJob::listed`] stamp is handed back unread, not failed, if the
/// input here cannot be read or is another one.
#[derive(Deserialize)]
pub struct Read {
    #[serde(flatten)]
    settings: Settings,
}

/// Decodes the bytes to RGB pixels as PIL would ([`crate::decode`]).
#[derive(Deserialize)]
pub struct Decode {
    #[serde(flatten)]
    settings: Settings,
}

/// Finds faces: HOG or CNN, upsampled as face_recognition does, boxes trimmed to the
/// image. Stops the image if there is none.
#[derive(Deserialize)]
pub struct Detect {
    #[serde(flatten)]
    settings: Settings,
}

/// The CNN fallback: on an image where the detector before it (HOG) found no face,
/// runs dlib's CNN (MMOD) detector, upsampled the same way; stops the image if that
/// finds none either. Inserted after `detect` by `--fallback cnn`
/// ([`crate::Chain::standard`]); `detect` then passes on faceless images.
#[derive(Deserialize)]
pub struct CnnFallback {
    #[serde(flatten)]
    settings: Settings,
}

/// Predicts each face's 5 or 68 landmark points.
#[derive(Deserialize)]
pub struct Landmarks {
    #[serde(flatten)]
    settings: Settings,
}

/// Computes each face's 128-D encoding, then lets the pixels go.
#[derive(Deserialize)]
pub struct Encode {
    #[serde(flatten)]
    settings: Settings,
}

crate::register_handler!("read", Read);
crate::register_handler!("decode", Decode);
crate::register_handler!("detect", Detect);
crate::register_handler!("cnn_fallback", CnnFallback);
crate::register_handler!("landmarks", Landmarks);
crate::register_handler!("encode", Encode);

/// The job's pixels as a dlib matrix, after checking the buffer holds width*height*3
/// bytes (ImageMatrix::new reads exactly that many).
fn image_matrix(job: &FaceJob) -> Result<ImageMatrix, Stop> {
    let image = job.image.as_ref().ok_or_else(|| {
        Stop::Failed("no decoded image reached this stage (is decode before it?)".into())
    })?;
    let want = image.width as usize * image.height as usize * 3;
    if image.data.len() != want {
        return Err(Stop::Failed(format!(
            "image buffer holds {} bytes, {}x{} RGB needs {want}",
            image.data.len(),
            image.width,
            image.height
        )));
    }
    // SAFETY: `data` holds exactly width*height*3 bytes (checked above), which is what
    // ImageMatrix::new reads; it copies them into a new dlib matrix.
    Ok(unsafe {
        ImageMatrix::new(
            image.width as usize,
            image.height as usize,
            image.data.as_ptr(),
        )
    })
}

/// Where this node keeps the model files for these settings.
fn model_dir(settings: &Settings) -> std::path::PathBuf {
    models::models_dir(settings.models_dir.as_deref())
}

fn to_rect(b: &FaceBox) -> Rectangle {
    Rectangle {
        left: b.left as _,
        top: b.top as _,
        right: b.right as _,
        bottom: b.bottom as _,
    }
}

/// dlib's coordinates are C `long`s: 64-bit here, 32-bit on some targets.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn long(v: std::os::raw::c_long) -> i64 {
    i64::from(v)
}

fn failed(e: impl std::fmt::Display) -> Stop {
    Stop::Failed(e.to_string())
}

impl Handler for Read {
    fn handle(&self, job: &mut FaceJob) -> Result<(), Stop> {
        let read = crate::inputs::read_input(
            &job.path,
            self.settings.max_file_bytes,
            std::time::Duration::from_secs(self.settings.read_timeout_secs),
        );
        job.bytes = match (job.listed, read) {
            (None, read) => read.map_err(failed)?.0,
            (Some(_), Err(e)) => return Err(Stop::NotRead(e.to_string())),
            (Some(listed), Ok((_, found))) if found != listed => {
                return Err(Stop::NotRead(format!(
                    "another file: {} bytes modified at {} ns, where the driver listed {} bytes modified at {} ns",
                    found.size, found.mtime_ns, listed.size, listed.mtime_ns
                )))
            }
            (Some(_), Ok((bytes, _))) => bytes,
        };
        Ok(())
    }
}

impl Handler for Decode {
    fn handle(&self, job: &mut FaceJob) -> Result<(), Stop> {
        let image = decode_rgb(&job.bytes, self.settings.max_pixels).map_err(failed)?;
        job.bytes = Vec::new();
        job.image = Some(image);
        Ok(())
    }
}

impl Handler for Detect {
    fn handle(&self, job: &mut FaceJob) -> Result<(), Stop> {
        let faces = detect(job, &self.settings, self.settings.detector)?;
        if faces.is_empty() && !self.settings.fallback_cnn {
            return Err(Stop::NoFace);
        }
        job.faces = faces;
        Ok(())
    }
}

impl Handler for CnnFallback {
    fn handle(&self, job: &mut FaceJob) -> Result<(), Stop> {
        if !job.faces.is_empty() {
            return Ok(());
        }
        let faces = detect(job, &self.settings, DetectorKind::Cnn)?;
        if faces.is_empty() {
            return Err(Stop::NoFace);
        }
        job.faces = faces;
        Ok(())
    }
}

/// The faces `detector` finds in the job's image, as face_recognition's
/// `face_locations` would return them.
fn detect(job: &FaceJob, settings: &Settings, detector: DetectorKind) -> Result<Vec<Face>, Stop> {
    let original = image_matrix(job)?;
    let levels = settings.upsample;
    // As dlib's Python binding: detect on the upsampled image, map boxes back.
    let upsampled;
    let searched = if levels > 0 {
        upsampled = dlib_shim::pyramid_up(&original, levels);
        &upsampled
    } else {
        &original
    };
    let rects: Vec<Rectangle> = match detector {
        DetectorKind::Hog => models::hog_detector().face_locations(searched),
        DetectorKind::Cnn => models::cnn_detector(&model_dir(settings))
            .map_err(failed)?
            .face_locations(searched)
            .to_vec(),
    };
    let (w, h) = job
        .image
        .as_ref()
        .map_or((0, 0), |i| (i64::from(i.width), i64::from(i.height)));
    let faces: Vec<Face> = rects
        .into_iter()
        .map(|r| {
            if levels > 0 {
                dlib_shim::rect_down(r, levels)
            } else {
                r
            }
        })
        .map(|r| Face {
            // face_recognition's _trim_css_to_bounds.
            bbox: FaceBox {
                top: long(r.top).max(0),
                right: long(r.right).min(w),
                bottom: long(r.bottom).min(h),
                left: long(r.left).max(0),
            },
            landmarks: Vec::new(),
            encoding: Vec::new(),
            detector: settings.fallback_cnn.then_some(detector),
        })
        .collect();
    Ok(faces)
}

impl Handler for Landmarks {
    fn handle(&self, job: &mut FaceJob) -> Result<(), Stop> {
        let mat = image_matrix(job)?;
        let file = models::landmarks_file(self.settings.landmarks);
        let predictor =
            models::landmark_predictor(&model_dir(&self.settings), file).map_err(failed)?;
        let points: Vec<Vec<[i64; 2]>> = job
            .faces
            .iter()
            .map(|f| {
                let shape = predictor.face_landmarks(&mat, &to_rect(&f.bbox));
                shape.iter().map(|p| [long(p.x()), long(p.y())]).collect()
            })
            .collect();
        for (face, pts) in job.faces.iter_mut().zip(points) {
            face.landmarks = pts;
        }
        Ok(())
    }
}

impl Handler for Encode {
    fn handle(&self, job: &mut FaceJob) -> Result<(), Stop> {
        let mat = image_matrix(job)?;
        let net = models::encoder(&model_dir(&self.settings)).map_err(failed)?;
        let mut encodings = Vec::with_capacity(job.faces.len());
        for face in &job.faces {
            if face.landmarks.is_empty() {
                return Err(Stop::Failed(
                    "no landmarks reached the encode stage (is landmarks before it?)".into(),
                ));
            }
            // One face at a time, as face_recognition calls compute_face_descriptor.
            let shape = dlib_shim::landmarks_from_points(to_rect(&face.bbox), &face.landmarks);
            let out =
                net.get_face_encodings(&mat, std::slice::from_ref(&shape), self.settings.jitters);
            let encoding = out
                .first()
                .ok_or_else(|| Stop::Failed("encoder returned no encoding".into()))?;
            encodings.push(encoding.as_ref().to_vec());
        }
        for (face, e) in job.faces.iter_mut().zip(encodings) {
            face.encoding = e;
        }
        job.image = None;
        Ok(())
    }
}
