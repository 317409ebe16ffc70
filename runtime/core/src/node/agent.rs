//! The node's answers to the dashboard's questions about its machine (Ray's
//! dashboard agent): its log files, pieces of them, and its host's and object
//! store's use.
//!
//! Invariant: only plain files directly in the node's log directory are listed or
//! read; a name with a path separator, a leading dot or a symlink is refused, so a
//! request can never read outside it.

use crate::metrics::HostSampler;
use crate::object_store::ObjectStore;
use crate::protocol::{AgentReply, AgentRequest, LogStart, MAX_LOG_CHUNK};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

/// Answers agent requests for one node.
pub(super) struct Agent {
    log_dir: std::path::PathBuf,
    store: std::sync::Arc<ObjectStore>,
    /// Made at the first usage question: CPU use is measured between two samples.
    host: Mutex<Option<HostSampler>>,
}

impl Agent {
    pub(super) fn new(log_dir: &Path, store: std::sync::Arc<ObjectStore>) -> Self {
        Agent {
            log_dir: log_dir.to_path_buf(),
            store,
            host: Mutex::new(None),
        }
    }

    /// The answer to `request`. Blocking: it reads files and samples the host.
    pub(super) fn answer(&self, request: AgentRequest) -> AgentReply {
        match request {
            AgentRequest::ListLogs { glob } => list_logs(&self.log_dir, &glob),
            AgentRequest::ReadLog {
                filename,
                from,
                max_bytes,
            } => read_log(&self.log_dir, &filename, from, max_bytes),
            AgentRequest::Usage => {
                let mut host = match self.host.lock() {
                    Ok(h) => h,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if host.is_none() {
                    match HostSampler::new(&self.log_dir) {
                        Ok(s) => *host = Some(s),
                        Err(e) => return AgentReply::Error(format!("cannot sample the host: {e}")),
                    }
                }
                match host.as_mut() {
                    Some(s) => AgentReply::Usage(crate::protocol::NodeUsage {
                        store_used: self.store.memory_bytes(),
                        store_capacity: self.store.capacity(),
                        store_spilled: self.store.spilled_bytes(),
                        store_objects: self.store.len() as u64,
                        ..s.usage()
                    }),
                    None => AgentReply::Error("cannot sample the host".into()),
                }
            }
        }
    }
}

/// The plain files in `dir` whose names match `glob`, sorted.
pub(crate) fn list_logs(dir: &Path, glob: &str) -> AgentReply {
    let pattern = match glob::Pattern::new(glob) {
        Ok(p) => p,
        Err(e) => return AgentReply::Error(format!("bad glob {glob:?}: {e}")),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return AgentReply::Error(format!("cannot list {}: {e}", dir.display())),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && pattern.matches(n))
        .collect();
    names.sort();
    AgentReply::Logs(names)
}

/// A piece of the log file `name` in `dir`.
pub(crate) fn read_log(dir: &Path, name: &str, from: LogStart, max_bytes: u64) -> AgentReply {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || name.contains('\0') {
        return AgentReply::Error(format!("{name:?} is not a log file's name"));
    }
    let path = dir.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return AgentReply::Error(format!("{name} is not a log file")),
        Err(e) => return AgentReply::Error(format!("no log file {name} on this node: {e}")),
    }
    match read_piece(&path, from, max_bytes.min(MAX_LOG_CHUNK)) {
        Ok((data, next_offset, size)) => AgentReply::LogChunk {
            data,
            next_offset,
            size,
        },
        Err(e) => AgentReply::Error(format!("cannot read {name}: {e}")),
    }
}

fn read_piece(path: &Path, from: LogStart, max: u64) -> std::io::Result<(Vec<u8>, u64, u64)> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let start = match from {
        LogStart::Offset(o) => o.min(size),
        LogStart::TailLines(n) => tail_start(&mut file, size, n, max)?,
    };
    file.seek(SeekFrom::Start(start))?;
    let mut data = Vec::with_capacity(max.min(size - start) as usize);
    file.take(max).read_to_end(&mut data)?;
    let next = start + data.len() as u64;
    Ok((data, next, size))
}

