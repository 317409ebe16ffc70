//! The job table as a state machine, apart from processes and disk: which jobs
//! exist, which wait for room, which hold the entrypoint resources, and every
//! status change (PENDING → RUNNING → SUCCEEDED / FAILED / STOPPED).
//!
//! Invariant: `held` is the sum of the entrypoint demands of the jobs admitted and
//! not yet ended, and never exceeds the capacity admission was given (save for
//! running jobs a restarted head took back, see [`JobTable::readmit`]); a job is in
//! `queue` exactly while it is PENDING and not admitted; a terminal job never
//! changes again.

use super::info::{error_type, JobInfo, JobStatus};
use crate::resources::ResourceSet;
use std::collections::{BTreeMap, VecDeque};

/// How a job's entrypoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

/// What a stop request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// No such job.
    NotFound,
    /// It had already ended: nothing to stop (Ray answers `stopped: false`).
    AlreadyEnded,
    /// It had not started: it is STOPPED now.
    StoppedWaiting,
    /// It runs (or is starting): its supervisor must end its process group.
    Signal,
}

/// Why a delete was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteRefused {
    /// No such job.
    NotFound,
    /// It has not ended (Ray deletes terminal jobs only).
    NotEnded(JobStatus),
}

/// Every submitted job, by submission id.
#[derive(Debug, Default)]
pub struct JobTable {
    jobs: BTreeMap<String, JobInfo>,
    /// PENDING jobs not yet admitted, oldest first.
    queue: VecDeque<String>,
    /// Jobs admitted and not ended, with what they hold.
    admitted: BTreeMap<String, ResourceSet>,
    /// The sum of `admitted`.
    held: ResourceSet,
    /// Running jobs a user asked to stop.
    stopping: std::collections::BTreeSet<String>,
}

impl JobTable {
    /// A table holding `jobs` as they were recorded (a restarted head's): the
    /// PENDING ones are queued again. Jobs that were RUNNING must have been settled
    /// by the caller (no supervisor of them is left).
    pub fn with_jobs(jobs: Vec<JobInfo>) -> Self {
        let mut table = Self::default();
        let mut jobs = jobs;
        jobs.sort_by_key(|j| j.start_time);
        for job in jobs {
            if job.status == JobStatus::Pending {
                table.queue.push_back(job.submission_id.clone());
            }
            table.jobs.insert(job.submission_id.clone(), job);
        }
        table
    }

    /// Adds a submitted job (PENDING); `false` if its id is taken.
    pub fn submit(&mut self, job: JobInfo) -> bool {
        if self.jobs.contains_key(&job.submission_id) {
            return false;
        }
        self.queue.push_back(job.submission_id.clone());
        self.jobs.insert(job.submission_id.clone(), job);
        true
    }

    /// One job's record.
    pub fn get(&self, id: &str) -> Option<&JobInfo> {
        self.jobs.get(id)
    }

    /// Every job's record, by submission id.
    pub fn all(&self) -> impl Iterator<Item = &JobInfo> {
        self.jobs.values()
    }

    /// Admits the waiting jobs whose entrypoint demand fits in `capacity` beside
    /// what the admitted ones hold, oldest first (a large job waiting does not hold
    /// back a small one that fits). A job whose demand can never fit in `capacity`
    /// fails now. Returns the admitted jobs' ids and the ids of the ones that failed.
    pub fn admit(&mut self, capacity: &ResourceSet, now_ms: u64) -> (Vec<String>, Vec<String>) {
        let mut started = Vec::new();
        let mut failed = Vec::new();
        let mut still_waiting = VecDeque::new();
        while let Some(id) = self.queue.pop_front() {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            let demand = job.entrypoint_demand();
            if !capacity.contains(&demand) {
                finish(
                    job,
                    JobStatus::Failed,
                    Some(error_type::UNSCHEDULABLE),
                    format!(
                        "the entrypoint asks for {demand}, more than the head node has \
                         ({capacity}); rayish runs entrypoints on the head node"
                    ),
                    now_ms,
                );
                failed.push(id);
            } else if ResourceSet::fits(capacity, &self.held, &demand) {
                self.held.add(&demand);
                self.admitted.insert(id.clone(), demand);
                started.push(id);
            } else {
                still_waiting.push_back(id);
            }
        }
        self.queue = still_waiting;
        (started, failed)
    }

