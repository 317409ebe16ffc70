//! Turning the command line's input into an ordered list of images, and reading one
//! image without letting it hang or bloat the reader. An input is a local path or an
//! `s3://` URL ([`crate::s3`]).

use crate::s3::{self, S3Url};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What identifies an input's contents without reading it: its size and modification
/// time (a file's mtime, an object's last-modified time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, in nanoseconds since the epoch.
    pub mtime_ns: i128,
}

impl Stamp {
    /// The stamp of a local file's metadata.
    pub fn of_metadata(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }

    /// The stamp of the input at `path` now (a local file's `stat`, an object's `HEAD`
    /// within `timeout`); `None` if it cannot be had (its read then fails with the
    /// reason).
    pub fn of(path: &str, timeout: Duration) -> Option<Stamp> {
        match S3Url::parse(path) {
            Some(url) => s3::head(&url.ok()?, timeout).ok(),
            None => std::fs::metadata(path).ok().map(|m| Stamp::of_metadata(&m)),
        }
    }
}

/// One listed input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// A local path or an `s3://` URL.
    pub path: String,
    /// Its stamp when listed; `None` if it could not be had here.
    pub stamp: Option<Stamp>,
}

/// File extensions taken from a directory (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp", "jpe",
];

/// Errors listing the input.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The directory or list file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// What was being read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The object store could not be listed.
    #[error(transparent)]
    S3(#[from] s3::S3Error),
}

/// The inputs `input` names, each with its stamp: an `s3://bucket/prefix` (every
/// image object under it, sorted by key), a directory or a list file, as
/// [`list_images`] (a list may name `s3://` objects too, each asked for its stamp
/// within `timeout`).
pub fn list_inputs(input: &str, timeout: Duration) -> Result<Vec<Input>, InputError> {
    if let Some(url) = S3Url::parse(input) {
        return Ok(s3::list(&url?)?
            .into_iter()
            .map(|(path, stamp)| Input {
                path,
                stamp: Some(stamp),
            })
            .collect());
    }
    Ok(list_images(Path::new(input))?
        .into_iter()
        .map(|path| Input {
            stamp: Stamp::of(&path, timeout),
            path,
        })
        .collect())
}

/// A directory (walked recursively, files with an image extension, sorted by path) or
/// a list file (one path or `s3://` URL per line; relative paths are relative to the
/// list's directory; blank lines and lines starting with `#` ignored).
pub fn list_images(input: &Path) -> Result<Vec<String>, InputError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InputError::Io { path, source }
    };
    let meta = std::fs::metadata(input).map_err(io(input))?;
    if meta.is_dir() {
        let mut out = Vec::new();
        walk(input, &mut out).map_err(io(input))?;
        out.sort();
        return Ok(out
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect());
    }
    let text = std::fs::read_to_string(input).map_err(io(input))?;
    let base = input.parent().unwrap_or(Path::new("."));
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let p = Path::new(l);
            if s3::is_s3(l) || p.is_absolute() {
                l.to_string()
            } else {
                base.join(p).to_string_lossy().into_owned()
            }
        })
        .collect())
}

/// Why an image's file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A FIFO, device, socket or directory: reading it could block forever or never end.
    #[error("not a regular file (a {0}); only regular files are read")]
    NotRegular(&'static str),
    /// Over `--max-file-bytes`.
    #[error("the file is {size} bytes, over the limit of {limit} (--max-file-bytes)")]
    TooLarge {
        /// Its size (at least, if it grew while being read).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The file system said no.
    #[error("cannot read file: {0}")]
    Io(#[from] std::io::Error),
    /// The read hung (a dead network mount, a failing disk, a stalled server).
    #[error("{READ_TIMED_OUT} in {0} s")]
    TimedOut(u64),
    /// The object store said no.
    #[error("cannot read object: {0}")]
    S3(#[from] s3::S3Error),
}

/// How a timed-out read's reason begins (a re-run tries such an image again).
pub const READ_TIMED_OUT: &str = "read did not finish";

/// Refuses anything but a regular file, naming its kind.
fn regular_only(meta: &std::fs::Metadata) -> Result<(), ReadError> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "special file"
    };
    Err(ReadError::NotRegular(kind))
}

/// Reads the input at `path` (a local file as [`read_image_file`], or an `s3://`
/// object), refusing anything over `limit` bytes before reading it and giving up after
/// `timeout`; gives its bytes and the stamp of what was read.
pub fn read_input(
    path: &str,
    limit: u64,
    timeout: Duration,
) -> Result<(Vec<u8>, Stamp), ReadError> {
    let Some(url) = S3Url::parse(path) else {
        return read_image_file(Path::new(path), limit, timeout);
    };
    match s3::read(&url?, limit, timeout)? {
        s3::Fetched::Bytes(bytes, stamp) => Ok((bytes, stamp)),
        s3::Fetched::TooLarge(size) => Err(ReadError::TooLarge { size, limit }),
        s3::Fetched::TimedOut => Err(ReadError::TimedOut(timeout.as_secs())),
    }
}

/// Reads the regular file at `path`, refusing anything else and anything over
/// `limit` bytes before reading it, and giving up after `timeout`; gives its bytes
/// and the stamp of the file that was read.
///
/// A read that times out leaves its thread behind, blocked in the kernel (no
/// portable way exists to interrupt it); it ends with the read, if ever.
pub fn read_image_file(
    path: &Path,
    limit: u64,
    timeout: Duration,
) -> Result<(Vec<u8>, Stamp), ReadError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let owned = path.to_path_buf();
    std::thread::Builder::new()
        .name("rayish-faces-read".into())
        .spawn(move || {
            let _ = tx.send(read_bounded(&owned, limit));
        })?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => Err(ReadError::TimedOut(timeout.as_secs())),
    }
}

