//! Job submission (Ray's `dashboard/modules/job`): jobs submitted through Ray's Jobs
//! API run as supervised processes on the head node, their records kept on disk.
//!
//! - [`info`]: the request, status and record, in Ray's shapes.
//! - [`table`]: the state machine (admission by entrypoint resources, status
//!   changes), apart from processes and disk.
//! - [`store`]: the records on disk, one directory per job.
//! - [`packages`]: uploaded working dirs, checked and unpacked.
//! - [`supervisor`]: one task per running job: its process group, its log, its end.
//!
//! [`JobManager`] ties them together for the dashboard's endpoints. A job's entrypoint
//! is a shell command run in the job's unpacked working dir with the cluster's
//! address and token in its environment, so a rayish driver there joins the cluster
//! with no flags. Nothing about a job depends on the client that submitted it: a
//! client that goes away changes nothing.

pub mod info;
pub mod packages;
pub mod store;
mod supervisor;
pub mod table;

use crate::head::HeadHandle;
use crate::resources::ResourceSet;
pub use info::{InvalidRequest, JobInfo, JobStatus, SubmitRequest};
use packages::{PackageError, PackageStore};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::JobStore;
use table::JobTable;
pub use table::{DeleteRefused, StopOutcome};
use thiserror::Error;
use tokio::sync::{oneshot, watch};

/// The environment variable naming the job an entrypoint runs for; a driver sends
/// it to the head, which lists the driver under that job.
pub const SUBMISSION_ID_ENV: &str = "RAYISH_JOB_SUBMISSION_ID";

/// How long a stopped job's processes get between SIGTERM and SIGKILL, unless
/// `RAY_JOB_STOP_WAIT_TIME_S` says otherwise (Ray's variable and default).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(3);

/// What the job manager needs of its head.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Where job records are kept: the head's storage.
    pub storage: crate::storage::Storage,
    /// Where jobs' working dirs live (`<storage>/jobs`).
    pub jobs_dir: PathBuf,
    /// Where uploaded packages live.
    pub packages_dir: PathBuf,
    /// Where each job's log goes (`job-driver-<id>.log`, Ray's name).
    pub logs_dir: PathBuf,
    /// What entrypoints may hold at once: the head node's resources.
    pub capacity: ResourceSet,
    /// The cluster's address, for entrypoints (`RAYISH_ADDRESS`).
    pub cluster_address: SocketAddr,
    /// The cluster's token, for entrypoints (`RAYISH_TOKEN`).
    pub token: String,
    /// The head node's id, where entrypoints run.
    pub node_id: String,
    /// The dashboard's URL (Ray's `driver_agent_http_address`).
    pub dashboard_url: String,
    /// SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    /// The largest working-dir package taken.
    pub max_package_bytes: usize,
    /// How long a package no job names is kept after its upload or its last
    /// existence check (Ray's `RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S`).
    pub package_grace: Duration,
}

/// Ray's default for `RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S`.
pub const DEFAULT_PACKAGE_GRACE: Duration = Duration::from_secs(600);

/// Why a submission failed.
#[derive(Debug, Error)]
pub enum SubmitError {
    /// The request is malformed (a 400).
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// The submission id is taken (a 400, as Ray answers).
    #[error("Job with submission_id {0} already exists. Please use a different submission_id.")]
    Duplicate(String),
    /// Its working dir names a package nobody uploaded (a 400).
    #[error("the working_dir package {0} was not uploaded to this cluster")]
    MissingPackage(String),
    /// The record could not be written (a 500).
    #[error("the job's record could not be written: {0}")]
    Store(std::io::Error),
}

/// The head's jobs: submit, list, stop, delete, and what their logs are.
#[derive(Clone)]
pub struct JobManager {
    inner: Arc<Inner>,
}

