//! The content-addressed cache of job binaries.
//!
//! A driver's executable is the job's code. The head keeps the copy a driver uploads;
//! each node fetches it from the head the first time it must start a worker for that
//! job. Files are named by their SHA-256. A stored file was hashed as it was written;
//! a file found in the cache is hashed again ([`BinaryCache::verify`]) before a
//! process first runs it, and one that does not match is removed. The cache lives in
//! the temp root, which is this user's only (mode 0700), so nobody else can replace a
//! file after it was checked. A local-mode driver's own executable is run in place
//! ([`BinaryCache::register_in_place`]): nothing is copied.

use crate::ids::BinaryHash;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Why a binary could not be stored or read.
#[derive(Debug, Error)]
pub enum BinaryError {
    /// The name is not a SHA-256.
    #[error("{0:?} is not a SHA-256 binary hash")]
    BadHash(String),
    /// The bytes received do not hash to the announced name.
    #[error("binary content hashes to {actual}, not the announced {expected}")]
    HashMismatch {
        /// The announced hash.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The file system failed.
    #[error("binary cache {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A directory of executables named by their SHA-256.
#[derive(Debug, Clone)]
pub struct BinaryCache {
    dir: PathBuf,
    /// Executables run where they are (a local-mode driver's own), by hash.
    in_place: std::sync::Arc<dashmap::DashMap<BinaryHash, PathBuf>>,
    /// Files this process stored or hashed itself: trusted from then on.
    verified: std::sync::Arc<dashmap::DashSet<BinaryHash>>,
    /// Binaries of live jobs (counted): never evicted.
    pinned: std::sync::Arc<dashmap::DashMap<BinaryHash, usize>>,
    /// The most bytes of binaries kept; past it the least recently used go.
    cap: u64,
}

/// The default cap of a binary cache: `$RAYISH_BINARY_CACHE_BYTES`, else 4 GiB.
pub fn default_cache_cap() -> u64 {
    std::env::var("RAYISH_BINARY_CACHE_BYTES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(4 << 30)
}

/// A binary used this recently is never evicted (another node process of this
/// machine may be about to run it; using one touches its modification time).
const RECENT_USE: std::time::Duration = std::time::Duration::from_secs(600);

impl BinaryCache {
    /// A cache in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            in_place: Default::default(),
            verified: Default::default(),
            pinned: Default::default(),
            cap: default_cache_cap(),
        }
    }

    /// The same cache with at most `cap` bytes of binaries.
    pub fn with_cap(mut self, cap: u64) -> Self {
        self.cap = cap;
        self
    }

    /// A live job runs `hash`: it is not evicted until as many [`Self::unpin`]s.
    pub fn pin(&self, hash: &BinaryHash) {
        *self.pinned.entry(hash.clone()).or_default() += 1;
    }

    /// Undoes one [`Self::pin`].
    pub fn unpin(&self, hash: &BinaryHash) {
        if let dashmap::Entry::Occupied(mut e) = self.pinned.entry(hash.clone()) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Whether a live job of this process runs `hash`.
    pub fn is_pinned(&self, hash: &BinaryHash) -> bool {
        self.pinned.contains_key(hash)
    }

    /// [`Self::touch`]es every pinned binary.
    pub fn touch_pinned(&self) {
        let pinned: Vec<BinaryHash> = self.pinned.iter().map(|e| e.key().clone()).collect();
        for hash in pinned {
            self.touch(&hash);
        }
    }

    /// Notes that `hash` was just used (a worker started from it): recent files are
    /// evicted last. Errors are ignored: it is a hint.
    pub fn touch(&self, hash: &BinaryHash) {
        if self.in_place.contains_key(hash) {
            return;
        }
        if let Ok(path) = self.path(hash) {
            if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
        }
    }

    /// Removes the least recently used binaries until the cache holds at most its
    /// cap, sparing pinned ones, `keep`, and any used in the last ten minutes.
    /// Returns the files removed.
    pub fn evict(&self, keep: &BinaryHash) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<(std::time::SystemTime, u64, BinaryHash, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let hash = BinaryHash(name);
                let meta = e.metadata().ok()?;
                if !(hash.is_well_formed() && meta.is_file()) {
                    return None;
                }
                Some((meta.modified().ok()?, meta.len(), hash, e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort_by_key(|f| f.0);
        let now = std::time::SystemTime::now();
        let mut removed = Vec::new();
        for (used, len, hash, path) in files {
            if total <= self.cap {
                break;
            }
            let recent = now
                .duration_since(used)
                .map_or(true, |age| age < RECENT_USE);
            if hash == *keep || recent || self.pinned.contains_key(&hash) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                tracing::info!(%hash, bytes = len, "evicted a binary from the cache (over its cap)");
                self.verified.remove(&hash);
                total -= len;
                removed.push(path);
            }
        }
        removed
    }

    /// Where `hash` lives (whether or not it is there yet).
    pub fn path(&self, hash: &BinaryHash) -> Result<PathBuf, BinaryError> {
        if !hash.is_well_formed() {
            return Err(BinaryError::BadHash(hash.0.clone()));
        }
        if let Some(p) = self.in_place.get(hash) {
            return Ok(p.clone());
        }
        Ok(self.dir.join(&hash.0))
    }

    /// Serves `hash` from `path` itself, an executable this process just hashed (a
    /// local-mode driver's own binary): no copy in the cache.
    pub fn register_in_place(&self, hash: &BinaryHash, path: PathBuf) {
        self.in_place.insert(hash.clone(), path);
    }

    /// Whether `hash` is served in place (hashed by this very process).
    pub fn is_in_place(&self, hash: &BinaryHash) -> bool {
        self.in_place.contains_key(hash)
    }

    /// Checks that the file at `path` hashes to `hash`; removes it from the cache if
    /// it does not (it was cut short, or planted).
    pub fn verify(&self, hash: &BinaryHash, path: &Path) -> Result<(), BinaryError> {
        let actual = hash_file(path)?;
        if actual == *hash {
            self.verified.insert(hash.clone());
            return Ok(());
        }
        if path.starts_with(&self.dir) {
            let _ = std::fs::remove_file(path);
        }
        Err(BinaryError::HashMismatch {
            expected: hash.0.clone(),
            actual: actual.0,
        })
    }

    /// Whether `hash` is cached, as a file that hashes to its name: checked once per
    /// process (a file that fails is removed). Blocking: it may hash the file.
    pub fn contains(&self, hash: &BinaryHash) -> bool {
        let Ok(path) = self.path(hash) else {
            return false;
        };
        if self.in_place.contains_key(hash) {
            return true;
        }
        if !path.is_file() {
            return false;
        }
        if self.verified.contains(hash) {
            return true;
        }
        match self.verify(hash, &path) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(%hash, "refusing a cached binary: {e}");
                false
            }
        }
    }

    /// Reads `size` bytes from `src`, checks they hash to `hash`, and stores them as an
    /// executable. Concurrent stores of the same binary are harmless: each writes its
    /// own temporary file and the rename is atomic.
    pub async fn store_from<R: AsyncRead + Unpin>(
        &self,
        hash: &BinaryHash,
        size: u64,
        src: &mut R,
    ) -> Result<PathBuf, BinaryError> {
        let dest = self.path(hash)?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BinaryError::Io { path, source }
        };
        crate::session::ensure_private_dir(&self.dir).map_err(|e| BinaryError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e),
        })?;
        let tmp = self
            .dir
            .join(format!(".{}.{:x}.part", hash.0, rand::random::<u64>()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
            let mut hasher = Sha256::new();
            let mut left = size;
            let mut buf = vec![0u8; crate::protocol::CHUNK_LEN];
            while left > 0 {
                let want = buf.len().min(left as usize);
                let n = src.read(&mut buf[..want]).await.map_err(io(&tmp))?;
                if n == 0 {
                    return Err(BinaryError::Io {
                        path: tmp.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "binary upload ended early",
                        ),
                    });
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).await.map_err(io(&tmp))?;
                left -= n as u64;
            }
            file.flush().await.map_err(io(&tmp))?;
            let actual = hex::encode(hasher.finalize());
            if actual != hash.0 {
                return Err(BinaryError::HashMismatch {
                    expected: hash.0.clone(),
                    actual,
                });
            }
            set_executable(&tmp).map_err(io(&tmp))?;
            tokio::fs::rename(&tmp, &dest).await.map_err(io(&dest))?;
            self.verified.insert(hash.clone());
            self.evict(hash);
            Ok(dest.clone())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

/// SHA-256 of a file, e.g. the running executable.
pub fn hash_file(path: &Path) -> Result<BinaryHash, BinaryError> {
    let io = |source| BinaryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(BinaryHash(hex::encode(hasher.finalize())))
}

fn set_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_only_what_matches_its_hash() {
        let dir = std::env::temp_dir().join(format!("rayish-bin-test-{:x}", rand::random::<u64>()));
        let cache = BinaryCache::new(&dir);
        let data = b"#!/bin/sh\necho hi\n".to_vec();
        let good = BinaryHash(hex::encode(Sha256::digest(&data)));
        let path = cache
            .store_from(&good, data.len() as u64, &mut &data[..])
            .await
            .unwrap();
        assert!(cache.contains(&good));
        assert_eq!(hash_file(&path).unwrap(), good);

        let bad = BinaryHash("0".repeat(64));
        let err = cache
            .store_from(&bad, data.len() as u64, &mut &data[..])
            .await
            .unwrap_err();
        assert!(matches!(err, BinaryError::HashMismatch { .. }));
        assert!(!cache.contains(&bad));
        assert!(cache.path(&BinaryHash("../etc/passwd".into())).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn past_its_cap_the_least_recently_used_unpinned_binaries_go() {
        let dir = std::env::temp_dir().join(format!("rayish-bin-test-{:x}", rand::random::<u64>()));
        let cache = BinaryCache::new(&dir).with_cap(250);
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let mut hashes = Vec::new();
        for i in 0..3u8 {
            let data = vec![i; 100];
            let hash = BinaryHash(hex::encode(Sha256::digest(&data)));
            let path = cache.store_from(&hash, 100, &mut &data[..]).await.unwrap();
            if i == 0 {
                cache.pin(&hash);
            }
            // Used an hour ago, oldest first.
            let f = std::fs::File::options().append(true).open(&path).unwrap();
            f.set_modified(old + std::time::Duration::from_secs(i as u64))
                .unwrap();
            hashes.push(hash);
        }
        let data = vec![9u8; 100];
        let newest = BinaryHash(hex::encode(Sha256::digest(&data)));
        cache
            .store_from(&newest, 100, &mut &data[..])
            .await
            .unwrap();
        // Each store past 250 bytes evicted the oldest unpinned binary: 0 is pinned,
        // so 1 and then 2 went; the new one stays.
        assert!(cache.contains(&hashes[0]));
        assert!(!cache.contains(&hashes[1]));
        assert!(!cache.contains(&hashes[2]));
        assert!(cache.contains(&newest));
        cache.unpin(&hashes[0]);
        let f = std::fs::File::options()
            .append(true)
            .open(cache.path(&hashes[0]).unwrap())
            .unwrap();
        f.set_modified(old).unwrap();
        assert_eq!(
            cache.evict(&newest).len(),
            0,
            "under the cap now: nothing goes"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_file_planted_under_a_hash_fails_its_check_and_is_removed() {
        let dir = std::env::temp_dir().join(format!("rayish-bin-test-{:x}", rand::random::<u64>()));
        let cache = BinaryCache::new(&dir);
        let data = b"#!/bin/sh\necho real\n".to_vec();
        let hash = BinaryHash(hex::encode(Sha256::digest(&data)));
        let path = cache
            .store_from(&hash, data.len() as u64, &mut &data[..])
            .await
            .unwrap();
        cache.verify(&hash, &path).unwrap();
        std::fs::write(&path, b"#!/bin/sh\necho planted\n").unwrap();
        assert!(matches!(
            cache.verify(&hash, &path),
            Err(BinaryError::HashMismatch { .. })
        ));
        assert!(!path.exists(), "the planted file is removed");
        let _ = std::fs::remove_dir_all(dir);
    }
}