    /// Job `id`, whose entrypoint an earlier head started (led by `pid`, if it still
    /// runs) and this head takes back, is RUNNING and holds its entrypoint demand
    /// again. It may be recorded PENDING: the earlier head died between starting
    /// the process and recording it. It already runs, so it is charged even if a
    /// smaller capacity was given this time. It runs on this head's `node` (the same
    /// machine: the node's id is new with each start). Returns what it holds, or
    /// `None` if it has ended or already holds.
    pub fn readmit(
        &mut self,
        id: &str,
        pid: Option<u32>,
        node: &str,
        agent: &str,
    ) -> Option<ResourceSet> {
        let job = self.jobs.get_mut(id)?;
        if job.status.is_terminal() || self.admitted.contains_key(id) {
            return None;
        }
        if job.status == JobStatus::Pending {
            self.queue.retain(|q| q != id);
            job.status = JobStatus::Running;
            job.message = Some("Job is currently running.".into());
        }
        if pid.is_some() {
            job.entrypoint_pid = pid;
        }
        job.driver_node_id = Some(node.to_string());
        job.driver_agent_http_address = Some(agent.to_string());
        let demand = job.entrypoint_demand();
        self.held.add(&demand);
        self.admitted.insert(id.to_string(), demand.clone());
        Some(demand)
    }

    /// `id`'s entrypoint started as process (group) `pid` on `node`.
    pub fn started(&mut self, id: &str, pid: u32, node: &str, agent: &str) -> bool {
        let Some(job) = self.jobs.get_mut(id) else {
            return false;
        };
        if job.status != JobStatus::Pending {
            return false;
        }
        job.status = JobStatus::Running;
        job.message = Some("Job is currently running.".into());
        job.entrypoint_pid = Some(pid);
        job.driver_node_id = Some(node.to_string());
        job.driver_agent_http_address = Some(agent.to_string());
        true
    }

    /// `id` failed without an exit to report (its working dir or its process could
    /// not be set up, or its entrypoint ended unseen while no head watched it):
    /// FAILED with `kind`.
    pub fn fail(&mut self, id: &str, kind: &'static str, why: String, now_ms: u64) {
        self.release(id);
        if let Some(job) = self.jobs.get_mut(id) {
            if !job.status.is_terminal() {
                finish(job, JobStatus::Failed, Some(kind), why, now_ms);
            }
        }
    }

    /// `id`'s entrypoint ended; `log_tail` is the end of its log, for the message
    /// of a failure.
    pub fn exited(&mut self, id: &str, exit: Exit, log_tail: &str, now_ms: u64) {
        self.release(id);
        let stopped = self.stopping.remove(id);
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        if job.status.is_terminal() {
            return;
        }
        job.entrypoint_pid = None;
        match exit {
            Exit::Code(code) => job.driver_exit_code = Some(code),
            // A shell's convention, which Ray reports too (the Popen return code
            // is negative; its CLI shows the signal).
            Exit::Signal(sig) => job.driver_exit_code = Some(128 + sig),
        }
        if stopped {
            finish(
                job,
                JobStatus::Stopped,
                None,
                "Job was intentionally stopped.".into(),
                now_ms,
            );
        } else if exit == Exit::Code(0) {
            finish(
                job,
                JobStatus::Succeeded,
                None,
                "Job finished successfully.".into(),
                now_ms,
            );
        } else {
            let how = match exit {
                Exit::Code(c) => format!("exit code {c}"),
                Exit::Signal(s) => format!("signal {s}"),
            };
            finish(
                job,
                JobStatus::Failed,
                Some(error_type::ENTRYPOINT_ERROR),
                format!(
                    "Job entrypoint command failed with {how}, last available logs (truncated \
                     to 20,000 chars):\n{log_tail}"
                ),
                now_ms,
            );
        }
    }

    /// A user asks to stop `id`.
    pub fn stop(&mut self, id: &str, now_ms: u64) -> StopOutcome {
        let Some(job) = self.jobs.get_mut(id) else {
            return StopOutcome::NotFound;
        };
        if job.status.is_terminal() {
            return StopOutcome::AlreadyEnded;
        }
        if job.status == JobStatus::Pending && !self.admitted.contains_key(id) {
            self.queue.retain(|q| q != id);
            finish(
                job,
                JobStatus::Stopped,
                None,
                "Job was intentionally stopped before it started.".into(),
                now_ms,
            );
            return StopOutcome::StoppedWaiting;
        }
        self.stopping.insert(id.to_string());
        StopOutcome::Signal
    }

    /// Whether a user asked to stop `id` (an admitted job checks before it starts).
    pub fn stop_requested(&self, id: &str) -> bool {
        self.stopping.contains(id)
    }