struct Inner {
    config: JobsConfig,
    /// The head, told when a job's driver process ends.
    head: HeadHandle,
    table: Mutex<JobTable>,
    store: JobStore,
    packages: PackageStore,
    /// The logs of jobs an earlier head started (in its session's directory).
    earlier_logs: Mutex<HashMap<String, PathBuf>>,
    /// Each running job's stop signal to its supervisor.
    stoppers: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// Bumped on every status change, for followers of a job's log.
    changes: watch::Sender<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Ray's generated submission ids: `raysubmit_` and 16 letters and digits.
fn new_submission_id() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    format!(
        "raysubmit_{}",
        Alphanumeric.sample_string(&mut rand::thread_rng(), 16)
    )
}

impl JobManager {
    /// Opens the job table in `config.jobs_dir`, takes back the jobs an earlier head
    /// left RUNNING (their entrypoints outlive a head that crashed: see
    /// [`supervisor::adopt`]), and starts what waits.
    pub fn start(config: JobsConfig, head: HeadHandle) -> std::io::Result<Self> {
        crate::session::ensure_private_dir(&config.logs_dir).map_err(std::io::Error::other)?;
        let (store, stored) = JobStore::open(config.storage.clone(), config.jobs_dir.clone())?;
        let packages = PackageStore::open(config.packages_dir.clone(), config.max_package_bytes)
            .map_err(std::io::Error::other)?;
        let mut jobs = Vec::with_capacity(stored.len());
        let mut earlier_logs = HashMap::new();
        for store::StoredJob { info: job, log } in stored {
            // A PENDING job's too: its entrypoint may have started (see
            // `earlier_entrypoints`); one this head starts logs afresh.
            earlier_logs.insert(job.submission_id.clone(), log);
            jobs.push(job);
        }
        let manager = Self {
            inner: Arc::new(Inner {
                config,
                head,
                table: Mutex::new(JobTable::with_jobs(jobs)),
                store,
                packages,
                earlier_logs: Mutex::new(earlier_logs),
                stoppers: Mutex::default(),
                changes: watch::Sender::new(0),
            }),
        };
        // Before admission: what they hold is not free for the waiting jobs.
        supervisor::adopt(&manager, manager.earlier_entrypoints());
        manager.admit();
        manager.collect_packages_periodically();
        Ok(manager)
    }

    /// The jobs whose entrypoints an earlier head started, with the leader of each
    /// that still runs: every RUNNING job, and a PENDING one whose entrypoint runs
    /// or recorded its end (the earlier head died before its RUNNING record was
    /// written; starting it again would run it twice).
    fn earlier_entrypoints(&self) -> Vec<(String, Option<u32>)> {
        let open: Vec<(String, JobStatus, Option<u32>, PathBuf)> = self
            .table()
            .all()
            .filter(|j| !j.status.is_terminal())
            .map(|j| {
                let id = j.submission_id.clone();
                let status_file = self.exit_status_path(&id);
                (id, j.status, j.entrypoint_pid, status_file)
            })
            .collect();
        let files: Vec<PathBuf> = open.iter().map(|(.., f)| f.clone()).collect();
        let leaders = supervisor::find_leaders(&files);
        open.into_iter()
            .filter_map(|(id, status, recorded, status_file)| {
                let leader = recorded
                    .filter(|&pid| supervisor::leads_entrypoint(pid, &status_file))
                    .or_else(|| leaders.get(&status_file).copied());
                let started =
                    status == JobStatus::Running || leader.is_some() || status_file.exists();
                started.then_some((id, leader))
            })
            .collect()
    }

    /// Removes, on a blocking thread, the packages no waiting or running job names
    /// and nobody stored or renewed within the grace period (see [`packages`]).
    /// The table stays locked meanwhile, so a submission cannot name a package
    /// between the check and its removal.
    fn collect_packages(&self) {
        let manager = self.clone();
        tokio::task::spawn_blocking(move || {
            let table = manager.table();
            let in_use: std::collections::HashSet<String> = table
                .all()
                .filter(|j| !j.status.is_terminal())
                .filter_map(|j| {
                    j.working_dir()
                        .map(|uri| info::package_name(uri).to_string())
                })
                .collect();
            let grace = manager.inner.config.package_grace;
            match manager.inner.packages.remove_unused(&in_use, grace) {
                Ok(removed) => {
                    for name in removed {
                        tracing::info!(package = %name, "removed a package no job uses");
                    }
                }
                Err(e) => tracing::warn!("unused packages could not be removed: {e}"),
            }
        });
    }

