//! Where a machine's rayish processes keep their files: the temp root (default
//! `/tmp/rayish`, like Ray's `/tmp/ray`), one session directory per head or node start
//! with its `logs/`, the record of the current cluster, the registry of node processes
//! that `rayish stop` reads, and the shared cache of job binaries.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

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
        std::fs::create_dir_all(dir.join("logs"))?;
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
}

/// Writes the cluster record (readable by this user only: it holds the token).
pub fn write_cluster_record(root: &Path, record: &ClusterRecord) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(root)?;
    let path = root.join("current_cluster.json");
    let tmp = root.join(format!(".current_cluster.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
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
}

fn process_dir(root: &Path) -> PathBuf {
    root.join("processes")
}

/// Records a running node process.
pub fn register_process(root: &Path, record: &ProcessRecord) -> std::io::Result<()> {
    let dir = process_dir(root);
    std::fs::create_dir_all(&dir)?;
    let text = serde_json::to_string(record).unwrap_or_default();
    std::fs::write(dir.join(format!("{}.json", record.pid)), text)
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
