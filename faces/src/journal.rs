//! The run's journal: every finished image appended to `--out/journal.jsonl` as it
//! comes back, so that no crash (of the driver, the head or the machine) loses more
//! than the last second of finished work, and a re-run skips what is done.
//!
//! Format: JSON lines. The first is a header with the settings that decide the
//! output; each next one is an image's input key and its finished [`FaceJob`]
//! (without pixels). A crash can leave a torn last line: it is dropped when the
//! journal is reopened, and appending starts after the last whole line.
//!
//! Durability: lines go to the file as images finish (a crash of the process loses
//! nothing written: the kernel has it) and a helper thread fsyncs them every
//! [`SYNC_EVERY`] while there are new ones, so a crash of the machine loses at most
//! the last second of finished images (plus one fsync's duration). The driver never
//! waits for an fsync but the last.
//!
//! An image is identified by its path, size and modification time, not a content
//! hash: resuming then needs one `stat` per image rather than reading every photo
//! again (a 504-photo resume takes milliseconds, and photos may sit on slow storage),
//! and a file rewritten in place gets a new mtime. An `s3://` object's size and
//! last-modified time come with the listing, so resuming one costs no extra request.

use crate::job::FaceJob;
use crate::settings::Settings;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The journal's file name inside `--out`.
pub const FILE: &str = "journal.jsonl";

/// How often new journal lines are fsync'd.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Format version in the header; a journal of another version is refused.
const VERSION: u32 = 1;

/// What identifies an input file's contents without reading it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InputKey {
    /// The path as listed.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, in nanoseconds since the epoch.
    pub mtime_ns: i128,
}

impl InputKey {
    /// The key of the input at `path` with `stamp` (see [`crate::inputs::Stamp`]).
    pub fn new(path: &str, stamp: crate::inputs::Stamp) -> InputKey {
        InputKey {
            path: path.to_string(),
            size: stamp.size,
            mtime_ns: stamp.mtime_ns,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    journal: u32,
    settings: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    key: InputKey,
    job: FaceJob,
}

/// Errors opening or writing the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file system said no.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The journal holds a run with other settings.
    #[error(
        "{} holds a run with other settings ({differences}); \
         use another --out, or --restart to discard it",
        path.display()
    )]
    OtherSettings {
        /// The journal.
        path: PathBuf,
        /// Each differing setting, `name: journal's → this run's`.
        differences: String,
    },
    /// Another run holds the journal.
    #[error(
        "{} is in use by another rayish-faces run on the same --out; \
         wait for it or use another --out",
        path.display()
    )]
    Busy {
        /// The journal.
        path: PathBuf,
    },
    /// A line before the last is not a journal entry.
    #[error(
        "{} is damaged at line {line} ({reason}); use --restart to discard it",
        path.display()
    )]
    Damaged {
        /// The journal.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parse error.
        reason: String,
    },
}

/// The settings a journal's images were computed with, as compared between runs.
/// Those of `average.json`, and the input limits that decide which images fail.
pub fn settings_record(settings: &Settings) -> serde_json::Value {
    let mut v = settings.output_record();
    v["max_pixels"] = serde_json::json!(settings.max_pixels);
    v["max_file_bytes"] = serde_json::json!(settings.max_file_bytes);
    v
}

/// Each setting that differs between `old` and `new`, as `name: old → new`.
pub fn differences(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (o, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut names: Vec<&String> = o.keys().chain(n.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| v.map_or("unset".into(), |v| v.to_string());
            format!("{k}: {} → {}", show(o.get(k)), show(n.get(k)))
        })
        .collect()
}

/// An open journal, appending.
pub struct Journal {
    path: PathBuf,
    file: Arc<File>,
    syncer: Option<Syncer>,
    done: HashMap<InputKey, FaceJob>,
}