    /// Collects packages every half grace period (at least every second, at most
    /// every minute), for as long as the manager lives.
    fn collect_packages_periodically(&self) {
        let every = (self.inner.config.package_grace / 2)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let manager = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                let Some(inner) = manager.upgrade() else {
                    return;
                };
                JobManager { inner }.collect_packages();
            }
        });
    }

    fn table(&self) -> MutexGuard<'_, JobTable> {
        // A panic while holding the lock leaves a table still worth reading.
        self.inner
            .table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stoppers(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        self.inner
            .stoppers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The uploaded packages.
    pub fn packages(&self) -> &PackageStore {
        &self.inner.packages
    }

    /// Submits a job; its submission id.
    pub fn submit(&self, req: SubmitRequest) -> Result<String, SubmitError> {
        let id = req.submission_id.clone().unwrap_or_else(new_submission_id);
        let job = req.into_info(id.clone(), now_ms());
        {
            let mut table = self.table();
            // Checked under the table's lock, which package collection holds too:
            // once the job is in the table, its package stays.
            if let Some(uri) = job.working_dir() {
                match self.inner.packages.exists(info::package_name(uri)) {
                    Ok(true) => {}
                    Ok(false) => return Err(SubmitError::MissingPackage(uri.to_string())),
                    Err(e) => return Err(InvalidRequest::from(e).into()),
                }
            }
            if !table.submit(job.clone()) {
                return Err(SubmitError::Duplicate(id));
            }
            // Written under the lock, so a stop or delete right after cannot be
            // overtaken by this first record; answered once it is durable.
            self.inner.store.save(&job, &self.log_path(&id));
            if let Err(e) = self.inner.store.flush() {
                table.forget(&id);
                self.inner.store.remove(&id);
                return Err(SubmitError::Store(std::io::Error::other(e)));
            }
        }
        tracing::info!(submission_id = %id, entrypoint = %job.entrypoint, "job submitted");
        self.changed();
        self.admit();
        Ok(id)
    }

    /// Starts the waiting jobs that fit now.
    fn admit(&self) {
        let (started, failed) = {
            let mut table = self.table();
            let (started, failed) = table.admit(&self.inner.config.capacity, now_ms());
            let started: Vec<(String, ResourceSet)> = started
                .into_iter()
                .map(|id| {
                    let demand = table.admitted_demand(&id).cloned().unwrap_or_default();
                    (id, demand)
                })
                .collect();
            (started, failed)
        };
        for id in &failed {
            self.save_soon(id);
        }
        if !failed.is_empty() {
            self.changed();
        }
        for (id, demand) in started {
            self.inner.head.hold_for_entrypoint(id.clone(), demand);
            supervisor::spawn(self.clone(), id);
        }
    }

    /// Writes job `id`'s record as `table` has it (called under the table's lock,
    /// so records are written in the order their changes were made).
    fn persist(&self, table: &JobTable, id: &str) {
        if let Some(job) = table.get(id) {
            self.inner.store.save(job, &self.log_path(id));
        }
    }

    /// Queues job `id`'s record as the table has it now (the storage's writer
    /// commits it; nothing waits for the disk here).
    fn save_soon(&self, id: &str) {
        let table = self.table();
        self.persist(&table, id);
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|n| *n += 1);
    }

    /// A receiver that sees every status change of any job.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Job `id`'s record.
    pub fn get(&self, id: &str) -> Option<JobInfo> {
        self.table().get(id).cloned()
    }

    /// Every job's record.
    pub fn list(&self) -> Vec<JobInfo> {
        self.table().all().cloned().collect()
    }

    /// Asks job `id` to stop: a waiting job is STOPPED at once; a running one's
    /// process group gets SIGTERM, then SIGKILL after the grace period.
    pub fn stop(&self, id: &str) -> StopOutcome {
        let outcome = {
            let mut table = self.table();
            let outcome = table.stop(id, now_ms());
            if outcome == StopOutcome::StoppedWaiting {
                self.persist(&table, id);
            }
            outcome
        };
        match outcome {
            StopOutcome::StoppedWaiting => self.changed(),
            StopOutcome::Signal => {
                // No stopper yet: the job is between admission and its process;
                // its supervisor checks `stop_requested` once it has one.
                if let Some(stop) = self.stoppers().remove(id) {
                    let _ = stop.send(());
                }
            }
            _ => {}
        }
        outcome
    }

    /// Forgets ended job `id`: its record, working dir and log.
    pub fn delete(&self, id: &str) -> Result<(), DeleteRefused> {
        // Under the lock only what is quick: the directory is renamed away (so a
        // new job of the same id starts clean), then removed, however large.
        let detached = {
            let mut table = self.table();
            table.delete(id)?;
            let _ = std::fs::remove_file(self.log_path(id));
            self.inner.store.remove(id);
            self.inner
                .earlier_logs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            self.inner.store.detach(id)
        };
        match detached {
            Ok(Some(dir)) => {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(submission_id = %id, "{}: {e}", dir.display());
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(submission_id = %id, "the job's directory could not be removed: {e}")
            }
        }
        Ok(())
    }

    /// Job `id` starts under this head: its log is in this head's session.
    fn log_afresh(&self, id: &str) {
        self.inner
            .earlier_logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Where job `id`'s entrypoint writes its output.
    pub fn log_path(&self, id: &str) -> PathBuf {
        let earlier = self
            .inner
            .earlier_logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        match earlier {
            Some(log) => log,
            None => self
                .inner
                .config
                .logs_dir
                .join(format!("job-driver-{id}.log")),
        }
    }

    /// Where job `id`'s entrypoint leader records its exit status (beside its
    /// working dir, out of the entrypoint's sight).
    fn exit_status_path(&self, id: &str) -> PathBuf {
        self.inner.store.job_dir(id).join("exit_status")
    }

    /// Job `id`'s working dir on the head.
    pub fn working_dir(&self, id: &str) -> PathBuf {
        self.inner.store.job_dir(id).join("working_dir")
    }

    /// Stops every job that has not ended, and waits until their supervisors saw
    /// them end (at most the grace period and a little more): what a head that is
    /// stopped on purpose (`rayish stop`) does, as `ray stop` ends its jobs; then
    /// every queued record is made durable. A head that crashes leaves them running.
    pub async fn stop_all(&self) {
        let open: Vec<String> = self
            .list()
            .into_iter()
            .filter(|j| !j.status.is_terminal())
            .map(|j| j.submission_id)
            .collect();
        if !open.is_empty() {
            tracing::info!(jobs = open.len(), "stopping the head's jobs");
            for id in &open {
                self.stop(id);
            }
            let deadline =
                tokio::time::Instant::now() + self.inner.config.stop_grace + Duration::from_secs(2);
            let mut changes = self.watch();
            // Admitted, not only RUNNING: a job whose process is about to start is
            // stopped by its supervisor as soon as it has one, and must be waited for.
            while self.table().admitted() > 0 && tokio::time::Instant::now() < deadline {
                let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
            }
        }
        // Every change queued its record (`stop`, the supervisors' ends): the last
        // of them reach the disk before the head's process exits.
        if let Err(e) = self.inner.config.storage.flush().await {
            tracing::error!("the last job records could not be written: {e}");
        }
    }
}

impl From<PackageError> for InvalidRequest {
    fn from(e: PackageError) -> Self {
        InvalidRequest(e.to_string())
    }
}
