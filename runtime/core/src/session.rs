//! Where a machine's rayish processes keep their files: the temp root (default
//! `/tmp/rayish`, like Ray's `/tmp/ray`), one session directory per head or node start
//! with its `logs/`, the record of the current cluster, the registry of node processes
//! that `rayish stop` reads, and the shared cache of job binaries.

use serde::{Deserialize, Serialize};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Why a directory or file of the temp root cannot be trusted.
#[derive(Debug, Error)]
pub enum SessionError {
    /// Another user owns it: they could plant binaries or read tokens there.
    #[error("{path} belongs to uid {owner}, not to this user (uid {me}): refusing to use it (another user could plant files there); remove it or choose another --temp-dir")]
    NotOurs {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// It is a symlink or not a directory.
    #[error("{0} is not a directory (or is a symlink): refusing to use it")]
    NotADirectory(PathBuf),
    /// A token file others can read.
    #[error("{path} is readable or writable by others (mode {mode:o}): chmod 600 it")]
    LooseTokenFile {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The token file is empty.
    #[error("{0} holds no token")]
    EmptyTokenFile(PathBuf),
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> SessionError + '_ {
    move |source| SessionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Makes `dir` (and its missing parents under it) a directory only this user can
/// enter: created with mode 0700; if it exists it must be a real directory of this
/// user's, whose group and other bits are then cleared. Every directory rayish keeps
/// files in goes through here, so nobody else can plant a binary in the cache or read
/// a token or a log.
pub fn ensure_private_dir(dir: &Path) -> Result<(), SessionError> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            check_own_dir(dir, &meta)?;
            if meta.mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io_at(dir))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_at(dir))?;
            // A parent made by `recursive` gets 0700 too; the last one may have
            // raced with another process: check what is there now.
            check_own_dir(dir, &std::fs::symlink_metadata(dir).map_err(io_at(dir))?)
        }
        Err(e) => Err(io_at(dir)(e)),
    }
}

