//! One task per admitted job: unpack its working dir, run its entrypoint in a new
//! process group with its output in the job's log, and record how it ended. A
//! stop ends the whole group: SIGTERM, then SIGKILL after the grace period (Ray's
//! `JobSupervisor` does the same with `start_new_session`). The group outlives a
//! head that crashes; the next head takes it back ([`adopt`]) and watches it
//! through its leader's status file instead of waiting for it as a child.
//!
//! Invariant: every admitted job reaches a terminal status exactly once, through
//! this task, and the task then admits what waits (its resources are free).

use super::info::error_type;
use super::table::Exit;
use super::{now_ms, JobManager, SUBMISSION_ID_ENV};
use crate::head::view::{StateQuery, StateRows};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use tokio::sync::oneshot;

/// How much of a failed job's log its message quotes (Ray's figure).
const FAILURE_LOG_TAIL: u64 = 20_000;

/// The entrypoint's process-group leader: a shell that runs the entrypoint, then
/// writes its exit status to the file named by `$2` (whole, by a rename) and exits
/// with it. A head that restarts while the entrypoint runs is no longer its parent
/// and cannot wait for it: the file tells it how the entrypoint ended. SIGTERM is
/// caught, not ignored, so a stop's signal reaches the entrypoint as before (a
/// caught signal is reset at exec, an ignored one is inherited) and the leader,
/// which waits for its foreground command before it runs a trap, still records it.
const LEADER_SCRIPT: &str = r#"trap : TERM; /bin/sh -c "$1"; code=$?; echo $code > "$2.part" && mv -f "$2.part" "$2"; exit $code"#;

/// The leader's `$0`, as `ps` shows it.
const LEADER_NAME: &str = "rayish-job-entrypoint";

/// How often a taken-back entrypoint is checked on.
const ADOPTED_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Starts `id`'s supervisor.
pub(super) fn spawn(manager: JobManager, id: String) {
    tokio::spawn(async move {
        let exit = supervise(&manager, &id).await;
        ended(manager, id, exit.map(Ok)).await;
    });
}

/// Takes back the jobs whose entrypoints an earlier head of this storage started
/// (each led by its pid, if it still runs): they hold their resources again, are
/// watched until they end (the leader's status file says how), and can be stopped
/// as before. One whose entrypoint ended unseen, with no status recorded, is
/// FAILED. All are readmitted under one lock before any is watched: a watcher that
/// finds its job ended admits waiting jobs, and must not find among them one still
/// to be taken back (it would be started a second time).
pub(super) fn adopt(manager: &JobManager, jobs: Vec<(String, Option<u32>)>) {
    let config = &manager.inner.config;
    let readmitted: Vec<_> = {
        let mut table = manager.table();
        jobs.into_iter()
            .filter_map(|(id, pid)| {
                let demand = table.readmit(&id, pid, &config.node_id, &config.dashboard_url)?;
                manager.persist(&table, &id);
                Some((id, pid, demand))
            })
            .collect()
    };
    for (id, pid, demand) in readmitted {
        manager.inner.head.hold_for_entrypoint(id.clone(), demand);
        let manager = manager.clone();
        tokio::spawn(async move {
            let exit = watch_adopted(&manager, &id, pid).await;
            ended(manager, id, Some(exit)).await;
        });
    }
}

/// The leaders, among this machine's processes, of the entrypoints whose status
/// files are `wanted`: by status file. One pass over `/proc`.
pub(super) fn find_leaders(
    wanted: &[std::path::PathBuf],
) -> std::collections::HashMap<std::path::PathBuf, u32> {
    let mut found = std::collections::HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        for arg in cmdline.split(|b| *b == 0) {
            if let Some(file) = wanted
                .iter()
                .find(|w| w.as_os_str().as_encoded_bytes() == arg)
            {
                // The leader is the group's first: its pid is the group's id.
                if group_leader(pid) && !process_gone(pid) {
                    found.insert(file.clone(), pid);
                }
            }
        }
    }
    found
}

/// Whether `pid` leads its process group (the entrypoint's commands carry the same
/// arguments only inside the leader's shell, but a leader is what is wanted).
fn group_leader(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: getpgid(2) takes an integer and touches no memory.
    unsafe { libc::getpgid(pid) == pid }
}