    /// Forgets an ended job.
    pub fn delete(&mut self, id: &str) -> Result<JobInfo, DeleteRefused> {
        match self.jobs.get(id) {
            None => Err(DeleteRefused::NotFound),
            Some(j) if !j.status.is_terminal() => Err(DeleteRefused::NotEnded(j.status)),
            Some(_) => self.jobs.remove(id).ok_or(DeleteRefused::NotFound),
        }
    }

    /// Drops a just-submitted job whose record could not be written.
    pub fn forget(&mut self, id: &str) {
        self.queue.retain(|q| q != id);
        self.release(id);
        self.jobs.remove(id);
    }

    /// What the admitted jobs hold.
    pub fn held(&self) -> &ResourceSet {
        &self.held
    }

    /// The number of jobs RUNNING now.
    pub fn running(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| j.status == JobStatus::Running)
            .count()
    }

    /// The number of jobs admitted and not ended: running, or about to (their
    /// supervisors have them).
    pub fn admitted(&self) -> usize {
        self.admitted.len()
    }

    /// What admitted job `id`'s entrypoint holds.
    pub fn admitted_demand(&self, id: &str) -> Option<&ResourceSet> {
        self.admitted.get(id)
    }

    fn release(&mut self, id: &str) {
        if let Some(demand) = self.admitted.remove(id) {
            self.held.subtract(&demand);
        }
    }
}

