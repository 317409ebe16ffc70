//! The run's files: `average.json`, `encodings.jsonl` and `encodings.npy`.

use crate::aggregate::{Aggregate, DIMS};
use crate::job::{FaceJob, Status};
use crate::journal::sync_dir;
use crate::settings::Settings;
use serde_json::json;
use std::io::Write;
use std::path::Path;

/// A status as `encodings.jsonl` names it (`ok`, `no_face`, `skipped`, `error`), and
/// its reason.
pub fn status_name(status: &Status) -> (&'static str, Option<&str>) {
    match status {
        Status::Active => ("ok", None),
        Status::NoFace => ("no_face", None),
        Status::Skipped(r) => ("skipped", Some(r.as_str())),
        // NotRead never reaches the output (the driver reads such an image itself).
        Status::Failed(r) | Status::NotRead(r) => ("error", Some(r.as_str())),
    }
}

/// One image's line in `encodings.jsonl`.
pub fn job_record(job: &FaceJob) -> serde_json::Value {
    let (status, reason) = status_name(&job.status);
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
    if job.faces.iter().any(|f| f.detector.is_some()) {
        v["detectors"] = json!(job.faces.iter().map(|f| f.detector).collect::<Vec<_>>());
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
        "settings": settings.output_record(),
        "seconds": seconds,
    })
}

/// The final files, in the order they are renamed into place.
pub const FILES: [&str; 3] = ["encodings.jsonl", "encodings.npy", "average.json"];

/// Lists the files being renamed into place while a commit is under way.
const COMMIT: &str = ".commit";

fn staged(name: &str) -> String {
    format!(".{name}.new")
}

/// Writes the three files into `dir` (created if missing) so that the directory
/// holds either the previous complete output or the new one, never a mix:
///
/// 1. each file is written in full to `.NAME.new` and fsync'd (a full disk fails
///    here, the staged files are removed, and the previous output is untouched);
/// 2. `.commit` names them and is fsync'd with the directory;
/// 3. each is renamed over its final name, the directory fsync'd, `.commit` removed.
///
/// A crash during step 3 leaves `.commit`: [`recover`] (run before anything else
/// touches `dir`) finishes the renames, so the next run sees the new output whole.
pub fn write_all(
    dir: &Path,
    jobs: &[FaceJob],
    agg: &Aggregate,
    settings: &Settings,
    seconds: f64,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    recover(dir)?;
    if let Err(e) = stage_all(dir, jobs, agg, settings, seconds) {
        remove_staged(dir);
        return Err(e);
    }
    write_synced(&dir.join(COMMIT), FILES.join("\n").as_bytes())?;
    sync_dir(dir)?;
    recover(dir)
}

fn stage_all(
    dir: &Path,
    jobs: &[FaceJob],
    agg: &Aggregate,
    settings: &Settings,
    seconds: f64,
) -> std::io::Result<()> {
    let mut lines = Vec::new();
    for job in jobs {
        serde_json::to_writer(&mut lines, &job_record(job))?;
        lines.push(b'\n');
    }
    write_synced(&dir.join(staged("encodings.jsonl")), &lines)?;

    let rows: Vec<f64> = jobs
        .iter()
        .flat_map(|j| j.faces.iter())
        .filter(|f| f.encoding.len() == DIMS)
        .flat_map(|f| f.encoding.iter().copied())
        .collect();
    let array = ndarray::Array2::from_shape_vec((rows.len() / DIMS, DIMS), rows)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut npy = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(&array, &mut npy).map_err(std::io::Error::other)?;
    write_synced(&dir.join(staged("encodings.npy")), &npy)?;

    let avg = serde_json::to_string_pretty(&average_record(agg, settings, seconds))?;
    write_synced(&dir.join(staged("average.json")), (avg + "\n").as_bytes())
}

/// Finishes a commit a crash interrupted (renames what `.commit` lists that is still
/// staged), or drops staged files no commit names.
pub fn recover(dir: &Path) -> std::io::Result<()> {
    let commit = dir.join(COMMIT);
    match std::fs::read_to_string(&commit) {
        Ok(_) => {
            for name in FILES {
                match std::fs::rename(dir.join(staged(name)), dir.join(name)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // renamed already
                    Err(e) => return Err(e),
                }
            }
            sync_dir(dir)?;
            std::fs::remove_file(&commit)?;
            sync_dir(dir)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            remove_staged(dir);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Removes whatever is staged (a failed or abandoned commit's files).
fn remove_staged(dir: &Path) {
    for name in FILES {
        let _ = std::fs::remove_file(dir.join(staged(name)));
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Bytes a run of `images` images may need in its output directory: its journal and
/// final files (a face's encoding takes ~2.5 KB as JSON, 1 KB in the .npy), with room
/// for several faces an image, and 1 MiB to spare.
pub fn space_needed(images: u64) -> u64 {
    images.saturating_mul(32 * 1024).saturating_add(1 << 20)
}

/// Bytes free to this user on the file system holding `dir`.
pub fn space_free(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path alive for the call; `st` is written by
    // statvfs before it is read, and only read when the call succeeded.
    let st = unsafe {
        if libc::statvfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        st.assume_init()
    };
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The settings recorded in `dir/average.json`, if a previous run left one.
pub fn previous_settings(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("average.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("settings").cloned()
}
