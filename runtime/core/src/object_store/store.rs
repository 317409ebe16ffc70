//! A node's object store: the values of large objects made or pulled here.
//!
//! Values are immutable once stored and shared by reference count, so serving one to
//! several readers at once copies nothing until it reaches a socket.
//!
//! With a shared-memory directory (`StoreConfig::shm_dir`, every real node has one),
//! each value in memory is a file on tmpfs mapped by the store ([`super::shm`]): the
//! node's workers map the same file instead of receiving a copy, and a pulled object is
//! written there chunk by chunk as it arrives ([`ObjectStore::new_value`]), so a node
//! never holds a second copy of what it receives.
//!
//! Memory is capped (`rayish start --object-store-memory`). An object that would take
//! the store over its cap first pushes the oldest objects in memory out to files in
//! the node's spill directory (`<session>/spill/<node>/`), oldest first; an object
//! larger than the whole cap goes straight to a file. A spilled object is mapped from
//! its file on each `get` (it is not re-admitted, so reading does not churn the store).
//! Removing an object deletes its files; dropping the store deletes the directories.
//! Spill writes happen under the store's lock: simple, and correct, at the price of
//! stalling other store calls while a spill is written.
//!
//! A freed value's segment is kept for the next value of about its size, if no other
//! process ever mapped it (no worker read it): the kernel zeroes every page of a new
//! tmpfs file on first touch, which costs more than copying the value in, while a
//! recycled segment's pages are already there (Ray's plasma store gets the same from
//! one arena). Free segments count against the memory cap, go first when room is
//! needed, are held up to a quarter of the cap, and are deleted after
//! [`FREE_SEGMENT_IDLE`] unused ([`ObjectStore::trim_free`]). Workers get them too:
//! a worker about to `put` a large value asks the node to lend it one
//! ([`ObjectStore::lend`]) and hands it back filled.

use super::shm::{map_segment, Segment, SegmentView};
use crate::ids::ObjectId;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a free segment waits for a new value before it is deleted.
pub const FREE_SEGMENT_IDLE: Duration = Duration::from_secs(10);

/// Why a value could not be stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Over the memory cap and the spill file could not be written.
    #[error("object store full: {needed} bytes do not fit in {capacity} bytes of memory and spilling failed: {reason}")]
    Full {
        /// Size of the value.
        needed: u64,
        /// The memory cap.
        capacity: u64,
        /// Why spilling failed.
        reason: String,
    },
    /// Shared memory could not be had for a value.
    #[error("object store: shared memory for {needed} bytes: {reason}")]
    SharedMemory {
        /// Size of the value.
        needed: u64,
        /// The system's answer.
        reason: String,
    },
}

/// How large the store may grow and where it keeps and spills values.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Bytes of values kept in memory.
    pub capacity: u64,
    /// Where spilled values go; `None`: never spill (values over the cap are refused).
    pub spill_dir: Option<PathBuf>,
    /// Where values in memory live as shared files; `None`: on this process's heap.
    pub shm_dir: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            capacity: u64::MAX,
            spill_dir: None,
            shm_dir: None,
        }
    }
}

#[derive(Debug)]
enum Slot {
    Memory {
        bytes: Bytes,
        /// The segment behind `bytes`, when in shared memory.
        segment: Option<Arc<Segment>>,
        /// Whether a worker was told where to map it (then it is never recycled).
        exposed: bool,
    },
    Spilled {
        path: PathBuf,
        len: u64,
    },
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<ObjectId, Slot>,
    /// In-memory objects, oldest first (spill order). May hold ids since removed or
    /// spilled; those are skipped.
    age: VecDeque<ObjectId>,
    memory_bytes: u64,
    spilled_bytes: u64,
    /// Segments of freed values, oldest first, with when they were freed.
    free: VecDeque<(Segment, Instant)>,
    free_bytes: u64,
    /// Segments taken from `free` since the store began.
    reused: u64,
    /// Free segments lent to workers to fill, by path, until handed back.
    lent: HashMap<PathBuf, Segment>,
}