fn read_bounded(path: &Path, limit: u64) -> Result<(Vec<u8>, Stamp), ReadError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let check = |meta: &std::fs::Metadata| {
        regular_only(meta)?;
        if meta.len() > limit {
            return Err(ReadError::TooLarge {
                size: meta.len(),
                limit,
            });
        }
        Ok(())
    };
    // Looked at before opening: opening a FIFO waits for a writer.
    check(&std::fs::metadata(path)?)?;
    // Non-blocking, and checked again once open, in case the path changed meanwhile.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    check(&meta)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok((bytes, Stamp::of_metadata(&meta)))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        if entry.file_type()?.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .map(|e| IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str()))
            .unwrap_or(false)
        {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_under_the_limit_are_read() {
        let root = std::env::temp_dir().join(format!("rayish-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("dir");
        let t = Duration::from_secs(5);
        let file = root.join("a.jpg");
        std::fs::write(&file, b"12345").expect("write");
        let (bytes, stamp) = read_image_file(&file, 5, t).expect("read");
        assert_eq!(bytes, b"12345");
        assert_eq!(Some(stamp), Stamp::of(&file.to_string_lossy(), t));
        assert_eq!(stamp.size, 5);
        let err = read_image_file(&file, 4, t).expect_err("too large");
        assert!(
            matches!(err, ReadError::TooLarge { size: 5, limit: 4 }),
            "{err}"
        );

        let fifo = root.join("fifo.jpg");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let err = read_image_file(&fifo, 1 << 20, t).expect_err("fifo");
        assert_eq!(
            err.to_string(),
            "not a regular file (a FIFO); only regular files are read"
        );
        let err = read_image_file(Path::new("/dev/zero"), 1 << 20, t).expect_err("device");
        assert!(err.to_string().contains("character device"), "{err}");
        let sock = root.join("sock.jpg");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("socket");
        let err = read_image_file(&sock, 1 << 20, t).expect_err("socket");
        assert!(err.to_string().contains("a socket"), "{err}");
        let err = read_image_file(&root.join("none.jpg"), 1 << 20, t).expect_err("missing");
        assert!(err.to_string().starts_with("cannot read file: "), "{err}");
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn directories_are_walked_in_path_order_and_lists_resolve_relative_paths() {
        let root = std::env::temp_dir().join(format!("rayish-inputs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("b/nested")).expect("dirs");
        for f in [
            "b/nested/z.JPG",
            "b/a.png",
            "c.jpeg",
            "notes.txt",
            ".hidden.jpg",
        ] {
            std::fs::write(root.join(f), b"x").expect("write");
        }
        let listed = list_images(&root).expect("list dir");
        let rel: Vec<String> = listed
            .iter()
            .map(|p| {
                p.strip_prefix(&*root.to_string_lossy())
                    .unwrap_or(p)
                    .to_string()
            })
            .collect();
        assert_eq!(rel, ["/b/a.png", "/b/nested/z.JPG", "/c.jpeg"]);

        let list = root.join("b/list.txt");
        std::fs::write(
            &list,
            "# photos\na.png\n\n/abs/x.jpg\nnested/missing.jpg\ns3://bucket/k/y.jpg\n",
        )
        .expect("write");
        let from_list = list_images(&list).expect("list file");
        assert_eq!(
            from_list,
            [
                root.join("b/a.png").to_string_lossy().to_string(),
                "/abs/x.jpg".to_string(),
                root.join("b/nested/missing.jpg")
                    .to_string_lossy()
                    .to_string(),
                "s3://bucket/k/y.jpg".to_string(),
            ]
        );
        assert!(matches!(
            list_images(&root.join("nope")),
            Err(InputError::Io { .. })
        ));
        std::fs::remove_dir_all(&root).ok();
    }
}
