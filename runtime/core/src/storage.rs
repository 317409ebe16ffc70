//! The head's durable storage: an embedded transactional store (redb) in the head's
//! storage directory (`--storage-path`), which a restarted head opens again. It
//! holds what cannot be rebuilt from the nodes and drivers: the cluster's identity
//! and head starts, the job table (Ray keeps the same in its GCS tables, in Redis
//! when made fault tolerant; rayish needs nothing extra to run).
//!
//! Tables map string keys to JSON records. Writes are queued and committed by one
//! writer thread, everything queued at once in one transaction, so a caller on a hot
//! path never waits for the disk; [`Storage::flush`] waits until what was queued
//! before it is durable.
//!
//! Invariant: writes are applied in the order they were queued, and a transaction
//! is either whole on disk or absent (redb commits with a checksummed, synced
//! root), so after any crash the store holds a prefix of the queued writes.

pub use crate::protocol::HeadStarts;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use thiserror::Error;

/// The database file's name in the storage directory.
pub const DATABASE_FILE: &str = "head.redb";

/// The cluster's identity: its token (`token`) and the head's starts
/// (`head_starts`, a [`HeadStarts`]).
pub const CLUSTER_TABLE: &str = "cluster";

/// The job table: a record per submission id.
pub const JOBS_TABLE: &str = "jobs";

/// Every node the head has seen join, by node id (the newest dead ones only, as the
/// head lists them).
pub const NODES_TABLE: &str = "nodes";

/// Every driver's job the head lists, by job id (the newest ended ones only).
pub const DRIVER_JOBS_TABLE: &str = "driver_jobs";

/// Every actor not dead, detached or its driver's, by actor id: its creation, so a
/// restarted head takes it back from its node or creates it again.
pub const ACTORS_TABLE: &str = "actors";

/// Why the store failed.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The directory or file could not be made or opened.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
    /// The database refused (it is damaged, or another head holds it).
    #[error("the head's storage {path}: {message}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        message: String,
    },
    /// The writer thread is gone (the store is closing).
    #[error("the head's storage is closed")]
    Closed,
}

