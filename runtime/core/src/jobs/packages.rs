//! Working-dir packages: the zips `ray job submit --working-dir` and
//! `rayish job submit --working-dir` upload (`PUT /api/packages/gcs/_ray_pkg_<hash>.zip`),
//! kept by name in the head's package directory, and unpacked into a job's own
//! directory when it starts.
//!
//! Invariant: a stored package is a zip whose every entry is a plain file or
//! directory with a relative path that stays inside the directory it is unpacked
//! into, within the entry and size limits; a package is written under a temporary
//! name and renamed into place only once checked, so a reader never sees a partial
//! one. Unpacking checks each entry again (a package directory is the user's to
//! write into, too).
//!
//! Packages are collected as Ray collects its runtime-env URIs: one that no waiting
//! or running job names, and that nobody uploaded or asked about for the grace
//! period (Ray's `RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S`, 600 s), is
//! removed. The grace covers a client's steps between asking whether a package
//! exists, uploading it and submitting the job that names it.

use std::collections::HashSet;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use thiserror::Error;

/// How long an interrupted upload's staging file is kept.
const STAGING_LIFETIME: Duration = Duration::from_secs(3600);

/// The prefix of staging files' names.
const STAGING_PREFIX: &str = ".upload-";

/// The largest package accepted by default (Ray's `GCS_STORAGE_MAX_SIZE`, 512 MiB);
/// `RAYISH_JOB_PACKAGE_MAX_BYTES` on the head changes it.
pub const MAX_PACKAGE_BYTES: usize = 512 << 20;
/// The most bytes a package may unpack to: a zip bomb is refused before it fills
/// the disk.
pub const MAX_UNPACKED_BYTES: u64 = 4 << 30;
/// The most entries a package may hold.
pub const MAX_ENTRIES: usize = 100_000;

/// Why a package cannot be stored or unpacked.
#[derive(Debug, Error)]
pub enum PackageError {
    /// Its name is not Ray's `_ray_pkg_<hex>.zip`.
    #[error("package name {0:?} is not of the form _ray_pkg_<hex>.zip")]
    BadName(String),
    /// The upload is larger than the limit.
    #[error("the package is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// It is not a zip archive.
    #[error("the package is not a zip archive: {0}")]
    NotAZip(String),
    /// An entry would land outside the directory, or is not a plain file or directory.
    #[error("the package's entry {entry:?} is refused: {why}")]
    UnsafeEntry {
        /// The entry's name in the zip.
        entry: String,
        /// Why.
        why: &'static str,
    },
    /// It unpacks to more than [`MAX_UNPACKED_BYTES`] or holds more than [`MAX_ENTRIES`].
    #[error(
        "the package unpacks to more than {MAX_UNPACKED_BYTES} bytes or {MAX_ENTRIES} entries"
    )]
    Bomb,
    /// No package of that name was uploaded.
    #[error("package {0} does not exist")]
    Missing(String),
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Starts `path`'s grace period again (its modification time is now).
fn renew(path: &Path) -> Result<(), PackageError> {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .map_err(io_at(path))
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks a package's name: `_ray_pkg_` then 8 to 64 hex digits then `.zip`.
pub fn check_package_name(name: &str) -> Result<(), PackageError> {
    let hex = name
        .strip_prefix("_ray_pkg_")
        .and_then(|rest| rest.strip_suffix(".zip"));
    match hex {
        Some(h) if (8..=64).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(())
        }
        _ => Err(PackageError::BadName(name.to_string())),
    }
}

/// The head's uploaded packages, one file per name.
#[derive(Debug, Clone)]
pub struct PackageStore {
    dir: PathBuf,
    limit: usize,
    /// Held while a package is looked up and renewed, and while unused ones are
    /// removed: a package renewed is never removed on the strength of its old time.
    renewals: Arc<Mutex<()>>,
}