/// The thread that fsyncs new lines every [`SYNC_EVERY`].
struct Syncer {
    dirty: Arc<AtomicBool>,
    /// The first fsync error, reported by the next append or [`Journal::sync`].
    failed: Arc<Mutex<Option<std::io::Error>>>,
    /// Dropped to stop the thread.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    fn start(file: Arc<File>) -> std::io::Result<Syncer> {
        let dirty = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(None));
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = {
            let (dirty, failed) = (Arc::clone(&dirty), Arc::clone(&failed));
            std::thread::Builder::new()
                .name("rayish-faces-journal".into())
                .spawn(move || {
                    while let Err(mpsc::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(SYNC_EVERY)
                    {
                        if dirty.swap(false, Ordering::AcqRel) {
                            if let Err(e) = file.sync_data() {
                                if let Ok(mut slot) = failed.lock() {
                                    slot.get_or_insert(e);
                                }
                            }
                        }
                    }
                })?
        };
        Ok(Syncer {
            dirty,
            failed,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn error(&self) -> Option<std::io::Error> {
        self.failed.lock().ok()?.take()
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Journal {
    /// Opens `dir`'s journal for a run with `settings`: a new one, or (unless
    /// `restart`) the one there, whose finished images [`Self::take_done`] then
    /// gives back. Refuses one written with other settings.
    pub fn open(dir: &Path, settings: &Settings, restart: bool) -> Result<Journal, JournalError> {
        let path = dir.join(FILE);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let wanted = settings_record(settings);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // One run at a time per --out: a second would interleave its lines and its
        // final files with this one's. Taken before reading, so that no other run
        // appends while this one decides what to keep.
        lock(&file).map_err(|e| match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => JournalError::Busy { path: path.clone() },
            _ => io(e),
        })?;
        let mut done = HashMap::new();
        let mut keep_bytes = 0u64;
        if !restart {
            let reader = file.try_clone().map_err(io)?;
            let (entries, good) = read_entries(&path, reader, &wanted)?;
            done = entries;
            keep_bytes = good;
        }
        // Drop a torn last line (or, with `restart`, everything).
        file.set_len(keep_bytes).map_err(io)?;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        if keep_bytes == 0 {
            let header = Header {
                journal: VERSION,
                settings: wanted,
            };
            let mut line = serde_json::to_vec(&header).map_err(|e| io(e.into()))?;
            line.push(b'\n');
            file.write_all(&line).map_err(io)?;
        }
        file.sync_data().map_err(io)?;
        sync_dir(dir).map_err(io)?;
        let file = Arc::new(file);
        let syncer = Syncer::start(Arc::clone(&file)).map_err(io)?;
        Ok(Journal {
            path,
            file,
            syncer: Some(syncer),
            done,
        })
    }

    /// The images the journal already holds, by input key (once).
    pub fn take_done(&mut self) -> HashMap<InputKey, FaceJob> {
        std::mem::take(&mut self.done)
    }

    /// Appends a finished image, unless its outcome may differ on another try (a
    /// task that died, a read that timed out): those run again on resume.
    pub fn append(&mut self, key: &InputKey, job: &FaceJob) -> Result<(), JournalError> {
        if let Some(e) = self.syncer.as_ref().and_then(Syncer::error) {
            return Err(self.io(e));
        }
        if !is_final(job) {
            return Ok(());
        }
        let mut job = job.clone();
        job.bytes = Vec::new();
        job.image = None;
        let entry = Entry {
            key: key.clone(),
            job,
        };
        let mut line = serde_json::to_vec(&entry).map_err(|e| self.io(e.into()))?;
        line.push(b'\n');
        // One write call a line: a crash tears at most the last one.
        (&*self.file).write_all(&line).map_err(|e| self.io(e))?;
        if let Some(s) = &self.syncer {
            s.dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Fsyncs everything appended so far, and stops the helper thread.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        if let Some(syncer) = self.syncer.take() {
            let earlier = syncer.error();
            drop(syncer);
            if let Some(e) = earlier {
                return Err(self.io(e));
            }
        }
        self.file.sync_data().map_err(|e| self.io(e))
    }

    fn io(&self, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// Whether `job`'s outcome is its final one: anything but a failure of the machinery
/// rather than of the image (those are retried by a re-run).
pub fn is_final(job: &FaceJob) -> bool {
    !job.status.is_transient_failure()
}

/// Takes an exclusive advisory lock on `file`, without waiting; it lasts while the
/// file is open in this process.
fn lock(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor `file` owns and keeps open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads a journal: its entries, and how many bytes of it are whole lines to keep.
fn read_entries(
    path: &Path,
    file: File,
    wanted: &serde_json::Value,
) -> Result<(HashMap<InputKey, FaceJob>, u64), JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(file);
    let mut done = HashMap::new();
    let mut good = 0u64;
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io)?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.last() != Some(&b'\n') {
            break; // torn by a crash: dropped
        }
        let damaged = |reason: String| JournalError::Damaged {
            path: path.to_path_buf(),
            line: number,
            reason,
        };
        if number == 1 {
            let header: Header =
                serde_json::from_slice(&line).map_err(|e| damaged(e.to_string()))?;
            if header.journal != VERSION {
                return Err(damaged(format!(
                    "journal version {}, this program writes {VERSION}",
                    header.journal
                )));
            }
            let diff = differences(&header.settings, wanted);
            if !diff.is_empty() {
                return Err(JournalError::OtherSettings {
                    path: path.to_path_buf(),
                    differences: diff.join(", "),
                });
            }
        } else {
            match serde_json::from_slice::<Entry>(&line) {
                Ok(entry) => {
                    done.insert(entry.key, entry.job);
                }
                Err(e) => {
                    // Whole but unreadable: the last line may be a torn write the
                    // kernel padded; any earlier one means damage.
                    let at_end = reader.fill_buf().map_err(io)?.is_empty();
                    if at_end {
                        break;
                    }
                    return Err(damaged(e.to_string()));
                }
            }
        }
        good += n as u64;
    }
    Ok((done, good))
}

/// Fsyncs a directory, so that files created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Status;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rayish-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    /// A finished image in which no face was found.
    fn no_face(index: u64, path: &str) -> FaceJob {
        let mut job = FaceJob::new(index, path);
        job.status = Status::NoFace;
        job
    }

    fn key(path: &str) -> InputKey {
        InputKey {
            path: path.into(),
            size: 3,
            mtime_ns: 7,
        }
    }

    #[test]
    fn finished_images_survive_a_torn_last_line_and_appending_resumes_after_them() {
        let dir = temp("torn");
        let settings = Settings::default();
        let mut j = Journal::open(&dir, &settings, false).expect("open");
        let a = no_face(0, "a.jpg");
        j.append(&key("a.jpg"), &a).expect("append");
        let mut lost = FaceJob::new(1, "b.jpg");
        lost.status = Status::Failed("task failed: the worker died".into());
        j.append(&key("b.jpg"), &lost).expect("append");
        j.sync().expect("sync");
        drop(j);
        // A crash mid-write: half a line at the end.
        let path = dir.join(FILE);
        let mut f = OpenOptions::new().append(true).open(&path).expect("reopen");
        f.write_all(b"{\"key\":{\"path\":\"c.j").expect("torn");
        drop(f);

        let mut j = Journal::open(&dir, &settings, false).expect("reopen journal");
        let done = j.take_done();
        assert_eq!(done.len(), 1, "the transient failure is not kept");
        assert_eq!(done[&key("a.jpg")].status, Status::NoFace);
        let c = no_face(2, "c.jpg");
        j.append(&key("c.jpg"), &c).expect("append");
        j.sync().expect("sync");
        drop(j);
        let mut j = Journal::open(&dir, &settings, false).expect("third open");
        assert_eq!(j.take_done().len(), 2);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn other_settings_are_refused_by_name_unless_restarting() {
        let dir = temp("settings");
        let settings = Settings::default();
        drop(Journal::open(&dir, &settings, false).expect("open"));
        let other = Settings {
            upsample: 2,
            ..Settings::default()
        };
        let err = Journal::open(&dir, &other, false).err().expect("refused");
        let text = err.to_string();
        assert!(
            text.contains("number_of_times_to_upsample: 1 → 2") && text.contains("--restart"),
            "{text}"
        );
        let mut j = Journal::open(&dir, &other, true).expect("restart");
        assert!(j.take_done().is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_second_run_on_the_same_out_is_refused_while_the_first_holds_it() {
        let dir = temp("busy");
        let settings = Settings::default();
        let first = Journal::open(&dir, &settings, false).expect("open");
        let err = Journal::open(&dir, &settings, false)
            .err()
            .expect("refused while held");
        assert!(matches!(err, JournalError::Busy { .. }), "{err}");
        drop(first);
        drop(Journal::open(&dir, &settings, false).expect("free again"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_damaged_line_before_the_end_is_refused() {
        let dir = temp("damaged");
        let settings = Settings::default();
        let mut j = Journal::open(&dir, &settings, false).expect("open");
        let a = no_face(0, "a.jpg");
        j.append(&key("a.jpg"), &a).expect("append");
        j.append(&key("b.jpg"), &a).expect("append");
        j.sync().expect("sync");
        drop(j);
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path).expect("read");
        let mut lines: Vec<&str> = text.lines().collect();
        lines[1] = "garbage";
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        let err = Journal::open(&dir, &settings, false)
            .err()
            .expect("refused");
        assert!(
            matches!(err, JournalError::Damaged { line: 2, .. }),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