impl Inner {
    /// Takes the smallest free segment that holds `len` bytes without wasting more
    /// than half of it.
    fn take_free(&mut self, len: usize) -> Option<Segment> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| s.len() >= len && s.len() / 2 <= len)
            .min_by_key(|(_, (s, _))| s.len())
            .map(|(i, _)| i)?;
        let (segment, _) = self.free.remove(best)?;
        self.free_bytes -= segment.len() as u64;
        self.reused += 1;
        Some(segment)
    }

    /// Deletes free segments, oldest first, until `keep` says stop.
    fn drop_free_while(&mut self, mut keep: impl FnMut(&Inner, &Instant) -> bool) {
        while let Some((_, freed)) = self.free.front() {
            if keep(self, freed) {
                break;
            }
            if let Some((segment, _)) = self.free.pop_front() {
                self.free_bytes -= segment.len() as u64;
                segment.unlink();
            }
        }
    }
}

/// A value being written into the store (a pull in progress, say): fill
/// [`Self::bytes_mut`], then [`ObjectStore::insert_written`].
pub enum ValueWriter {
    /// A shared segment.
    Segment(Segment),
    /// Heap memory (a store without a shared-memory directory).
    Heap(Vec<u8>),
}

impl ValueWriter {
    /// The bytes to fill.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            ValueWriter::Segment(s) => s.bytes_mut(),
            ValueWriter::Heap(v) => v,
        }
    }

    /// Abandons the value.
    pub fn discard(self) {
        if let ValueWriter::Segment(s) = self {
            s.unlink();
        }
    }
}

/// Where a worker on this node can read a stored value without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedValue {
    /// The file to map.
    pub path: PathBuf,
    /// Its size.
    pub len: u64,
}

/// The store.
#[derive(Debug, Default)]
pub struct ObjectStore {
    config: StoreConfig,
    inner: Mutex<Inner>,
}