impl PackageStore {
    /// The store in `dir` (made private if missing), taking packages of at most
    /// `limit` bytes.
    pub fn open(dir: PathBuf, limit: usize) -> Result<Self, PackageError> {
        crate::session::ensure_private_dir(&dir).map_err(|e| PackageError::Io {
            path: dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Self {
            dir,
            limit,
            renewals: Arc::default(),
        })
    }

    /// The largest package it takes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Where package `name` is kept.
    fn path(&self, name: &str) -> Result<PathBuf, PackageError> {
        check_package_name(name)?;
        Ok(self.dir.join(name))
    }

    /// Whether package `name` was uploaded.
    pub fn exists(&self, name: &str) -> Result<bool, PackageError> {
        Ok(self.path(name)?.is_file())
    }

    fn renewals(&self) -> std::sync::MutexGuard<'_, ()> {
        self.renewals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether package `name` was uploaded; if it was, its grace period starts
    /// again (a client that finds it will name it in a submission next).
    pub fn exists_renewed(&self, name: &str) -> Result<bool, PackageError> {
        let path = self.path(name)?;
        let _renewing = self.renewals();
        if !path.is_file() {
            return Ok(false);
        }
        renew(&path)?;
        Ok(true)
    }

    /// Removes the packages not in `in_use` that were neither stored nor renewed
    /// in the last `grace`, and staging files left by uploads cut short; the names
    /// of the packages removed.
    pub fn remove_unused(
        &self,
        in_use: &HashSet<String>,
        grace: Duration,
    ) -> Result<Vec<String>, PackageError> {
        let now = SystemTime::now();
        let idle = |meta: &std::fs::Metadata| {
            meta.modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default()
        };
        let _renewing = self.renewals();
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_at(&self.dir))? {
            let entry = entry.map_err(io_at(&self.dir))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let staging = name.starts_with(STAGING_PREFIX);
            let stale = if staging {
                idle(&meta) > STAGING_LIFETIME
            } else {
                check_package_name(&name).is_ok() && !in_use.contains(&name) && idle(&meta) >= grace
            };
            if stale && meta.is_file() {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io_at(&path))?;
                if !staging {
                    removed.push(name);
                }
            }
        }
        Ok(removed)
    }

    /// A fresh path in the store's directory to receive an upload into, before
    /// [`Self::put_file`] checks it.
    pub fn staging_path(&self) -> PathBuf {
        use rand::Rng;
        self.dir.join(format!(
            "{STAGING_PREFIX}{:016x}.tmp",
            rand::thread_rng().gen::<u64>()
        ))
    }

    /// Stores the upload in `staged` (a [`Self::staging_path`]) as package `name`,
    /// once it is checked to be a safe zip; `staged` is gone afterwards either way.
    /// A name already stored keeps its first content (names are content hashes).
    pub fn put_file(&self, name: &str, staged: &Path) -> Result<(), PackageError> {
        let result = self.adopt(name, staged);
        let _ = std::fs::remove_file(staged);
        result
    }

    fn adopt(&self, name: &str, staged: &Path) -> Result<(), PackageError> {
        let path = self.path(name)?;
        let file = std::fs::File::open(staged).map_err(io_at(staged))?;
        let size = file.metadata().map_err(io_at(staged))?.len();
        if size > self.limit as u64 {
            return Err(PackageError::TooLarge {
                size: size as usize,
                limit: self.limit,
            });
        }
        check_archive(std::io::BufReader::new(file))?;
        {
            let _renewing = self.renewals();
            if path.is_file() {
                // Stored already: the upload only renews it (its copy is not synced).
                return renew(&path);
            }
        }
        std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o600))
            .map_err(io_at(staged))?;
        std::fs::File::open(staged)
            .and_then(|f| f.sync_all())
            .map_err(io_at(staged))?;
        // Its time is the upload's, so collection leaves it for the grace period.
        std::fs::rename(staged, &path).map_err(io_at(&path))
    }

    /// Stores `bytes` as package `name` (see [`Self::put_file`]).
    pub fn put(&self, name: &str, bytes: &[u8]) -> Result<(), PackageError> {
        self.path(name)?;
        let staged = self.staging_path();
        crate::session::create_private_file(&staged)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(io_at(&staged))?;
        self.put_file(name, &staged)
    }

    /// Unpacks package `name` into `dest` (which must not exist yet).
    pub fn unpack(&self, name: &str, dest: &Path) -> Result<(), PackageError> {
        let path = self.path(name)?;
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PackageError::Missing(name.to_string()))
            }
            Err(e) => return Err(io_at(&path)(e)),
        };
        unpack(std::io::BufReader::new(file), dest)
    }
}

