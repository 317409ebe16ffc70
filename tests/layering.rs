//! ARCHITECTURE.md's layering rule, checked: a module of `rayish-core` uses only
//! modules of layers below its own (the `layers` block in ARCHITECTURE.md, top first),
//! so the data path reads one way and no import circle can come back. Between crates
//! Cargo itself forbids circles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Layer of each module, from the `layers` block: the top line is the highest number.
fn layers() -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md"))
        .expect("read ARCHITECTURE.md");
    let block: Vec<&str> = text
        .split("```layers\n")
        .nth(1)
        .expect("ARCHITECTURE.md has a ```layers block")
        .split("```")
        .next()
        .expect("the block ends")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    let mut map = BTreeMap::new();
    for (i, line) in block.iter().enumerate() {
        for module in line.split_whitespace() {
            let previous = map.insert(module.to_string(), block.len() - i);
            assert!(previous.is_none(), "{module} is listed twice");
        }
    }
    map
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src` belongs to (`None` for the crate root).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.as_str() {
        "lib.rs" => None,
        _ => Some(first.trim_end_matches(".rs").to_string()),
    }
}

/// Every `crate::name` a line of code (not a comment) names.
fn crate_paths(line: &str) -> Vec<String> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return Vec::new();
    }
    let code = code.split(" //").next().unwrap_or(code);
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before_ok = at == 0 || {
            let c = rest.as_bytes()[at - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        rest = &rest[at + "crate::".len()..];
        if !before_ok {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c}`: the first segment of each item.
            let inner = group.split('}').next().unwrap_or("");
            names.extend(inner.split(',').filter_map(|item| {
                let name = item.trim().split("::").next()?.trim();
                (!name.is_empty()).then(|| name.to_string())
            }));
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.push(name);
        }
    }
    names
}

#[test]
fn no_module_of_the_core_uses_one_above_it() {
    let layers = layers();
    let src = Path::new(ROOT).join("runtime/core/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);

    // Macros exported at the crate root belong to the module that defines them.
    let mut owner_of_macro = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a source file");
        for line in text.lines() {
            if let Some(rest) = line.trim_start().strip_prefix("macro_rules! ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if let Some(module) = module_of(&src, file) {
                    owner_of_macro.insert(name, module);
                }
            }
        }
    }

    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read lib.rs");
    for line in lib.lines() {
        let line = line.trim_start();
        let declared = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("mod "))
            .and_then(|rest| rest.strip_suffix(';'));
        if let Some(module) = declared {
            assert!(
                layers.contains_key(module),
                "module {module} is not in ARCHITECTURE.md's layers block"
            );
        }
    }

    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(&own) = layers.get(&module) else {
            wrong.push(format!("{}: module {module} has no layer", file.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (n, line) in text.lines().enumerate() {
            for name in crate_paths(line) {
                let target = owner_of_macro.get(&name).unwrap_or(&name);
                if *target == module {
                    continue;
                }
                match layers.get(target) {
                    Some(&theirs) if theirs < own => {}
                    Some(_) => wrong.push(format!(
                        "{}:{}: {module} uses {target}, which is not below it",
                        file.display(),
                        n + 1
                    )),
                    None => wrong.push(format!(
                        "{}:{}: crate::{name} is not a module in the layers block \
                         (use the module path, not a re-export at the root)",
                        file.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_parser_sees_every_form_of_crate_path() {
    assert_eq!(crate_paths("use crate::ids::ObjectId;"), ["ids"]);
    assert_eq!(
        crate_paths("use crate::{head::X, ids};  // crate::node"),
        ["head", "ids"]
    );
    assert_eq!(crate_paths("    // see crate::node"), Vec::<String>::new());
    assert_eq!(
        crate_paths("a(crate::shm::f(), crate::node::g())"),
        ["shm", "node"]
    );
    assert_eq!(
        crate_paths("let x = mycrate::node::f();"),
        Vec::<String>::new()
    );
}
