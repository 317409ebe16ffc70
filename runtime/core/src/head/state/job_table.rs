//! The job table: one entry per driver that connected, while its job lives.
//!
//! Invariant: a job is listed from its driver's handshake until its driver is gone
//! and it has no detached actor left; it accepts tasks and workers (`alive`) exactly
//! while its driver is connected or a detached actor of it lives. Ended jobs are
//! kept for the state API, the newest [`MAX_ENDED_JOBS`] only.

use crate::ids::{BinaryHash, JobId, PeerId};
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::time::Instant;

/// Ended jobs the head keeps listing (as it keeps dead nodes).
const MAX_ENDED_JOBS: usize = 1000;

/// What the state API shows of a job.
#[derive(Debug, Clone)]
pub(super) struct JobInfo {
    /// The job.
    pub(super) id: JobId,
    /// Its driver program's name.
    pub(super) name: String,
    /// Its driver's process id.
    pub(super) driver_pid: u32,
    /// The submitted job its driver runs for, if it does.
    pub(super) submission_id: Option<String>,
    /// When its driver connected.
    pub(super) started: Instant,
    /// When it ended, if it has.
    pub(super) ended: Option<Instant>,
    /// Why its driver went without saying goodbye (its connection was lost: it
    /// crashed, was killed, or its machine went away); `None` for a clean exit.
    pub(super) lost: Option<String>,
}

struct JobEntry {
    info: JobInfo,
    binary: BinaryHash,
    driver: PeerId,
    /// The job accepts tasks and workers: its driver is connected, or it has detached
    /// actors left.
    alive: bool,
    /// Its driver has exited (the job lives on only through detached actors).
    driver_gone: bool,
    /// Its driver asked for its workers' output.
    wants_output: bool,
}

/// Every job the head knows, by id.
#[derive(Default)]
pub(super) struct JobTable {
    jobs: HashMap<JobId, JobEntry>,
    /// Ended jobs, oldest first.
    ended: VecDeque<JobInfo>,
}

impl JobTable {
    /// A driver running `binary` connected on `driver`: its new job's id.
    pub(super) fn start(
        &mut self,
        binary: BinaryHash,
        driver: PeerId,
        name: &str,
        driver_pid: u32,
        submission_id: Option<String>,
        now: Instant,
    ) -> JobId {
        let id = JobId::random();
        let info = JobInfo {
            id,
            name: name.to_string(),
            driver_pid,
            submission_id,
            started: now,
            ended: None,
            lost: None,
        };
        self.insert_live(info, binary, driver);
        id
    }

    /// Lists `info`'s job as live, its driver connected on `driver`.
    fn insert_live(&mut self, info: JobInfo, binary: BinaryHash, driver: PeerId) {
        self.jobs.insert(
            info.id,
            JobEntry {
                info,
                binary,
                driver,
                alive: true,
                driver_gone: false,
                wants_output: false,
            },
        );
    }

    /// Whether process `driver_pid` may go on with `job`: only the process that ran
    /// it (when this head knows who did) — a driver never takes over another's job.
    pub(super) fn may_resume(&self, job: JobId, driver_pid: u32) -> Result<(), String> {
        match self.info(job) {
            Some(known) if known.driver_pid != driver_pid => Err(format!(
                "job {job} was run by process {}, not {driver_pid}",
                known.driver_pid
            )),
            _ => Ok(()),
        }
    }

