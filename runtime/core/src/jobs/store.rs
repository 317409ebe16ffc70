//! The job table on disk: each job's record in the head's storage (its `jobs`
//! table, [`crate::storage`]), which a restarted head opens again, and a directory
//! per job under the head's jobs directory (`<storage>/jobs/<submission_id>/`)
//! holding its unpacked working dir.
//!
//! Invariant: a record is written whole or not at all (one storage transaction),
//! and records are written in the order of the changes they record. Records change
//! a few times per job (submitted, started, ended), never per task; a write only
//! queues it, so nothing on any hot path waits for the disk, and a submission is
//! answered only once its record is durable ([`JobStore::flush`]).

use super::info::{check_submission_id, JobInfo};
use crate::storage::{Storage, StorageError, JOBS_TABLE};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A job's stored record: Ray's record of it, and where its log is (a restarted
/// head runs in a new session directory, but an earlier job's log stays where it
/// was written).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    info: JobInfo,
    log: PathBuf,
}

/// A job as the store gives it back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredJob {
    /// Its record.
    pub info: JobInfo,
    /// Its log file.
    pub log: PathBuf,
}

/// Where the job records and working dirs live.
#[derive(Debug, Clone)]
pub struct JobStore {
    storage: Storage,
    dir: PathBuf,
}

impl JobStore {
    /// Opens the store: records in `storage`, working dirs under `dir` (made if
    /// missing). A record that cannot be read, or names another job, is skipped
    /// with a warning: one damaged record costs its own job, not the table.
    pub fn open(storage: Storage, dir: PathBuf) -> std::io::Result<(Self, Vec<StoredJob>)> {
        crate::session::ensure_private_dir(&dir).map_err(std::io::Error::other)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".deleted-") {
                // A deletion that a crash cut short.
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let records: Vec<(String, Record)> =
            storage.all(JOBS_TABLE).map_err(std::io::Error::other)?;
        let mut jobs = Vec::new();
        for (id, record) in records {
            if record.info.submission_id != id || check_submission_id(&id).is_err() {
                tracing::warn!(key = %id, "a stored job record names another job; skipped");
                continue;
            }
            jobs.push(StoredJob {
                info: record.info,
                log: record.log,
            });
        }
        Ok((Self { storage, dir }, jobs))
    }

    /// Job `id`'s directory.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Queues `info`'s record, with its log's path (see the module's invariant).
    pub fn save(&self, info: &JobInfo, log: &Path) {
        let record = Record {
            info: info.clone(),
            log: log.to_path_buf(),
        };
        self.storage.put(JOBS_TABLE, &info.submission_id, &record);
    }

    /// Queues the removal of job `id`'s record.
    pub fn remove(&self, id: &str) {
        self.storage.delete(JOBS_TABLE, id);
    }

    /// Waits (blocking the thread) until every record queued so far is durable.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.storage.flush_blocking()
    }

    /// Renames job `id`'s directory (its working dir) out of the store's way, for
    /// the caller to remove; `None` if it has none. A name starting with a dot is
    /// never read as a job.
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
        let root = std::env::temp_dir().join(format!("rayish-jobstore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (dir, db) = (root.join("jobs"), root.join("storage"));
        let log = Path::new("/logs/job-driver-a.log");
        {
            let storage = Storage::open(&db).expect("storage");
            let (store, jobs) = JobStore::open(storage.clone(), dir.clone()).expect("open");
            assert!(jobs.is_empty());
            let req = SubmitRequest::parse(br#"{"entrypoint": "echo hi"}"#).expect("valid");
            let mut a = req.clone().into_info("a".into(), 1);
            store.save(&a, log);
            a.status = JobStatus::Succeeded;
            store.save(&a, log);
            store.save(&req.clone().into_info("b".into(), 2), log);
            store.remove("b");
            // A record filed under another job's key is not that job.
            storage.put(
                JOBS_TABLE,
                "c",
                &Record {
                    info: a.clone(),
                    log: log.into(),
                },
            );
            storage.put(JOBS_TABLE, "d", &"damaged");
            store.flush().expect("flush");
        }
        let storage = Storage::open(&db).expect("storage");
        let (store, jobs) = JobStore::open(storage, dir.clone()).expect("reopen");
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!(
            (jobs[0].info.status, jobs[0].log.as_path()),
            (JobStatus::Succeeded, log)
        );
        std::fs::create_dir_all(store.job_dir("a")).expect("job dir");
        let gone = store.detach("a").expect("detach").expect("a dir");
        assert!(!dir.join("a").exists());
        // Reopened before the caller removed it (a crash): removed.
        drop(store);
        let storage = Storage::open(&root.join("storage2")).expect("storage");
        let (store, _) = JobStore::open(storage, dir.clone()).expect("reopen");
        assert!(!gone.exists());
        assert!(store.detach("../etc").is_err());
        assert!(store.detach("a").expect("nothing").is_none());
        let _ = std::fs::remove_dir_all(&root);
    }
}