/// Where the last `lines` lines of a file of `size` bytes start, reading at most
/// `max` bytes back from the end (a longer tail starts at a line within them).
fn tail_start(file: &mut File, size: u64, lines: u64, max: u64) -> std::io::Result<u64> {
    const BLOCK: u64 = 16 << 10;
    if lines == 0 {
        return Ok(size);
    }
    let floor = size.saturating_sub(max);
    let mut wanted = lines;
    let mut end = size;
    let mut buf = vec![0u8; BLOCK as usize];
    while end > floor {
        let begin = end.saturating_sub(BLOCK).max(floor);
        let len = (end - begin) as usize;
        file.seek(SeekFrom::Start(begin))?;
        file.read_exact(&mut buf[..len])?;
        for i in (0..len).rev() {
            let at = begin + i as u64;
            // The newline ending the file ends the last line; it starts none.
            if buf[i] != b'\n' || at == size - 1 {
                continue;
            }
            wanted -= 1;
            if wanted == 0 {
                return Ok(at + 1);
            }
        }
        end = begin;
    }
    if floor == 0 {
        return Ok(0);
    }
    // The tail is longer than `max`: start at the first whole line within it.
    file.seek(SeekFrom::Start(floor))?;
    let mut scan = vec![0u8; (size - floor).min(BLOCK) as usize];
    let n = file.read(&mut scan)?;
    Ok(scan[..n]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(floor, |p| floor + p as u64 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "rayish-agent-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write");
        }
        dir
    }

    fn chunk(reply: AgentReply) -> (String, u64, u64) {
        match reply {
            AgentReply::LogChunk {
                data,
                next_offset,
                size,
            } => (String::from_utf8(data).expect("utf8"), next_offset, size),
            other => panic!("not a chunk: {other:?}"),
        }
    }

    #[test]
    fn lists_plain_files_matching_the_glob() {
        let dir = dir_with(&[
            ("worker-1.out", ""),
            ("worker-1.err", ""),
            ("raylet.out", ""),
        ]);
        std::fs::create_dir(dir.join("sub")).expect("sub");
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link.out")).expect("link");
        assert_eq!(
            list_logs(&dir, "*.out"),
            AgentReply::Logs(vec!["raylet.out".into(), "worker-1.out".into()])
        );
        assert!(matches!(list_logs(&dir, "["), AgentReply::Error(_)));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn tails_the_last_lines() {
        let dir = dir_with(&[("a.log", "one\ntwo\nthree\nfour\n"), ("b.log", "x\ny")]);
        let tail = |name, n| chunk(read_log(&dir, name, LogStart::TailLines(n), 1 << 20)).0;
        assert_eq!(tail("a.log", 2), "three\nfour\n");
        assert_eq!(tail("a.log", 0), "");
        assert_eq!(tail("a.log", 10), "one\ntwo\nthree\nfour\n");
        assert_eq!(tail("b.log", 1), "y");
        assert_eq!(tail("b.log", 2), "x\ny");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_long_tail_starts_at_a_whole_line_within_the_limit() {
        let text: String = (0..1000).map(|i| format!("line {i:04}\n")).collect();
        let dir = dir_with(&[("big.log", &text)]);
        let (data, next, size) = chunk(read_log(&dir, "big.log", LogStart::TailLines(900), 100));
        assert!(data.starts_with("line "), "{data:?}");
        assert!(data.len() <= 100);
        assert_eq!(next, size);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn reads_on_from_an_offset() {
        let dir = dir_with(&[("a.log", "0123456789")]);
        let (data, next, size) = chunk(read_log(&dir, "a.log", LogStart::Offset(4), 3));
        assert_eq!((data.as_str(), next, size), ("456", 7, 10));
        let (data, next, _) = chunk(read_log(&dir, "a.log", LogStart::Offset(99), 3));
        assert_eq!((data.as_str(), next), ("", 10));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn refuses_names_outside_the_log_directory() {
        let dir = dir_with(&[("a.log", "x")]);
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link.log")).expect("link");
        for name in [
            "../a.log",
            "/etc/passwd",
            ".hidden",
            "",
            "link.log",
            "missing.log",
        ] {
            assert!(
                matches!(
                    read_log(&dir, name, LogStart::Offset(0), 10),
                    AgentReply::Error(_)
                ),
                "{name}"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