    /// A driver running `binary` reconnected on `driver` to go on with `job`, which
    /// this head lists as ended (an earlier head of its storage knew it) or not at
    /// all, or as living on through its actors. The job is alive again under its
    /// old id, with its old start time when known; `Err` if its driver is still
    /// connected on another connection, or the job was another process's.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn resume(
        &mut self,
        job: JobId,
        binary: BinaryHash,
        driver: PeerId,
        name: &str,
        driver_pid: u32,
        submission_id: Option<String>,
        now: Instant,
    ) -> Result<(), String> {
        self.may_resume(job, driver_pid)?;
        if let Some(entry) = self.jobs.get_mut(&job) {
            if !entry.driver_gone {
                return Err(format!("job {job} still has its driver connected"));
            }
            entry.driver = driver;
            entry.driver_gone = false;
            entry.alive = true;
            entry.info.driver_pid = driver_pid;
            entry.info.lost = None;
            return Ok(());
        }
        let started = match self.ended.iter().position(|j| j.id == job) {
            Some(at) => self.ended.remove(at).map_or(now, |j| j.started),
            None => now,
        };
        let info = JobInfo {
            id: job,
            name: name.to_string(),
            driver_pid,
            submission_id,
            started,
            ended: None,
            lost: None,
        };
        self.insert_live(info, binary, driver);
        Ok(())
    }

    /// `job` lives on through an actor an earlier head of this storage knew (its
    /// driver gone, or not back yet): alive again, running `binary`, taken off the
    /// ended list.
    pub(super) fn revive_without_driver(&mut self, job: JobId, binary: BinaryHash, now: Instant) {
        if self.jobs.contains_key(&job) {
            return;
        }
        let info = match self.ended.iter().position(|j| j.id == job) {
            Some(at) => self.ended.remove(at),
            None => None,
        };
        let mut info = info.unwrap_or(JobInfo {
            id: job,
            name: String::new(),
            driver_pid: 0,
            submission_id: None,
            started: now,
            ended: None,
            lost: None,
        });
        info.ended = None;
        self.jobs.insert(
            job,
            JobEntry {
                info,
                binary,
                // No connection: its driver is gone.
                driver: PeerId(u128::MAX),
                alive: true,
                driver_gone: true,
                wants_output: false,
            },
        );
    }

    /// Whether `job` accepts tasks and workers.
    pub(super) fn is_alive(&self, job: JobId) -> bool {
        self.jobs.get(&job).is_some_and(|j| j.alive)
    }

    /// The connection of `job`'s driver (gone or not).
    pub(super) fn driver(&self, job: JobId) -> Option<PeerId> {
        self.jobs.get(&job).map(|j| j.driver)
    }

    /// The binary `job`'s workers run.
    pub(super) fn binary(&self, job: JobId) -> Option<&BinaryHash> {
        self.jobs.get(&job).map(|j| &j.binary)
    }

    /// Whether `job`'s driver has exited.
    pub(super) fn driver_gone(&self, job: JobId) -> bool {
        self.jobs.get(&job).is_some_and(|j| j.driver_gone)
    }

    /// `job`'s driver asks for its workers' output.
    pub(super) fn subscribe_output(&mut self, job: JobId) {
        if let Some(entry) = self.jobs.get_mut(&job) {
            entry.wants_output = true;
        }
    }

    /// Where `job`'s workers' output goes: its driver, if connected and it asked.
    pub(super) fn output_driver(&self, job: JobId) -> Option<PeerId> {
        self.jobs
            .get(&job)
            .filter(|j| j.wants_output && !j.driver_gone)
            .map(|j| j.driver)
    }

    /// `job`'s driver went without saying goodbye, for `reason`.
    pub(super) fn driver_lost(&mut self, job: JobId, reason: &str) {
        if let Some(entry) = self.jobs.get_mut(&job) {
            entry.info.lost = Some(reason.to_string());
        }
    }

    /// `job`'s driver exited; it stays alive only if `detached_actors` remain.
    pub(super) fn driver_exited(&mut self, job: JobId, detached_actors: bool) {
        if let Some(entry) = self.jobs.get_mut(&job) {
            entry.driver_gone = true;
            entry.alive = detached_actors;
        }
    }

    /// `job` is over: it leaves the table for the list of ended jobs. Returns the
    /// ended jobs that no longer fit in the list, forgotten.
    pub(super) fn remove(&mut self, job: JobId, now: Instant) -> Vec<JobId> {
        match self.jobs.remove(&job) {
            Some(entry) => {
                let mut info = entry.info;
                info.ended = Some(now);
                self.push_ended(info)
            }
            None => Vec::new(),
        }
    }

    /// Lists `info`, a job an earlier head of this storage knew, as ended. Returns
    /// the ended jobs that no longer fit in the list, forgotten.
    pub(super) fn restore_ended(&mut self, info: JobInfo) -> Vec<JobId> {
        if self.jobs.contains_key(&info.id) || self.ended.iter().any(|j| j.id == info.id) {
            return Vec::new();
        }
        self.push_ended(info)
    }

    fn push_ended(&mut self, info: JobInfo) -> Vec<JobId> {
        self.ended.push_back(info);
        let mut forgotten = Vec::new();
        while self.ended.len() > MAX_ENDED_JOBS {
            if let Some(old) = self.ended.pop_front() {
                forgotten.push(old.id);
            }
        }
        forgotten
    }

    /// What the state API shows of `job`, live or ended.
    pub(super) fn info(&self, job: JobId) -> Option<&JobInfo> {
        self.jobs
            .get(&job)
            .map(|j| &j.info)
            .or_else(|| self.ended.iter().rev().find(|j| j.id == job))
    }

    /// Every job listed, live or ended, with whether its driver is still connected.
    pub(super) fn infos(&self) -> impl Iterator<Item = (&JobInfo, bool)> {
        let live = self.jobs.values().map(|j| (&j.info, !j.driver_gone));
        live.chain(self.ended.iter().map(|i| (i, false)))
    }

    /// Jobs whose driver is still connected.
    pub(super) fn connected_drivers(&self) -> usize {
        self.jobs.values().filter(|j| !j.driver_gone).count()
    }
}
