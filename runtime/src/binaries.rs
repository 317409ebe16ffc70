//! The content-addressed cache of job binaries.
//!
//! A driver's executable is the job's code. The head keeps the copy a driver uploads;
//! each node fetches it from the head the first time it must start a worker for that
//! job. Files are named by their SHA-256 and checked against it before use, so a cache
//! shared by several nodes of one machine is safe and nothing is ever copied by hand.

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
}

impl BinaryCache {
    /// A cache in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Where `hash` lives (whether or not it is there yet).
    pub fn path(&self, hash: &BinaryHash) -> Result<PathBuf, BinaryError> {
        if !hash.is_well_formed() {
            return Err(BinaryError::BadHash(hash.0.clone()));
        }
        Ok(self.dir.join(&hash.0))
    }

    /// Whether `hash` is cached.
    pub fn contains(&self, hash: &BinaryHash) -> bool {
        self.path(hash).is_ok_and(|p| p.is_file())
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
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io(&self.dir))?;
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
            let actual = hex(&hasher.finalize());
            if actual != hash.0 {
                return Err(BinaryError::HashMismatch {
                    expected: hash.0.clone(),
                    actual,
                });
            }
            set_executable(&tmp).map_err(io(&tmp))?;
            tokio::fs::rename(&tmp, &dest).await.map_err(io(&dest))?;
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
    Ok(BinaryHash(hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        let good = BinaryHash(hex(&Sha256::digest(&data)));
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
}