impl ObjectStore {
    /// A store with a memory cap, a spill directory and a shared-memory directory.
    pub fn new(config: StoreConfig) -> Self {
        if let Some(dir) = &config.shm_dir {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::error!(dir = %dir.display(), "shared-memory directory: {e}");
            }
        }
        ObjectStore {
            config,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Bytes of values it keeps in memory at most.
    pub fn capacity(&self) -> u64 {
        self.config.capacity
    }

    /// The shared-memory directory workers of this node write their values into.
    pub fn shm_dir(&self) -> Option<&Path> {
        self.config.shm_dir.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps (no partial updates
        // across an await or a fallible step), so the poison can be ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A segment for `len` bytes of `id` in `dir`: a free one if one fits, else new.
    fn segment(&self, dir: &Path, id: ObjectId, len: usize) -> Result<Segment, StoreError> {
        if let Some(segment) = self.recycled(dir, id, len) {
            return Ok(segment);
        }
        Segment::create(dir, id, len).map_err(|e| StoreError::SharedMemory {
            needed: len as u64,
            reason: e.to_string(),
        })
    }

    /// Room for a value of `len` bytes that will be stored as `id`: a shared segment
    /// (a free one if one fits) if the store has a directory for them, else heap
    /// memory.
    pub fn new_value(&self, id: ObjectId, len: usize) -> Result<ValueWriter, StoreError> {
        match &self.config.shm_dir {
            Some(dir) => self.segment(dir, id, len).map(ValueWriter::Segment),
            None => Ok(ValueWriter::Heap(vec![0; len])),
        }
    }

    /// Stores a value filled through [`Self::new_value`].
    pub fn insert_written(&self, id: ObjectId, value: ValueWriter) -> Result<(), StoreError> {
        match value {
            ValueWriter::Heap(v) => self.insert_slot(id, Bytes::from(v), None),
            ValueWriter::Segment(s) => self.insert_owned(id, s),
        }
    }

    fn insert_owned(&self, id: ObjectId, segment: Segment) -> Result<(), StoreError> {
        let segment = Arc::new(segment);
        let bytes = Bytes::from_owner(SegmentView(segment.clone()));
        self.insert_slot(id, bytes, Some(segment))
    }

    /// Lends a free segment of about `len` bytes, renamed for `id`, to a worker of this
    /// node to fill and hand back through [`Self::insert_segment`]; `None` if none fits
    /// (the worker then makes its own).
    pub fn lend(&self, id: ObjectId, len: usize) -> Option<PathBuf> {
        let dir = self.config.shm_dir.as_deref()?;
        let segment = self.recycled(dir, id, len)?;
        let path = segment.path().to_path_buf();
        self.lock().lent.insert(path.clone(), segment);
        Some(path)
    }

    /// A free segment that holds `len` bytes, renamed and cut for `id`, if one fits.
    fn recycled(&self, dir: &Path, id: ObjectId, len: usize) -> Option<Segment> {
        let segment = self.lock().take_free(len)?;
        // Renaming or cutting a tmpfs file does not fail in practice; if it does, the
        // segment is deleted and the caller makes a new one.
        segment
            .recycle(dir, id, len)
            .map_err(|e| tracing::warn!("recycling a segment: {e}"))
            .ok()
    }

    /// Adopts a segment a worker of this node wrote (its `put` or its task's result).
    pub fn insert_segment(&self, id: ObjectId, path: PathBuf, len: u64) -> Result<(), StoreError> {
        let refuse = |reason: String| StoreError::SharedMemory {
            needed: len,
            reason,
        };
        let dir = self
            .config
            .shm_dir
            .as_deref()
            .ok_or_else(|| refuse("this store has no shared-memory directory".into()))?;
        if !super::shm::is_inside(dir, &path) {
            return Err(refuse(format!(
                "{} is not in this node's shared-memory directory",
                path.display()
            )));
        }
        let lent = self.lock().lent.remove(&path);
        let segment = match lent {
            Some(segment) if segment.len() as u64 == len => segment,
            Some(segment) => {
                segment.unlink();
                return Err(refuse(format!(
                    "{} holds {} bytes, not {len}",
                    path.display(),
                    segment.len()
                )));
            }
            // The worker made it and no longer maps it: this store now owns it.
            None => Segment::adopt(&path, len).map_err(|e| refuse(e.to_string()))?,
        };
        self.insert_owned(id, segment)
    }

    /// Stores `value` under `id`, spilling older objects (or this one) to disk if it
    /// does not fit in memory. A second store of the same id keeps the first value:
    /// objects are immutable.
    pub fn insert(&self, id: ObjectId, value: Bytes) -> Result<(), StoreError> {
        match &self.config.shm_dir {
            Some(dir) => {
                let mut segment = self.segment(dir, id, value.len())?;
                segment.bytes_mut().copy_from_slice(&value);
                self.insert_owned(id, segment)
            }
            None => self.insert_slot(id, value, None),
        }
    }

    fn insert_slot(
        &self,
        id: ObjectId,
        value: Bytes,
        segment: Option<Arc<Segment>>,
    ) -> Result<(), StoreError> {
        let len = value.len() as u64;
        let cap = self.config.capacity;
        let unlink = |segment: &Option<Arc<Segment>>| {
            if let Some(s) = segment {
                s.unlink();
            }
        };
        let mut inner = self.lock();
        if inner.slots.contains_key(&id) {
            unlink(&segment);
            return Ok(());
        }
        // Free segments give way before anything is spilled.
        inner.drop_free_while(|i, _| i.memory_bytes + i.free_bytes + len <= cap);
        let full = |reason: String| StoreError::Full {
            needed: len,
            capacity: cap,
            reason,
        };
        if len > cap {
            let written = self.write_spill(&id, &value);
            unlink(&segment);
            let path = written.map_err(full)?;
            inner.spilled_bytes += len;
            inner.slots.insert(id, Slot::Spilled { path, len });
            return Ok(());
        }
        while inner.memory_bytes + len > cap {
            let Some(&victim) = inner.age.front() else {
                break;
            };
            let Some(Slot::Memory {
                bytes,
                segment: vsegment,
                ..
            }) = inner.slots.get(&victim)
            else {
                inner.age.pop_front(); // removed or spilled since
                continue;
            };
            let (bytes, vsegment) = (bytes.clone(), vsegment.clone());
            // On failure the victim stays in memory and first in line.
            let path = match self.write_spill(&victim, &bytes) {
                Ok(path) => path,
                Err(e) => {
                    unlink(&segment);
                    return Err(full(e));
                }
            };
            unlink(&vsegment);
            inner.age.pop_front();
            let vlen = bytes.len() as u64;
            inner.memory_bytes -= vlen;
            inner.spilled_bytes += vlen;
            inner
                .slots
                .insert(victim, Slot::Spilled { path, len: vlen });
        }
        inner.memory_bytes += len;
        inner.age.push_back(id);
        inner.slots.insert(
            id,
            Slot::Memory {
                bytes: value,
                segment,
                exposed: false,
            },
        );
        Ok(())
    }

    fn write_spill(&self, id: &ObjectId, value: &[u8]) -> Result<PathBuf, String> {
        let dir = self
            .config
            .spill_dir
            .as_ref()
            .ok_or_else(|| "this store has no spill directory".to_string())?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(id.to_string());
        if let Err(e) = std::fs::write(&path, value) {
            // Cut short (ENOSPC, say): a partial file is of no use to anyone.
            let _ = std::fs::remove_file(&path);
            return Err(format!("{}: {e}", path.display()));
        }
        Ok(path)
    }

    /// The value of `id`, if held here (mapped from its spill file if spilled).
    pub fn get(&self, id: &ObjectId) -> Option<Bytes> {
        let inner = self.lock();
        match inner.slots.get(id)? {
            Slot::Memory { bytes, .. } => Some(bytes.clone()),
            Slot::Spilled { path, len } => match map_segment(path, *len) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::error!(object = ?id, path = %path.display(), "spilled object unreadable: {e}");
                    None
                }
            },
        }
    }

    /// Where a worker of this node can map `id` (its shared segment or spill file).
    pub fn shared(&self, id: &ObjectId) -> Option<SharedValue> {
        let mut inner = self.lock();
        match inner.slots.get_mut(id)? {
            Slot::Memory {
                segment, exposed, ..
            } => segment.as_ref().map(|s| {
                *exposed = true;
                SharedValue {
                    path: s.path().to_path_buf(),
                    len: s.len() as u64,
                }
            }),
            Slot::Spilled { path, len } => Some(SharedValue {
                path: path.clone(),
                len: *len,
            }),
        }
    }

    /// Whether `id` is held here.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.lock().slots.contains_key(id)
    }

