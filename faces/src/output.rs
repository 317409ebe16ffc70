//! The run's files: `average.json`, `encodings.jsonl` and `encodings.npy`.

use crate::aggregate::{Aggregate, DIMS};
use crate::job::{FaceJob, Status};
use crate::settings::Settings;
use serde_json::json;
use std::io::{BufWriter, Write};
use std::path::Path;

/// One image's line in `encodings.jsonl`.
pub fn job_record(job: &FaceJob) -> serde_json::Value {
    let (status, reason) = match &job.status {
        Status::Active => ("ok", None),
        Status::NoFace => ("no_face", None),
        Status::Skipped(r) => ("skipped", Some(r.as_str())),
        Status::Failed(r) => ("error", Some(r.as_str())),
    };
    let mut v = json!({
        "path": job.path,
        "status": status,
        "boxes": job.faces.iter().map(|f| [f.bbox.top, f.bbox.right, f.bbox.bottom, f.bbox.left]).collect::<Vec<_>>(),
        "encodings": job.faces.iter().map(|f| &f.encoding).collect::<Vec<_>>(),
        "node": job.node,
    });
    if let Some(r) = reason {
        v["error"] = json!(r);
    }
    v
}

/// The contents of `average.json`.
pub fn average_record(agg: &Aggregate, settings: &Settings, seconds: f64) -> serde_json::Value {
    json!({
        "average": agg.mean(),
        "face_count": agg.faces,
        "image_count": agg.images,
        "images_with_faces": agg.images_with_faces,
        "images_without_faces": agg.no_face,
        "skipped_images": agg.skipped,
        "failed_images": agg.failed,
        "settings": {
            "detector": settings.detector,
            "number_of_times_to_upsample": settings.upsample,
            "landmarks": settings.landmarks,
            "num_jitters": settings.jitters,
        },
        "seconds": seconds,
    })
}

/// Writes the three files into `dir` (created if missing).
pub fn write_all(
    dir: &Path,
    jobs: &[FaceJob],
    agg: &Aggregate,
    settings: &Settings,
    seconds: f64,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let avg = serde_json::to_string_pretty(&average_record(agg, settings, seconds))?;
    std::fs::write(dir.join("average.json"), avg + "\n")?;

    let mut lines = BufWriter::new(std::fs::File::create(dir.join("encodings.jsonl"))?);
    for job in jobs {
        serde_json::to_writer(&mut lines, &job_record(job))?;
        lines.write_all(b"\n")?;
    }
    lines.flush()?;

    let rows: Vec<f64> = jobs
        .iter()
        .flat_map(|j| j.faces.iter())
        .filter(|f| f.encoding.len() == DIMS)
        .flat_map(|f| f.encoding.iter().copied())
        .collect();
    let array = ndarray::Array2::from_shape_vec((rows.len() / DIMS, DIMS), rows)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    ndarray_npy::write_npy(dir.join("encodings.npy"), &array).map_err(std::io::Error::other)?;
    Ok(())
}
