//! Shared-memory segments: how a node and the workers it started hand large values to
//! each other without copying them through a socket.
//!
//! Each node owns a directory on tmpfs (`/dev/shm/rayish-<pid>-<node>`). A large value
//! lives in one file there; whoever holds it maps the file. The node's store maps what
//! it holds; a worker reading an argument or a `get` result maps the same file
//! read-only; a worker returning or `put`ting a large value writes a new file there and
//! tells the node its name, and the node adopts it. Removing an object unlinks its file;
//! mappings already made stay valid until dropped (POSIX semantics), so a reader never
//! sees a value vanish under it.
//!
//! Architecture invariant: the only module that creates or maps shared memory; every
//! `unsafe` here is a mapping of a file this process has just opened.

use crate::ids::{NodeId, ObjectId};
use bytes::Bytes;
use memmap2::{Mmap, MmapMut};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// Where tmpfs is mounted on Linux.
const SHM_ROOT: &str = "/dev/shm";

/// The shared-memory directory of the node `node` run by process `pid`.
pub fn node_dir(pid: u32, node: NodeId) -> PathBuf {
    Path::new(SHM_ROOT).join(format!("rayish-{pid}-{node}"))
}

/// Removes the directories of nodes whose process is gone (killed nodes cannot clean
/// up after themselves, and tmpfs is memory).
pub fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(SHM_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("rayish-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A segment being written: a new file of a fixed size, mapped writable.
pub struct SegmentWriter {
    path: PathBuf,
    map: MmapMut,
}

impl SegmentWriter {
    /// Creates `dir/<id>-<random>` of `len` bytes (the random part keeps two writers of
    /// one object, such as a retried task, from sharing a file).
    pub fn create(dir: &Path, id: ObjectId, len: usize) -> std::io::Result<Self> {
        let path = dir.join(format!("{id}-{:08x}", rand::random::<u32>()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.set_len(len as u64)?;
        let map = if len == 0 {
            MmapMut::map_anon(0)?
        } else {
            // SAFETY: the file was just created by us with create_new and sized; no
            // other process knows its name until `finish` returns it.
            unsafe { MmapMut::map_mut(&file)? }
        };
        Ok(Self { path, map })
    }

    /// The segment's bytes, to fill.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map[..]
    }

    /// Done writing: the file's path, and the bytes as a read-only value.
    pub fn finish(self) -> std::io::Result<(PathBuf, Bytes)> {
        let map = self.map.make_read_only()?;
        Ok((self.path, Bytes::from_owner(map)))
    }

    /// Abandons the segment, deleting its file.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes `value` into a new segment in `dir`.
pub fn write_segment(dir: &Path, id: ObjectId, value: &[u8]) -> std::io::Result<(PathBuf, Bytes)> {
    let mut w = SegmentWriter::create(dir, id, value.len())?;
    w.bytes_mut().copy_from_slice(value);
    w.finish()
}

/// Maps an existing segment read-only. `len` is the size its writer declared; a file of
/// another size is refused (it is not the segment it claims to be).
pub fn map_segment(path: &Path, len: u64) -> std::io::Result<Bytes> {
    let file = File::open(path)?;
    let actual = file.metadata()?.len();
    if actual != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {actual} bytes, expected {len}", path.display()),
        ));
    }
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: segments are never written after their writer finished, so the mapping
    // sees immutable bytes; an unlinked file stays mapped until the mapping drops.
    let map = unsafe { Mmap::map(&file)? };
    Ok(Bytes::from_owner(map))
}

/// Whether `path` is a segment file directly inside `dir` (a worker may name only
/// files of its own node's directory).
pub fn is_inside(dir: &Path, path: &Path) -> bool {
    path.parent() == Some(dir)
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_segment_maps_back_with_the_same_bytes() {
        let dir = std::env::temp_dir().join(format!("rayish-shm-test-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let value: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (path, bytes) = write_segment(&dir, ObjectId(1), &value).unwrap();
        assert_eq!(&bytes[..], &value[..]);
        let mapped = map_segment(&path, value.len() as u64).unwrap();
        assert_eq!(&mapped[..], &value[..]);
        assert!(map_segment(&path, 5).is_err(), "a wrong size is refused");
        assert!(is_inside(&dir, &path));
        assert!(!is_inside(&dir, Path::new("/etc/passwd")));
        // Unlinked, the mapping still reads.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&mapped[..10], &value[..10]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