    /// Drops `id` (and its files).
    pub fn remove(&self, id: &ObjectId) {
        let mut inner = self.lock();
        match inner.slots.remove(id) {
            Some(Slot::Memory {
                bytes,
                segment,
                exposed,
            }) => {
                let len = bytes.len() as u64;
                inner.memory_bytes -= len;
                drop(bytes);
                if let Some(segment) = segment {
                    self.free_segment(&mut inner, segment, exposed);
                }
            }
            Some(Slot::Spilled { path, len }) => {
                inner.spilled_bytes -= len;
                remove_file(Some(&path));
            }
            None => {}
        }
        // Drop stale ids now and then, so that the queue stays proportional to what is
        // held even when the store never fills up (amortised O(1) per removal).
        if inner.age.len() > 2 * inner.slots.len() + 1024 {
            let Inner { slots, age, .. } = &mut *inner;
            age.retain(|id| matches!(slots.get(id), Some(Slot::Memory { .. })));
        }
    }

    /// Keeps a freed value's segment for reuse if nobody else can still see it and
    /// there is room; deletes it otherwise.
    fn free_segment(&self, inner: &mut Inner, segment: Arc<Segment>, exposed: bool) {
        let cap = self.config.capacity;
        let len = segment.len() as u64;
        let fits =
            |i: &Inner| i.free_bytes + len <= cap / 4 && i.memory_bytes + i.free_bytes + len <= cap;
        // A reader in this process (a transfer in progress, say) still holds a view
        // when the Arc is shared; a worker may still map it when exposed.
        match Arc::try_unwrap(segment) {
            Ok(segment) if !exposed && len > 0 && len <= cap / 4 => {
                inner.drop_free_while(|i, _| fits(i));
                if !fits(inner) {
                    segment.unlink();
                    return;
                }
                match segment.retire() {
                    Ok(segment) => {
                        inner.free_bytes += len;
                        inner.free.push_back((segment, Instant::now()));
                    }
                    Err(e) => tracing::warn!("keeping a free segment: {e}"),
                }
            }
            Ok(segment) => segment.unlink(),
            Err(shared) => shared.unlink(),
        }
    }

