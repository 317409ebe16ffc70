//! Turning the command line's input into an ordered list of image paths.

use std::path::{Path, PathBuf};

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
}

/// A directory (walked recursively, files with an image extension, sorted by path) or
/// a list file (one path per line; relative paths are relative to the list's
/// directory; blank lines and lines starting with `#` ignored).
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
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        })
        .map(|p| p.to_string_lossy().into_owned())
        .collect())
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
        std::fs::write(&list, "# photos\na.png\n\n/abs/x.jpg\nnested/missing.jpg\n")
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
            ]
        );
        assert!(matches!(
            list_images(&root.join("nope")),
            Err(InputError::Io { .. })
        ));
        std::fs::remove_dir_all(&root).ok();
    }
}
