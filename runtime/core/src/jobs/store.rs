//! The job table on disk: one directory per job under the head's jobs directory
//! (`<session>/jobs/<submission_id>/`), holding its record (`job.json`) and its
//! unpacked working dir (`working_dir/`).
//!
//! Invariant: `job.json` is always a whole record: it is written to a temporary
//! file, synced, and renamed over the old one, so a crash at any moment leaves the
//! old record or the new one. Records change a few times per job (submitted,
//! started, ended), never per task, and are written on blocking threads: nothing on
//! any hot path waits for them.

use super::info::{check_submission_id, JobInfo};
use std::io::Write;
use std::path::PathBuf;

/// The record's file name in a job's directory.
const RECORD: &str = "job.json";

/// Where the job records live.
#[derive(Debug, Clone)]
pub struct JobStore {
    dir: PathBuf,
}

impl JobStore {
    /// Opens (or makes) the store in `dir` and reads the records in it. A record
    /// that cannot be read is skipped with a warning: one damaged file costs its
    /// own job, not the table.
    pub fn open(dir: PathBuf) -> std::io::Result<(Self, Vec<JobInfo>)> {
        crate::session::ensure_private_dir(&dir).map_err(std::io::Error::other)?;
        let mut jobs = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".deleted-") {
                // A deletion that a crash cut short.
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            }
            if check_submission_id(&name).is_err() || !entry.file_type()?.is_dir() {
                continue;
            }
            let path = entry.path().join(RECORD);
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<JobInfo>(&b).map_err(|e| e.to_string()))
            {
                Ok(info) if info.submission_id == name => jobs.push(info),
                Ok(_) => {
                    tracing::warn!("{}: the record names another job; skipped", path.display())
                }
                Err(e) => tracing::warn!("{}: unreadable job record, skipped: {e}", path.display()),
            }
        }
        Ok((Self { dir }, jobs))
    }

    /// Job `id`'s directory.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Writes `info`'s record (see the module's invariant).
    pub fn save(&self, info: &JobInfo) -> std::io::Result<()> {
        let dir = self.job_dir(&info.submission_id);
        crate::session::ensure_private_dir(&dir).map_err(std::io::Error::other)?;
        let bytes = serde_json::to_vec_pretty(info).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!(".{RECORD}.tmp"));
        let mut f = crate::session::create_private_file(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(RECORD))?;
        // The rename is durable once the directory is synced.
        std::fs::File::open(&dir)?.sync_all()
    }

    /// Renames job `id`'s directory (its record and working dir) out of the
    /// store's way, for the caller to remove; `None` if it has none. A name starting
    /// with a dot is never read as a job.
    pub fn detach(&self, id: &str) -> std::io::Result<Option<PathBuf>> {
        use rand::Rng;
        check_submission_id(id).map_err(|e| std::io::Error::other(e.0))?;
        let gone = self.dir.join(format!(
            ".deleted-{id}-{:016x}",
            rand::thread_rng().gen::<u64>()
        ));
        match std::fs::rename(self.job_dir(id), &gone) {
            Ok(()) => Ok(Some(gone)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::info::{JobStatus, SubmitRequest};

    #[test]
    fn records_survive_a_reopen_and_a_damaged_one_costs_only_itself() {
        let dir = std::env::temp_dir().join(format!("rayish-jobstore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, jobs) = JobStore::open(dir.clone()).expect("open");
        assert!(jobs.is_empty());
        let req = SubmitRequest::parse(br#"{"entrypoint": "echo hi"}"#).expect("valid");
        let mut a = req.clone().into_info("a".into(), 1);
        store.save(&a).expect("save");
        a.status = JobStatus::Succeeded;
        store.save(&a).expect("save again");
        store.save(&req.into_info("b".into(), 2)).expect("save");
        std::fs::write(dir.join("b").join(RECORD), b"{truncated").expect("damage");
        let (store, jobs) = JobStore::open(dir.clone()).expect("reopen");
        assert_eq!(jobs, vec![a]);
        let gone = store.detach("a").expect("detach").expect("a dir");
        assert!(!dir.join("a").exists());
        // Reopened before the caller removed it (a crash): not read back, removed.
        let (_, jobs) = JobStore::open(dir.clone()).expect("reopen");
        assert!(jobs.is_empty(), "a detached job is not read back: {jobs:?}");
        assert!(!gone.exists());
        assert!(store.detach("../etc").is_err());
        assert!(store.detach("a").expect("nothing").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
