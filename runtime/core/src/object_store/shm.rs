//! Shared-memory segments: how a node and the workers it started hand large values to
//! each other without copying them through a socket.
//!
//! Each node owns a directory on tmpfs (`/dev/shm/rayish-<pid>-<node>`). A large value
//! lives in one file there; whoever holds it maps the file. The node's store maps what
//! it holds; a worker reading an argument or a `get` result maps the same file
//! read-only; a worker returning or `put`ting a large value writes a file there (a new
//! one, or a free one the node lends it) and
//! tells the node its name, and the node adopts it. Removing an object unlinks its file;
//! mappings already made stay valid until dropped (POSIX semantics), so a reader never
//! sees a value vanish under it.
//!
//! A segment no other process has mapped can instead be recycled for a later value
//! (renamed, cut to size, rewritten): the node's store keeps such segments for a while
//! because the kernel zeroes each page of a new tmpfs file on first touch, which costs
//! more than the copy of the value itself. Recycling never touches a file a worker was
//! told to read.
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

/// A segment this process created: a file of a fixed size, mapped writable. While it
/// is being filled only this process knows its name; once stored, the store hands out
/// read-only views of it ([`SegmentView`]) and may later recycle it for another value
/// ([`Segment::recycle`]) if no other process ever mapped it, so that its pages, already
/// faulted in, are not zeroed again by the kernel.
pub struct Segment {
    path: PathBuf,
    file: File,
    map: MmapMut,
    len: usize,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

/// A fresh name for a segment of `id` (the random part keeps two writers of one
/// object, such as a retried task, from sharing a file).
fn segment_path(dir: &Path, id: ObjectId) -> PathBuf {
    dir.join(format!("{id}-{:08x}", rand::random::<u32>()))
}

impl Segment {
    /// Creates a new file of `len` bytes in `dir` for `id`, mapped writable.
    pub fn create(dir: &Path, id: ObjectId, len: usize) -> std::io::Result<Self> {
        let path = segment_path(dir, id);
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
            // other process knows its name until this segment is stored. Populated:
            // every page is about to be written, and one call that allocates them all
            // costs far less than a page fault per 4 KiB (most of all in a VM).
            unsafe { memmap2::MmapOptions::new().populate().map_mut(&file)? }
        };
        Ok(Self {
            path,
            file,
            map,
            len,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value's size (the file's).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, to fill.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map[..self.len]
    }

    /// Takes this segment, whose value is gone, for a new value `id` of `len` bytes
    /// (no more than its size): the file is renamed (a name is never reused) and cut
    /// to `len`, and the pages that stay are neither unmapped nor zeroed.
    ///
    /// Only for a segment no other process has mapped: one that had would see the new
    /// value change under it. On failure the file is deleted.
    pub fn recycle(mut self, dir: &Path, id: ObjectId, len: usize) -> std::io::Result<Self> {
        if len > self.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a {}-byte segment cannot hold {len} bytes", self.len),
            ));
        }
        let path = segment_path(dir, id);
        let renamed = std::fs::rename(&self.path, &path).map(|()| self.path = path);
        // The mapping keeps its length; bytes past `len` are never touched again.
        let cut = renamed.and_then(|()| {
            if len < self.len {
                self.file.set_len(len as u64).map(|()| self.len = len)
            } else {
                Ok(())
            }
        });
        match cut {
            Ok(()) => Ok(self),
            Err(e) => {
                // Whatever its name now, the file must not outlive the segment.
                self.unlink();
                Err(e)
            }
        }
    }

    /// Takes over a segment another process of this node created and filled, and no
    /// longer maps: mapped here (writable, for a later [`Self::recycle`]) but not
    /// touched. A file of another size than `len` is refused.
    pub fn adopt(path: &Path, len: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        check_len(&file, path, len)?;
        let map = if len == 0 {
            MmapMut::map_anon(0)?
        } else {
            // SAFETY: the writer handed the file over when done and keeps no mapping
            // of it; from here on only this store writes it, and only when recycled.
            unsafe { MmapMut::map_mut(&file)? }
        };
        Ok(Self {
            path: path.to_path_buf(),
            file,
            map,
            len: len as usize,
        })
    }

    /// Renames a segment whose value is gone to a hidden name (`.free-…`), which no
    /// worker can name in a hand-over, until it is recycled.
    pub fn retire(mut self) -> std::io::Result<Self> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let path = dir.join(format!(".free-{:016x}", rand::random::<u64>()));
        std::fs::rename(&self.path, &path)?;
        self.path = path;
        Ok(self)
    }

    /// Deletes the file; views of it stay valid until dropped.
    pub fn unlink(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), "removing a segment: {e}");
        }
    }
}

/// A read-only view of a stored segment, the owner behind the store's `Bytes`.
#[derive(Debug, Clone)]
pub struct SegmentView(pub std::sync::Arc<Segment>);

impl AsRef<[u8]> for SegmentView {
    fn as_ref(&self) -> &[u8] {
        &self.0.map[..self.0.len]
    }
}

/// Writes `value` into a new segment in `dir` and returns its path (the mapping is
/// dropped: the reader is another process). Tests use it to play a worker.
#[cfg(test)]
pub fn write_segment(dir: &Path, id: ObjectId, value: &[u8]) -> std::io::Result<PathBuf> {
    let mut s = Segment::create(dir, id, value.len())?;
    s.bytes_mut().copy_from_slice(value);
    Ok(s.path)
}

/// Maps a segment another process handed over, writable, to fill it. `len` is the size
/// the other side declared; a file of another size is refused. The pages are faulted in
/// at once (a recycled segment's pages exist already; this just maps them in one go).
pub fn map_segment_mut(path: &Path, len: u64) -> std::io::Result<MmapMut> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    check_len(&file, path, len)?;
    if len == 0 {
        return MmapMut::map_anon(0);
    }
    // SAFETY: the node lent this file to this process alone, to fill; nobody else maps
    // it until it is handed back.
    unsafe { memmap2::MmapOptions::new().populate().map_mut(&file) }
}

fn check_len(file: &File, path: &Path, len: u64) -> std::io::Result<()> {
    let actual = file.metadata()?.len();
    if actual != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {actual} bytes, expected {len}", path.display()),
        ));
    }
    Ok(())
}

/// Maps an existing segment read-only. `len` is the size its writer declared; a file of
/// another size is refused (it is not the segment it claims to be).
pub fn map_segment(path: &Path, len: u64) -> std::io::Result<Bytes> {
    let file = File::open(path)?;
    check_len(&file, path, len)?;
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
        let path = write_segment(&dir, ObjectId(1), &value).unwrap();
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