/// Opens `archive` as a zip and checks every entry (see the module's invariant).
fn check_archive<R: Read + Seek>(archive: R) -> Result<(), PackageError> {
    let mut zip =
        zip::ZipArchive::new(archive).map_err(|e| PackageError::NotAZip(e.to_string()))?;
    if zip.len() > MAX_ENTRIES {
        return Err(PackageError::Bomb);
    }
    let mut total = 0u64;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| PackageError::NotAZip(e.to_string()))?;
        entry_path(&entry)?;
        total = total.saturating_add(entry.size());
    }
    if total > MAX_UNPACKED_BYTES {
        return Err(PackageError::Bomb);
    }
    Ok(())
}

/// The relative path `entry` unpacks to, if it is safe to.
fn entry_path<R: Read>(entry: &zip::read::ZipFile<'_, R>) -> Result<PathBuf, PackageError> {
    let refuse = |why| PackageError::UnsafeEntry {
        entry: entry.name().to_string(),
        why,
    };
    if entry.is_symlink() {
        // Ray's own packaging stores what a link points to, never the link: a link
        // in a package is someone's attempt to reach outside it.
        return Err(refuse("it is a symbolic link; packages hold plain files"));
    }
    if let Some(mode) = entry.unix_mode() {
        let kind = mode & libc::S_IFMT;
        if kind != 0 && kind != libc::S_IFREG && kind != libc::S_IFDIR {
            return Err(refuse("it is not a plain file or directory"));
        }
    }
    let path = entry
        .enclosed_name()
        .ok_or_else(|| refuse("its path is absolute or leaves the directory"))?;
    if path.as_os_str().is_empty() {
        return Err(refuse("its path is empty"));
    }
    Ok(path)
}

/// Unpacks the zip `archive` into `dest`, a new directory. Files keep their owner's
/// permission bits (an uploaded binary stays executable), never more than 0o755.
pub fn unpack<R: Read + Seek>(mut archive: R, dest: &Path) -> Result<(), PackageError> {
    check_archive(&mut archive)?;
    archive
        .seek(std::io::SeekFrom::Start(0))
        .map_err(io_at(dest))?;
    let mut zip =
        zip::ZipArchive::new(archive).map_err(|e| PackageError::NotAZip(e.to_string()))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .map_err(io_at(dest))?;
    let mut written = 0u64;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| PackageError::NotAZip(e.to_string()))?;
        let rel = entry_path(&entry)?;
        let target = dest.join(&rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&target).map_err(io_at(&target))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        // `create_new` never follows or overwrites what is there: two entries of one
        // name, or a directory entry named like a file, fail here.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(io_at(&target))?;
        // The sizes in the headers were checked, but they are the archive's word:
        // count what actually comes out.
        let copied = std::io::copy(
            &mut (&mut entry).take(MAX_UNPACKED_BYTES - written + 1),
            &mut out,
        )
        .map_err(io_at(&target))?;
        written += copied;
        if written > MAX_UNPACKED_BYTES {
            return Err(PackageError::Bomb);
        }
        let mode = entry.unix_mode().unwrap_or(0o644) & 0o755 | 0o600;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
            .map_err(io_at(&target))?;
    }
    Ok(())
}