    /// Deletes free segments unused for `idle`, giving their memory back.
    pub fn trim_free(&self, idle: Duration) {
        let now = Instant::now();
        self.lock()
            .drop_free_while(|_, freed| now.duration_since(*freed) < idle);
    }

    /// Bytes of free segments kept for reuse.
    pub fn free_bytes(&self) -> u64 {
        self.lock().free_bytes
    }

    /// Values written into reused segments since the store began.
    pub fn reused(&self) -> u64 {
        self.lock().reused
    }

    /// Every object held (in memory or spilled), with its size.
    pub fn inventory(&self) -> Vec<(ObjectId, u64)> {
        self.lock()
            .slots
            .iter()
            .map(|(id, slot)| {
                let len = match slot {
                    Slot::Memory { bytes, .. } => bytes.len() as u64,
                    Slot::Spilled { len, .. } => *len,
                };
                (*id, len)
            })
            .collect()
    }

    /// Objects held (in memory or spilled).
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.lock().slots.is_empty()
    }

    /// Bytes held, in memory and spilled.
    pub fn bytes(&self) -> u64 {
        let inner = self.lock();
        inner.memory_bytes + inner.spilled_bytes
    }

    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> u64 {
        self.lock().memory_bytes
    }

    /// Bytes held in spill files.
    pub fn spilled_bytes(&self) -> u64 {
        self.lock().spilled_bytes
    }
}

/// Deletes a store file; mappings of it stay valid until dropped.
fn remove_file(path: Option<&Path>) {
    if let Some(path) = path {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), "removing a store file: {e}");
        }
    }
}