/// One queued change.
enum Op {
    Put {
        table: &'static str,
        key: String,
        value: Vec<u8>,
    },
    Delete {
        table: &'static str,
        key: String,
    },
    /// Answered once everything queued before it is committed.
    Flush(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// The head's store; clones share it. When the last clone goes, what was queued is
/// committed and the database closed (its lock released) before the drop returns.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<redb::Database>,
    queue: Option<mpsc::Sender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has committed the rest.
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// A table as a read transaction sees it.
type RecordTable = redb::ReadOnlyTable<&'static str, &'static [u8]>;

/// What a flush is answered with: whether its commit succeeded.
type FlushAnswer = tokio::sync::oneshot::Receiver<Result<(), String>>;

fn definition(table: &str) -> redb::TableDefinition<'_, &'static str, &'static [u8]> {
    redb::TableDefinition::new(table)
}

impl Storage {
    /// Opens (or creates) the store in `dir`, made private (0700, the file 0600: it
    /// holds the job table, whose entrypoints and environments may be secret). Fails
    /// if another head holds it. A relative `dir` is taken from the current
    /// directory once, here: paths under it are handed to processes that run
    /// elsewhere (job entrypoints).
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let dir = &std::path::absolute(dir).map_err(|source| StorageError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        crate::session::ensure_private_dir(dir).map_err(|e| StorageError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let path = dir.join(DATABASE_FILE);
        // Made 0600 before redb writes anything into it.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StorageError::Io {
                path: path.clone(),
                source,
            })?;
        let db = redb::Database::create(&path).map_err(|e| StorageError::Database {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let db = Arc::new(db);
        let (queue, ops) = mpsc::channel();
        let writer_db = Arc::clone(&db);
        let writer = std::thread::Builder::new()
            .name("rayish-storage".into())
            .spawn(move || write_loop(&writer_db, &ops))
            .map_err(|source| StorageError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                queue: Some(queue),
                writer: Some(writer),
                dir: dir.to_path_buf(),
            }),
        })
    }

    /// The storage directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn send(&self, op: Op) -> Result<(), StorageError> {
        match &self.inner.queue {
            Some(queue) => queue.send(op).map_err(|_| StorageError::Closed),
            None => Err(StorageError::Closed),
        }
    }

    /// Queues `value` as `table`'s record for `key`; durable after the next commit.
    pub fn put<V: Serialize>(&self, table: &'static str, key: &str, value: &V) {
        match serde_json::to_vec(value) {
            Ok(value) => {
                let _ = self.send(Op::Put {
                    table,
                    key: key.to_string(),
                    value,
                });
            }
            Err(e) => tracing::error!(table, key, "a record could not be encoded: {e}"),
        }
    }

    /// Queues the removal of `table`'s record for `key`.
    pub fn delete(&self, table: &'static str, key: &str) {
        let _ = self.send(Op::Delete {
            table,
            key: key.to_string(),
        });
    }

    /// Waits until everything queued before this call is on disk.
    pub async fn flush(&self) -> Result<(), StorageError> {
        let committed = self.queue_flush()?;
        self.flushed(committed.await)
    }

    /// [`Self::flush`] for a caller outside any async runtime.
    pub fn flush_blocking(&self) -> Result<(), StorageError> {
        let committed = self.queue_flush()?;
        self.flushed(committed.blocking_recv())
    }

    /// Queues a flush; its answer comes once what was queued before is committed.
    fn queue_flush(&self) -> Result<FlushAnswer, StorageError> {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.send(Op::Flush(done))?;
        Ok(committed)
    }

    fn flushed(
        &self,
        answer: Result<Result<(), String>, tokio::sync::oneshot::error::RecvError>,
    ) -> Result<(), StorageError> {
        answer
            .map_err(|_| StorageError::Closed)?
            .map_err(|message| self.database_error(message))
    }

    fn database_error(&self, message: String) -> StorageError {
        StorageError::Database {
            path: self.inner.dir.join(DATABASE_FILE),
            message,
        }
    }

    /// Runs `read` on `table` as last committed; `None` if the table was never
    /// written.
    fn read_table<R>(
        &self,
        table: &'static str,
        read: impl FnOnce(&RecordTable) -> Result<R, redb::StorageError>,
    ) -> Result<Option<R>, StorageError> {
        use redb::ReadableDatabase;
        let failed = |e: &dyn std::fmt::Display| self.database_error(e.to_string());
        let txn = self.inner.db.begin_read().map_err(|e| failed(&e))?;
        match txn.open_table(definition(table)) {
            Ok(t) => read(&t).map(Some).map_err(|e| failed(&e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(failed(&e)),
        }
    }

    /// Every committed record of `table`, in key order. A record that does not
    /// decode as `V` is skipped with a warning: it costs only itself.
    pub fn all<V: DeserializeOwned>(
        &self,
        table: &'static str,
    ) -> Result<Vec<(String, V)>, StorageError> {
        use redb::ReadableTable;
        let rows = self.read_table(table, |t| {
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                match serde_json::from_slice(v.value()) {
                    Ok(value) => out.push((k.value().to_string(), value)),
                    Err(e) => {
                        tracing::warn!(table, key = k.value(), "a stored record is unreadable: {e}")
                    }
                }
            }
            Ok(out)
        })?;
        Ok(rows.unwrap_or_default())
    }

    /// Counts a start of the head at `now_ms` and makes it durable; the starts so far.
    pub async fn record_head_start(&self, now_ms: u64) -> Result<HeadStarts, StorageError> {
        let before: Option<HeadStarts> = self.get(CLUSTER_TABLE, "head_starts")?;
        let starts = match before {
            Some(b) => HeadStarts {
                count: b.count + 1,
                first_ms: b.first_ms,
                last_ms: now_ms,
            },
            None => HeadStarts {
                count: 1,
                first_ms: now_ms,
                last_ms: now_ms,
            },
        };
        self.put(CLUSTER_TABLE, "head_starts", &starts);
        self.flush().await?;
        Ok(starts)
    }

    /// `table`'s committed record for `key`, if there is one that decodes as `V`.
    pub fn get<V: DeserializeOwned>(
        &self,
        table: &'static str,
        key: &str,
    ) -> Result<Option<V>, StorageError> {
        use redb::ReadableTable;
        let found = self.read_table(table, |t| {
            Ok(t.get(key)?
                .and_then(|v| serde_json::from_slice(v.value()).ok()))
        })?;
        Ok(found.flatten())
    }
}