/// Records how `id`'s entrypoint ended (`None`: it never started, and its failure
/// is recorded already; `Err`: it ended unseen, for that reason), and frees what it
/// held.
async fn ended(manager: JobManager, id: String, exit: Option<Result<Exit, String>>) {
    let status_file = manager.exit_status_path(&id);
    match exit {
        Some(Ok(exit)) => {
            let log = manager.log_path(&id);
            let tail = tokio::task::spawn_blocking(move || log_tail(&log))
                .await
                .unwrap_or_default();
            let status = {
                let mut table = manager.table();
                table.exited(&id, exit, &tail, now_ms());
                table.get(&id).map(|j| j.status.as_str())
            };
            tracing::info!(submission_id = %id, status, "job ended");
        }
        Some(Err(why)) => {
            tracing::warn!(submission_id = %id, "{why}");
            manager
                .table()
                .fail(&id, error_type::SUPERVISOR_DIED, why, now_ms());
        }
        None => {}
    }
    manager.save_soon(&id);
    let _ = std::fs::remove_file(status_file);
    manager.stoppers().remove(&id);
    manager.inner.head.release_entrypoint(id.clone());
    manager.changed();
    manager.admit();
    manager.collect_packages();
    release_drivers(&manager, &id).await;
}

/// Watches a taken-back entrypoint led by `pid` (`None`: not running any more) until
/// it ends, stopping it if asked.
async fn watch_adopted(manager: &JobManager, id: &str, pid: Option<u32>) -> Result<Exit, String> {
    let status_file = manager.exit_status_path(id);
    let (stop_tx, mut stop_rx) = oneshot::channel();
    let stop_now = {
        let table = manager.table();
        manager.stoppers().insert(id.to_string(), stop_tx);
        table.stop_requested(id)
    };
    tracing::info!(submission_id = %id, pid, "job taken back from an earlier head");
    if let (true, Some(pid)) = (stop_now, pid) {
        stop_adopted(pid, manager.inner.config.stop_grace).await;
    }
    loop {
        if let Some(code) = recorded_exit(&status_file) {
            return Ok(Exit::Code(code));
        }
        let Some(pid) = pid.filter(|&pid| leads_entrypoint(pid, &status_file)) else {
            // It may have recorded its status just before it went.
            return recorded_exit(&status_file).map(Exit::Code).ok_or_else(|| {
                "the entrypoint ended while no head watched it, and how is unknown".to_string()
            });
        };
        tokio::select! {
            _ = tokio::time::sleep(ADOPTED_POLL) => {}
            Ok(()) = &mut stop_rx => stop_adopted(pid, manager.inner.config.stop_grace).await,
        }
    }
}