use std::os::unix::fs::DirBuilderExt;

/// Zips directory `dir` as a package (what `rayish job submit --working-dir`
/// uploads): every plain file under it, links followed as Ray's packaging follows
/// them, with its permission bits. Returns the zip and its name, `_ray_pkg_` and
/// the first 32 hex digits of the SHA-256 of the zip's entries.
pub fn zip_directory(dir: &Path) -> Result<(Vec<u8>, String), PackageError> {
    use sha2::Digest;
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut hash = sha2::Sha256::new();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for rel in &files {
        let path = dir.join(rel);
        let meta = std::fs::metadata(&path).map_err(io_at(&path))?;
        let name = rel.to_string_lossy().into_owned();
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(meta.permissions().mode() & 0o777)
            .large_file(meta.len() >= u32::MAX as u64);
        out.start_file(name.as_str(), opts)
            .map_err(|e| PackageError::NotAZip(e.to_string()))?;
        let mut f = std::fs::File::open(&path).map_err(io_at(&path))?;
        let mut buf = vec![0u8; 1 << 16];
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update((meta.permissions().mode() & 0o777).to_le_bytes());
        loop {
            let n = f.read(&mut buf).map_err(io_at(&path))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_at(&path))?;
        }
    }
    let bytes = out
        .finish()
        .map_err(|e| PackageError::NotAZip(e.to_string()))?
        .into_inner();
    let digest = hex::encode(hash.finalize());
    Ok((bytes, format!("_ray_pkg_{}.zip", &digest[..32])))
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), PackageError> {
    for entry in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(io_at(&path))?;
        if meta.is_dir() {
            collect(root, &path, files)?;
        } else if meta.is_file() {
            if let Ok(rel) = path.strip_prefix(root) {
                files.push(rel.to_path_buf());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_of(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data, mode) in entries {
            let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
            w.start_file(*name, opts).expect("start");
            w.write_all(data).expect("write");
        }
        w.finish().expect("finish").into_inner()
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rayish-pkg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn names_are_rays_package_names() {
        assert!(check_package_name("_ray_pkg_0123456789abcdef.zip").is_ok());
        for bad in [
            "x.zip",
            "_ray_pkg_.zip",
            "_ray_pkg_../../a.zip",
            "_ray_pkg_zzzzzzzz.zip",
        ] {
            assert!(check_package_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_directory_round_trips_with_its_executable_bit() {
        let src = temp("src");
        std::fs::create_dir_all(src.join("sub")).expect("mkdir");
        std::fs::write(src.join("sub/a.txt"), b"hello").expect("write");
        std::fs::write(src.join("run"), b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(src.join("run"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let (bytes, name) = zip_directory(&src).expect("zip");
        assert!(check_package_name(&name).is_ok(), "{name}");
        assert_eq!(
            zip_directory(&src).expect("zip").1,
            name,
            "the name is the content's"
        );
        let dest = temp("dest").join("wd");
        unpack(std::io::Cursor::new(&bytes), &dest).expect("unpack");
        assert_eq!(
            std::fs::read(dest.join("sub/a.txt")).expect("read"),
            b"hello"
        );
        let mode = std::fs::metadata(dest.join("run"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn escaping_paths_links_and_bombs_are_refused() {
        let escape = zip_of(&[("../evil", b"x", 0o644)]);
        assert!(matches!(
            check_archive(std::io::Cursor::new(&escape)),
            Err(PackageError::UnsafeEntry { .. })
        ));
        let absolute = zip_of(&[("/tmp/evil", b"x", 0o644)]);
        assert!(matches!(
            check_archive(std::io::Cursor::new(&absolute)),
            Err(PackageError::UnsafeEntry { .. })
        ));
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.add_symlink("link", "/etc", zip::write::SimpleFileOptions::default())
            .expect("link");
        let link = w.finish().expect("finish").into_inner();
        assert!(matches!(
            check_archive(std::io::Cursor::new(&link)),
            Err(PackageError::UnsafeEntry { .. })
        ));
        assert!(matches!(
            check_archive(std::io::Cursor::new(b"not a zip")),
            Err(PackageError::NotAZip(_))
        ));
        // Nothing was written outside, and the refused archive made no directory.
        let dest = temp("refused").join("wd");
        assert!(unpack(std::io::Cursor::new(&escape), &dest).is_err());
        assert!(!dest.exists());
    }

    #[test]
    fn the_store_keeps_checked_packages_by_name() {
        let store = PackageStore::open(temp("store").join("packages"), 1 << 20).expect("open");
        let name = "_ray_pkg_00112233445566778899aabbccddeeff.zip";
        assert!(!store.exists(name).expect("name ok"));
        assert!(store.put(name, b"junk").is_err());
        assert!(
            !store.exists(name).expect("name ok"),
            "a refused upload leaves nothing"
        );
        store
            .put(name, &zip_of(&[("f", b"1", 0o644)]))
            .expect("put");
        assert!(store.exists(name).expect("name ok"));
        assert!(store.exists("../x").is_err());
        let big = vec![0u8; (1 << 20) + 1];
        assert!(matches!(
            store.put(name, &big),
            Err(PackageError::TooLarge { .. })
        ));
        assert!(matches!(
            store.unpack("_ray_pkg_ffffffffffffffff.zip", &temp("u").join("wd")),
            Err(PackageError::Missing(_))
        ));
    }

    /// Sets `path`'s modification time `ago` in the past.
    fn age(path: &Path, ago: Duration) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(SystemTime::now() - ago))
            .expect("set mtime");
    }

    #[test]
    fn unused_packages_are_removed_after_their_grace_and_a_lookup_renews_it() {
        let dir = temp("gc").join("packages");
        let store = PackageStore::open(dir.clone(), 1 << 20).expect("open");
        let zip = zip_of(&[("f", b"1", 0o644)]);
        let [used, idle, fresh, looked_up] = [
            "_ray_pkg_00000000000000000000000000000001.zip",
            "_ray_pkg_00000000000000000000000000000002.zip",
            "_ray_pkg_00000000000000000000000000000003.zip",
            "_ray_pkg_00000000000000000000000000000004.zip",
        ];
        for name in [used, idle, fresh, looked_up] {
            store.put(name, &zip).expect("put");
        }
        let hour = Duration::from_secs(3600);
        for name in [used, idle, looked_up] {
            age(&dir.join(name), hour);
        }
        // A client asks whether it exists before naming it in a submission.
        assert!(store.exists_renewed(looked_up).expect("name ok"));
        // An upload cut short long ago, and one going on now.
        let (stale_upload, live_upload) = (store.staging_path(), store.staging_path());
        std::fs::write(&stale_upload, b"part").expect("write");
        age(&stale_upload, 2 * STAGING_LIFETIME);
        std::fs::write(&live_upload, b"part").expect("write");
        // Not a package: left alone.
        std::fs::write(dir.join("notes.txt"), b"x").expect("write");
        age(&dir.join("notes.txt"), hour);

        let in_use = HashSet::from([used.to_string()]);
        let removed = store
            .remove_unused(&in_use, Duration::from_secs(600))
            .expect("collect");
        assert_eq!(removed, vec![idle.to_string()]);
        for name in [used, fresh, looked_up] {
            assert!(store.exists(name).expect("name ok"), "{name} was removed");
        }
        assert!(!store.exists(idle).expect("name ok"));
        assert!(!stale_upload.exists() && live_upload.exists());
        assert!(dir.join("notes.txt").exists());
        // Uploading a stored package again renews it too.
        age(&dir.join(fresh), hour);
        store.put(fresh, &zip).expect("put again");
        let removed = store
            .remove_unused(&HashSet::new(), Duration::from_secs(600))
            .expect("collect");
        assert_eq!(removed, vec![used.to_string()]);
    }
}