/// `dir`'s metadata names a real directory (not a link to one) owned by this user.
fn check_own_dir(dir: &Path, meta: &std::fs::Metadata) -> Result<(), SessionError> {
    if !meta.file_type().is_dir() {
        return Err(SessionError::NotADirectory(dir.to_path_buf()));
    }
    let me = euid();
    if meta.uid() != me {
        return Err(SessionError::NotOurs {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

/// Creates (or truncates) `path` readable and writable by this user only.
pub fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through open(2): set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Reads a cluster token from `path`: its first line, trimmed. The file must not be
/// readable or writable by others (as ssh insists for its keys).
pub fn read_token_file(path: &Path) -> Result<String, SessionError> {
    let meta = std::fs::metadata(path).map_err(io_at(path))?;
    if meta.mode() & 0o077 != 0 {
        return Err(SessionError::LooseTokenFile {
            path: path.to_path_buf(),
            mode: meta.mode() & 0o777,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io_at(path))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(SessionError::EmptyTokenFile(path.to_path_buf()));
    }
    Ok(token)
}

/// When process `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field
/// 22): with the pid, it names one process, even after the pid is reused.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The temp root: `$RAYISH_TEMP_DIR` or `/tmp/rayish`.
pub fn temp_root() -> PathBuf {
    std::env::var_os("RAYISH_TEMP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/rayish"))
}

/// The machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A session directory.
#[derive(Debug, Clone)]
pub struct Session {
    /// `<root>/session_<time>_<pid>`.
    pub dir: PathBuf,
    /// The temp root it lives in.
    pub root: PathBuf,
}

impl Session {
    /// Creates a new session directory (with `logs/`) and points `session_latest` at it.
    pub fn create(root: &Path) -> std::io::Result<Self> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let dir = root.join(format!("session_{secs}_{}", std::process::id()));
        ensure_private_dir(root).map_err(std::io::Error::other)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("logs"))?;
        prune_sessions(root, max_sessions(), &dir);
        let latest = root.join("session_latest");
        let _ = std::fs::remove_file(&latest);
        let _ = std::os::unix::fs::symlink(&dir, &latest);
        Ok(Self {
            dir,
            root: root.to_path_buf(),
        })
    }

    /// The log directory.
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
}

/// Old sessions kept (with their logs) when a new one starts: `$RAYISH_MAX_SESSIONS`,
/// default 20. Sessions of processes still running are never removed.
fn max_sessions() -> usize {
    std::env::var("RAYISH_MAX_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Removes the oldest `session_<secs>_<pid>` directories under `root` beyond `keep`,
/// except `current` and those whose process still runs.
pub fn prune_sessions(root: &Path, keep: usize, current: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut sessions: Vec<(u64, u32, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let mut parts = name.strip_prefix("session_")?.split('_');
            let secs = parts.next()?.parse().ok()?;
            let pid = parts.next()?.parse().ok()?;
            Some((secs, pid, e.path()))
        })
        .filter(|(_, _, path)| path != current)
        .collect();
    if sessions.len() <= keep {
        return;
    }
    sessions.sort();
    let excess = sessions.len() - keep;
    for (_, pid, path) in sessions.into_iter().take(excess) {
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = std::fs::remove_dir_all(path);
    }
}

/// The machine-wide binary cache directory.
pub fn binary_cache_dir(root: &Path) -> PathBuf {
    root.join("binaries")
}

/// What `rayish start --head` records so that `rayish status` and drivers using
/// `address="auto"` on this machine find the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The head's address.
    pub address: String,
    /// The cluster token.
    pub token: String,
    /// The dashboard's address (`http://HOST:PORT`), if the head serves one.
    #[serde(default)]
    pub dashboard: Option<String>,
}

/// Writes the cluster record (readable by this user only: it holds the token).
pub fn write_cluster_record(root: &Path, record: &ClusterRecord) -> std::io::Result<()> {
    use std::io::Write;
    ensure_private_dir(root).map_err(std::io::Error::other)?;
    let path = root.join("current_cluster.json");
    let tmp = root.join(format!(".current_cluster.{}", std::process::id()));
    let mut f = create_private_file(&tmp)?;
    f.write_all(
        serde_json::to_string_pretty(record)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    std::fs::rename(tmp, path)
}

/// Reads the cluster record, if a head was started on this machine.
pub fn read_cluster_record(root: &Path) -> Option<ClusterRecord> {
    let text = std::fs::read_to_string(root.join("current_cluster.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// A node process started on this machine, as `rayish stop` finds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Its pid.
    pub pid: u32,
    /// "head" or "node".
    pub role: String,
    /// Its address.
    pub address: String,
    /// Its session directory.
    pub session: PathBuf,
    /// Its start time ([`process_start_time`]), so that `rayish stop` never signals
    /// another process that got the same pid later.
    #[serde(default)]
    pub start_time: Option<u64>,
}

impl ProcessRecord {
    /// Whether the process this record names still runs (same pid, same start time).
    pub fn is_running(&self) -> bool {
        match (self.start_time, process_start_time(self.pid)) {
            (Some(recorded), Some(now)) => recorded == now,
            // A record of an older version: the pid alone, if it is a rayish process
            // of this user.
            (None, Some(_)) => {
                std::fs::metadata(format!("/proc/{}", self.pid)).is_ok_and(|m| m.uid() == euid())
                    && std::fs::read(format!("/proc/{}/cmdline", self.pid))
                        .map(|c| String::from_utf8_lossy(&c).contains("rayish"))
                        .unwrap_or(false)
            }
            _ => false,
        }
    }
}

fn process_dir(root: &Path) -> PathBuf {
    root.join("processes")
}

/// Records a running node process.
pub fn register_process(root: &Path, record: &ProcessRecord) -> std::io::Result<()> {
    use std::io::Write;
    let dir = process_dir(root);
    ensure_private_dir(&dir).map_err(std::io::Error::other)?;
    let text = serde_json::to_string(record).unwrap_or_default();
    create_private_file(&dir.join(format!("{}.json", record.pid)))?.write_all(text.as_bytes())
}

/// Forgets a node process.
pub fn unregister_process(root: &Path, pid: u32) {
    let _ = std::fs::remove_file(process_dir(root).join(format!("{pid}.json")));
}

/// The node processes recorded on this machine.
pub fn registered_processes(root: &Path) -> Vec<ProcessRecord> {
    let Ok(entries) = std::fs::read_dir(process_dir(root)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect()
}