impl ObjectStore {
    /// Drops every value and removes the store's directories (shared memory and
    /// spill): the node's incarnation ended (it rejoins as a new node, or exits).
    /// Views already handed out stay valid (their files are unlinked, not unmapped).
    pub fn close(&self) {
        let old = std::mem::take(&mut *self.lock());
        drop(old);
        for dir in [&self.config.spill_dir, &self.config.shm_dir]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("rayish-store-{tag}-{}", std::process::id()))
    }

    fn value(n: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..n)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect::<Vec<_>>(),
        )
    }

    fn files(d: &std::path::Path) -> usize {
        std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0)
    }

    #[test]
    fn a_spill_cut_short_by_a_full_disk_leaves_no_file() {
        // A 64 KiB tmpfs as the spill directory (needs root; skipped without).
        let d = dir("full");
        std::fs::create_dir_all(&d).expect("dir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&d)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (not root?)");
            return;
        }
        let store = ObjectStore::new(StoreConfig {
            capacity: 1000,
            spill_dir: Some(d.join("spill")),
            shm_dir: None,
        });
        let err = store.insert(ObjectId::random(), value(1 << 20, 1));
        assert!(err.is_err(), "a 1 MiB value cannot spill to 64 KiB");
        assert_eq!(
            files(&d.join("spill")),
            0,
            "the partial spill file was removed"
        );
        let _ = std::process::Command::new("umount").arg(&d).status();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn spills_oldest_first_reads_back_and_cleans_up() {
        let d = dir("spill");
        let store = ObjectStore::new(StoreConfig {
            capacity: 100,
            spill_dir: Some(d.clone()),
            shm_dir: None,
        });
        let ids: Vec<ObjectId> = (0..3).map(|_| ObjectId::random()).collect();
        for (k, id) in ids.iter().enumerate() {
            store.insert(*id, value(60, k as u8)).expect("insert");
        }
        // 3 × 60 bytes in a 100-byte store: the first two went to disk, oldest first.
        assert_eq!((store.memory_bytes(), store.spilled_bytes()), (60, 120));
        assert_eq!(files(&d), 2);
        for (k, id) in ids.iter().enumerate() {
            assert_eq!(store.get(id).expect("held"), value(60, k as u8));
        }
        // Larger than the whole store: straight to disk, memory untouched.
        let big = ObjectId::random();
        store.insert(big, value(500, 9)).expect("insert big");
        assert_eq!(store.memory_bytes(), 60);
        assert_eq!(store.get(&big).expect("big"), value(500, 9));
        for id in ids.iter().chain([&big]) {
            store.remove(id);
        }
        assert_eq!((store.len(), store.bytes(), files(&d)), (0, 0, 0));
        drop(store);
        assert!(!d.exists(), "the spill directory outlived its store");
    }

    #[test]
    fn the_spill_queue_stays_proportional_to_what_is_held() {
        let store = ObjectStore::default();
        let kept = ObjectId::random();
        store.insert(kept, value(4, 0)).expect("insert");
        for _ in 0..10_000 {
            let id = ObjectId::random();
            store.insert(id, value(4, 1)).expect("insert");
            store.remove(&id);
        }
        let queued = store.lock().age.len();
        assert!(
            queued <= 2 * store.len() + 1025,
            "{queued} ids queued for 1 object"
        );
        assert_eq!(store.get(&kept).expect("kept"), value(4, 0));
    }

    #[test]
    fn without_room_to_spill_the_error_says_so() {
        let store = ObjectStore::new(StoreConfig {
            capacity: 10,
            spill_dir: None,
            shm_dir: None,
        });
        store.insert(ObjectId::random(), value(8, 0)).expect("fits");
        match store.insert(ObjectId::random(), value(8, 1)) {
            Err(StoreError::Full {
                needed: 8,
                capacity: 10,
                reason,
            }) => {
                assert!(reason.contains("no spill directory"), "{reason}")
            }
            other => panic!("expected Full, got {other:?}"),
        }
        // Nothing was lost: the first object is still there.
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn shared_values_are_files_that_move_to_disk_when_spilled_and_vanish_when_removed() {
        let shm = dir("shm");
        let spill = dir("shm-spill");
        let store = ObjectStore::new(StoreConfig {
            capacity: 100,
            spill_dir: Some(spill.clone()),
            shm_dir: Some(shm.clone()),
        });
        let (a, b) = (ObjectId::random(), ObjectId::random());
        store.insert(a, value(60, 1)).expect("insert a");
        let shared_a = store.shared(&a).expect("a is shared");
        assert_eq!(shared_a.len, 60);
        assert!(shared_a.path.starts_with(&shm));
        assert_eq!((files(&shm), files(&spill)), (1, 0));
        // A worker's segment is adopted in place.
        let path =
            crate::object_store::shm::write_segment(&shm, b, &value(60, 2)).expect("segment");
        store.insert_segment(b, path, 60).expect("adopt b");
        // b pushed a out to disk: a's shared file is gone, its spill file mapped back.
        assert_eq!((files(&shm), files(&spill)), (1, 1));
        assert_eq!(store.get(&a).expect("a"), value(60, 1));
        assert!(store.shared(&a).expect("a").path.starts_with(&spill));
        assert_eq!(store.get(&b).expect("b"), value(60, 2));
        // A segment outside the node's directory is refused.
        let outside = spill.join("elsewhere");
        std::fs::write(&outside, value(10, 3)).expect("file");
        assert!(store
            .insert_segment(ObjectId::random(), outside.clone(), 10)
            .is_err());
        std::fs::remove_file(outside).expect("cleanup");
        store.remove(&a);
        store.remove(&b);
        assert_eq!((files(&shm), files(&spill), store.bytes()), (0, 0, 0));
        drop(store);
        assert!(
            !shm.exists() && !spill.exists(),
            "directories outlived the store"
        );
    }

    fn free_files(d: &std::path::Path) -> usize {
        std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".free-"))
                    .count()
            })
            .unwrap_or(0)
    }

    #[test]
    fn a_freed_segment_nobody_else_saw_is_reused_and_one_others_saw_is_not() {
        let shm = dir("recycle-shm");
        let store = ObjectStore::new(StoreConfig {
            capacity: 1000,
            spill_dir: None,
            shm_dir: Some(shm.clone()),
        });
        // Freed and unseen: kept, hidden, counted.
        let a = ObjectId::random();
        store.insert(a, value(200, 1)).expect("insert a");
        store.remove(&a);
        assert_eq!(
            (files(&shm), free_files(&shm), store.free_bytes()),
            (1, 1, 200)
        );
        // Taken by a smaller value (cut to its size), which reads back right.
        let b = ObjectId::random();
        let mut w = store.new_value(b, 150).expect("room for b");
        w.bytes_mut().copy_from_slice(&value(150, 2));
        store.insert_written(b, w).expect("insert b");
        assert_eq!(
            (free_files(&shm), store.free_bytes(), store.reused()),
            (0, 0, 1)
        );
        assert_eq!(store.get(&b).expect("b"), value(150, 2));
        let shared_b = store.shared(&b).expect("b is shared");
        assert_eq!(
            std::fs::metadata(&shared_b.path).expect("b's file").len(),
            150
        );
        // b was shown to a worker: freed, it is deleted, not kept.
        store.remove(&b);
        assert_eq!((files(&shm), store.free_bytes()), (0, 0));
        // A value still read in this process when freed is deleted, and stays readable.
        let c = ObjectId::random();
        store.insert(c, value(200, 3)).expect("insert c");
        let reading = store.get(&c).expect("c");
        store.remove(&c);
        assert_eq!((files(&shm), store.free_bytes()), (0, 0));
        assert_eq!(reading, value(200, 3));
        // Lent to a worker, filled, handed back under the name lent.
        let d = ObjectId::random();
        store.insert(d, value(200, 4)).expect("insert d");
        store.remove(&d);
        let e = ObjectId::random();
        assert!(
            store.lend(e, 50).is_none(),
            "a segment over twice the value's size is not lent"
        );
        let path = store.lend(e, 180).expect("a segment to fill");
        assert!(crate::object_store::shm::is_inside(&shm, &path));
        {
            let mut map = crate::object_store::shm::map_segment_mut(&path, 180).expect("map lent");
            map.copy_from_slice(&value(180, 5));
        }
        store.insert_segment(e, path, 180).expect("hand back");
        assert_eq!(store.get(&e).expect("e"), value(180, 5));
        store.remove(&e);
        assert_eq!(store.free_bytes(), 180);
        // Values too large for a quarter of the cap are not kept.
        let f = ObjectId::random();
        store.insert(f, value(300, 6)).expect("insert f");
        store.remove(&f);
        assert_eq!(store.free_bytes(), 180);
        // Free segments give way to values that need the memory.
        let g = ObjectId::random();
        store.insert(g, value(900, 7)).expect("insert g");
        assert_eq!((free_files(&shm), store.free_bytes()), (0, 0));
        store.remove(&g);
        // And go when idle.
        let h = ObjectId::random();
        store.insert(h, value(100, 8)).expect("insert h");
        store.remove(&h);
        assert_eq!(store.free_bytes(), 100);
        store.trim_free(Duration::from_secs(3600));
        assert_eq!(store.free_bytes(), 100, "not idle for an hour yet");
        store.trim_free(Duration::ZERO);
        assert_eq!((files(&shm), store.free_bytes()), (0, 0));
    }
}