fn finish(job: &mut JobInfo, status: JobStatus, kind: Option<&str>, message: String, now_ms: u64) {
    job.status = status;
    job.error_type = kind.map(str::to_string);
    job.message = Some(message);
    job.end_time = Some(now_ms);
    job.entrypoint_pid = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::info::SubmitRequest;

    fn job(id: &str, cpus: Option<f64>) -> JobInfo {
        let mut req = SubmitRequest::parse(br#"{"entrypoint": "true"}"#).expect("valid");
        req.entrypoint_num_cpus = cpus;
        req.into_info(id.into(), 0)
    }

    fn cpus(n: f64) -> ResourceSet {
        ResourceSet::new().with("CPU", n)
    }

    #[test]
    fn jobs_wait_for_room_and_never_hold_more_than_the_capacity() {
        let mut t = JobTable::default();
        for i in 0..5 {
            assert!(t.submit(job(&format!("j{i}"), Some(1.0))));
        }
        assert!(!t.submit(job("j0", None)), "a duplicate id is refused");
        let (started, failed) = t.admit(&cpus(2.0), 1);
        assert_eq!(
            (started, failed.len()),
            (vec!["j0".to_string(), "j1".to_string()], 0)
        );
        // Admitted but not started yet: not RUNNING, but a supervisor has them.
        assert_eq!((t.running(), t.admitted()), (0, 2));
        assert_eq!(t.admit(&cpus(2.0), 1).0.len(), 0, "nothing more fits");
        assert!(t.started("j0", 10, "n", "http://h"));
        t.exited("j0", Exit::Code(0), "", 2);
        assert_eq!(t.get("j0").map(|j| j.status), Some(JobStatus::Succeeded));
        assert_eq!(t.admit(&cpus(2.0), 3).0, vec!["j2".to_string()]);
        assert_eq!(t.held().get("CPU"), 2.0);
    }

    #[test]
    fn a_small_job_passes_a_large_one_and_an_impossible_one_fails() {
        let mut t = JobTable::default();
        t.submit(job("big", Some(2.0)));
        t.submit(job("small", Some(1.0)));
        t.submit(job("never", Some(8.0)));
        t.submit(job("free", None));
        t.held = cpus(1.0);
        t.admitted.insert("other".into(), cpus(1.0));
        let (started, failed) = t.admit(&cpus(2.0), 1);
        assert_eq!(started, vec!["small".to_string(), "free".to_string()]);
        assert_eq!(failed, vec!["never".to_string()]);
        let never = t.get("never").expect("kept");
        assert_eq!(never.status, JobStatus::Failed);
        assert_eq!(never.error_type.as_deref(), Some(error_type::UNSCHEDULABLE));
        assert_eq!(t.queue, VecDeque::from(vec!["big".to_string()]));
    }

    #[test]
    fn stop_ends_a_waiting_job_at_once_and_marks_a_running_one() {
        let mut t = JobTable::default();
        t.submit(job("run", Some(1.0)));
        t.submit(job("wait", Some(1.0)));
        t.admit(&cpus(1.0), 0);
        assert_eq!(t.stop("wait", 1), StopOutcome::StoppedWaiting);
        assert_eq!(t.get("wait").map(|j| j.status), Some(JobStatus::Stopped));
        t.started("run", 7, "n", "a");
        assert_eq!(t.stop("run", 1), StopOutcome::Signal);
        assert_eq!(t.get("run").map(|j| j.status), Some(JobStatus::Running));
        // A signal ended it: STOPPED, not FAILED, because a user asked.
        t.exited("run", Exit::Signal(15), "", 2);
        let run = t.get("run").expect("kept");
        assert_eq!(
            (run.status, run.driver_exit_code),
            (JobStatus::Stopped, Some(143))
        );
        assert_eq!(t.stop("run", 3), StopOutcome::AlreadyEnded);
        assert_eq!(t.stop("nope", 3), StopOutcome::NotFound);
        assert!(t.held().is_empty() || t.held().get("CPU") == 0.0);
    }

    #[test]
    fn failures_keep_their_code_and_the_log_tail() {
        let mut t = JobTable::default();
        t.submit(job("f", None));
        t.admit(&cpus(1.0), 0);
        t.started("f", 1, "n", "a");
        assert_eq!(
            t.delete("f"),
            Err(DeleteRefused::NotEnded(JobStatus::Running)),
            "a running job cannot be deleted"
        );
        t.exited("f", Exit::Code(3), "boom", 4);
        let f = t.get("f").expect("kept");
        assert_eq!(
            (f.status, f.driver_exit_code, f.end_time),
            (JobStatus::Failed, Some(3), Some(4))
        );
        assert!(f
            .message
            .as_deref()
            .is_some_and(|m| m.contains("exit code 3") && m.contains("boom")));
        // A terminal job never changes again.
        t.exited("f", Exit::Code(0), "", 5);
        assert_eq!(t.get("f").map(|j| j.status), Some(JobStatus::Failed));
        assert!(t.delete("f").is_ok());
        assert_eq!(t.delete("f"), Err(DeleteRefused::NotFound));
    }

    #[test]
    fn a_restarted_table_queues_its_pending_jobs_again() {
        let mut done = job("done", None);
        done.status = JobStatus::Succeeded;
        let mut waiting = job("waiting", Some(1.0));
        waiting.start_time = Some(2);
        let t = JobTable::with_jobs(vec![waiting, done]);
        assert_eq!(t.queue, VecDeque::from(vec!["waiting".to_string()]));
        assert_eq!(t.all().count(), 2);
    }

    #[test]
    fn a_running_job_taken_back_holds_its_demand_once_and_frees_it_at_its_end() {
        let mut running = job("running", Some(2.0));
        running.status = JobStatus::Running;
        running.entrypoint_pid = Some(7);
        // Started, but the head died before its RUNNING record was written.
        let mut unrecorded = job("unrecorded", None);
        unrecorded.start_time = Some(2);
        let mut waiting = job("waiting", Some(1.0));
        waiting.start_time = Some(3);
        let mut t = JobTable::with_jobs(vec![running, unrecorded, waiting]);
        assert_eq!(t.readmit("running", None, "n2", "a2"), Some(cpus(2.0)));
        let taken = t.get("running").expect("listed");
        assert_eq!(
            (taken.driver_node_id.as_deref(), taken.entrypoint_pid),
            (Some("n2"), Some(7))
        );
        assert_eq!(t.readmit("running", None, "n2", "a2"), None, "held once");
        assert!(t.readmit("unrecorded", Some(9), "n2", "a2").is_some());
        let taken = t.get("unrecorded").expect("listed");
        assert_eq!(
            (taken.status, taken.entrypoint_pid),
            (JobStatus::Running, Some(9))
        );
        assert_eq!(t.queue, VecDeque::from(vec!["waiting".to_string()]));
        // It already runs: charged even past a capacity that is smaller now, and
        // the waiting job waits for it.
        assert_eq!(t.admit(&cpus(1.0), 1), (vec![], vec![]));
        assert_eq!(t.held(), &cpus(2.0));
        t.exited("running", Exit::Code(0), "", 2);
        assert_eq!(
            t.get("running").map(|j| j.status),
            Some(JobStatus::Succeeded)
        );
        assert_eq!(t.readmit("running", None, "n2", "a2"), None, "it ended");
        assert_eq!(t.held().get("CPU"), 0.0);
        assert_eq!(
            t.admit(&cpus(1.0), 3),
            (vec!["waiting".to_string()], vec![])
        );
    }
}