/// SIGTERM to a taken-back entrypoint's group, then SIGKILL after `grace` to what
/// is left of it (it is not this process's child: there is nothing to wait for but
/// the group's end).
async fn stop_adopted(pid: u32, grace: std::time::Duration) {
    signal_group(pid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while group_alive(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    signal_group(pid, libc::SIGKILL);
}

/// The exit code a leader recorded in `status_file`, if it did.
fn recorded_exit(status_file: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(status_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Whether `pid` is still the leader of the entrypoint whose status goes to
/// `status_file` (not a process that took its pid after it ended).
pub(super) fn leads_entrypoint(pid: u32, status_file: &std::path::Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let wanted = status_file.as_os_str().as_encoded_bytes();
    let ours = cmdline.split(|b| *b == 0).any(|arg| arg == wanted);
    ours && !process_gone(pid)
}

/// Tells the head about the job's drivers whose processes are gone (a stopped
/// job's were killed without a goodbye), so it ends their jobs and frees their
/// workers and objects now, not when their connections time out. The drivers ran
/// on this machine (entrypoints run on the head node), so their pids can be checked.
async fn release_drivers(manager: &JobManager, id: &str) {
    let head = &manager.inner.head;
    let Some(StateRows::Jobs(rows)) = head.state(StateQuery::Jobs).await else {
        return;
    };
    let drivers: Vec<_> = rows
        .into_iter()
        .filter(|r| r.running && r.submission_id.as_deref() == Some(id))
        .collect();
    // A killed process may take a moment to be gone from the process table.
    for _ in 0..20 {
        if drivers.iter().all(|d| process_gone(d.driver_pid)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for d in drivers {
        if process_gone(d.driver_pid) {
            head.driver_process_ended(
                d.job_id,
                format!("the driver's process ended with job {id}'s entrypoint"),
            );
        }
    }
}

/// Whether process `pid` has ended (it is gone, or a zombie nobody reaped yet).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state is the first field after the command name's closing parenthesis.
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Runs `id`'s entrypoint to its end: how it exited, or `None` if it never started
/// (the job is then FAILED).
async fn supervise(manager: &JobManager, id: &str) -> Option<Exit> {
    let job = manager.get(id)?;
    let config = &manager.inner.config;
    let fail = |kind: &'static str, why: String| {
        tracing::warn!(submission_id = %id, "the job could not start: {why}");
        manager.table().fail(id, kind, why, now_ms());
        None
    };

    // Its own working dir: the uploaded package unpacked, or an empty directory.
    let dir = manager.working_dir(id);
    let package = job
        .working_dir()
        .map(|uri| super::info::package_name(uri).to_string());
    let packages = manager.packages().clone();
    let prepared = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            if dir.exists() {
                // A restarted head starting a job that waited: unpack afresh.
                std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
            }
            if let Some(job_dir) = dir.parent() {
                crate::session::ensure_private_dir(job_dir).map_err(|e| e.to_string())?;
            }
            match package {
                Some(name) => packages.unpack(&name, &dir).map_err(|e| e.to_string()),
                None => crate::session::ensure_private_dir(&dir).map_err(|e| e.to_string()),
            }
        })
        .await
    };
    match prepared {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            return fail(
                error_type::RUNTIME_ENV_SETUP_FAILURE,
                format!("the working dir could not be set up: {why}"),
            )
        }
        Err(e) => return fail(error_type::RUNTIME_ENV_SETUP_FAILURE, e.to_string()),
    }

    manager.log_afresh(id);
    let log_path = manager.log_path(id);
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .and_then(|f| Ok((f.try_clone()?, f)))
    {
        Ok(pair) => pair,
        Err(e) => {
            return fail(
                error_type::RUNTIME_ENV_SETUP_FAILURE,
                format!("{}: {e}", log_path.display()),
            )
        }
    };

    let status_file = manager.exit_status_path(id);
    let _ = std::fs::remove_file(&status_file);
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(LEADER_SCRIPT)
        .arg(LEADER_NAME)
        .arg(&job.entrypoint)
        .arg(&status_file)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.0))
        .stderr(Stdio::from(log.1))
        // Its own process group, so a stop reaches everything it started.
        .process_group(0)
        .env("RAYISH_ADDRESS", config.cluster_address.to_string())
        .env("RAYISH_TOKEN", &config.token)
        .env(SUBMISSION_ID_ENV, id)
        .env("RAY_JOB_SUBMISSION_ID", id);
    for (k, v) in job.env_vars() {
        command.env(k, v);
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            return fail(
                error_type::ENTRYPOINT_START_ERROR,
                format!("the entrypoint could not be started: {e}"),
            )
        }
    };
    let Some(pid) = child.id() else {
        return fail(
            error_type::ENTRYPOINT_START_ERROR,
            "the entrypoint vanished".into(),
        );
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    let stop_now = {
        let mut table = manager.table();
        table.started(id, pid, &config.node_id, &config.dashboard_url);
        // Registered under the table's lock: a stop either saw no stopper and set
        // `stop_requested` before this, or finds this one.
        manager.stoppers().insert(id.to_string(), stop_tx);
        table.stop_requested(id)
    };
    manager.save_soon(id);
    manager.changed();
    tracing::info!(submission_id = %id, pid, "job started");

    let status = if stop_now {
        stop_group(pid, &mut child, config.stop_grace).await
    } else {
        tokio::select! {
            status = child.wait() => status,
            Ok(()) = stop_rx => stop_group(pid, &mut child, config.stop_grace).await,
        }
    };
    Some(match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Code(-1),
        },
        Err(e) => {
            tracing::warn!(submission_id = %id, "waiting for the entrypoint failed: {e}");
            Exit::Code(-1)
        }
    })
}

/// SIGTERM to the group led by `pid`; after `grace`, SIGKILL to whatever of it is
/// left (the leader may have gone first and left children behind).
async fn stop_group(
    pid: u32,
    child: &mut tokio::process::Child,
    grace: std::time::Duration,
) -> std::io::Result<std::process::ExitStatus> {
    signal_group(pid, libc::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            // Give the rest of the group the same grace the leader had at most.
            let deadline = tokio::time::Instant::now() + grace;
            while group_alive(pid) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            status
        }
        Err(_) => {
            signal_group(pid, libc::SIGKILL);
            child.wait().await
        }
    };
    signal_group(pid, libc::SIGKILL);
    status
}

fn signal_group(pgid: u32, signal: i32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    // SAFETY: killpg(2) takes two integers and touches no memory; the group is the
    // one this supervisor made for the entrypoint (its leader's pid), and ESRCH
    // (nobody left) is harmless.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

fn group_alive(pgid: u32) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the group exists; no memory is touched.
    unsafe { libc::killpg(pgid, 0) == 0 }
}

/// The last [`FAILURE_LOG_TAIL`] bytes of a log, as text.
fn log_tail(path: &std::path::Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(FAILURE_LOG_TAIL)));
    let mut buf = Vec::new();
    let _ = f.take(FAILURE_LOG_TAIL).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