/// The writer thread: takes everything queued, commits it as one transaction, then
/// answers the flushes among it; ends when every [`Storage`] is dropped.
fn write_loop(db: &redb::Database, ops: &mpsc::Receiver<Op>) {
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        batch.extend(ops.try_iter());
        let mut flushes = Vec::new();
        let mut changes = Vec::new();
        for op in batch {
            match op {
                Op::Flush(done) => flushes.push(done),
                change => changes.push(change),
            }
        }
        let result = if changes.is_empty() {
            Ok(())
        } else {
            commit(db, changes).map_err(|e| e.to_string())
        };
        if let Err(e) = &result {
            tracing::error!("the head's storage could not commit: {e}");
        }
        for done in flushes {
            let _ = done.send(result.clone());
        }
    }
}

fn commit(db: &redb::Database, changes: Vec<Op>) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    for op in changes {
        match op {
            Op::Put { table, key, value } => {
                txn.open_table(definition(table))?
                    .insert(key.as_str(), value.as_slice())?;
            }
            Op::Delete { table, key } => {
                txn.open_table(definition(table))?.remove(key.as_str())?;
            }
            Op::Flush(_) => {}
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "rayish-storage-{name}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn records_survive_a_reopen_in_the_order_they_were_written() {
        let dir = temp("reopen");
        {
            let s = Storage::open(&dir).expect("open");
            s.put("jobs", "a", &1u32);
            s.put("jobs", "b", &2u32);
            s.put("jobs", "a", &3u32);
            s.delete("jobs", "b");
            s.put("other", "c", &"x");
            s.flush_blocking().expect("flush");
            assert_eq!(s.get::<u32>("jobs", "a").expect("get"), Some(3));
        }
        let s = Storage::open(&dir).expect("reopen");
        let jobs: Vec<(String, u32)> = s.all("jobs").expect("all");
        assert_eq!(jobs, vec![("a".to_string(), 3)]);
        assert_eq!(
            s.all::<String>("other").expect("all"),
            vec![("c".into(), "x".into())]
        );
        assert!(s.all::<u32>("missing").expect("all").is_empty());
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(DATABASE_FILE)), 0o600);
    }

    #[test]
    fn a_record_of_another_shape_costs_only_itself() {
        let dir = temp("shape");
        let s = Storage::open(&dir).expect("open");
        s.put("t", "good", &7u32);
        s.put("t", "bad", &"not a number");
        s.flush_blocking().expect("flush");
        assert_eq!(
            s.all::<u32>("t").expect("all"),
            vec![("good".to_string(), 7)]
        );
    }

    #[test]
    fn a_second_head_cannot_open_a_store_in_use() {
        let dir = temp("locked");
        let _first = Storage::open(&dir).expect("open");
        let second = Storage::open(&dir);
        assert!(
            matches!(second, Err(StorageError::Database { .. })),
            "{second:?}"
        );
    }

    #[test]
    fn many_writes_from_many_threads_are_all_kept() {
        let dir = temp("threads");
        let s = Storage::open(&dir).expect("open");
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..250 {
                        s.put("t", &format!("{t}-{i:03}"), &i);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        s.flush_blocking().expect("flush");
        assert_eq!(s.all::<u32>("t").expect("all").len(), 1000);
    }
}
