//! House-keeping checks over the whole workspace: every Rust source file, in every crate, opens
//! with a `//!` paragraph that says what it is for (STYLE.md, "Make the architecture visible").

use std::fs;
use std::path::{Path, PathBuf};

/// Every directory of Rust sources in the workspace.
const SOURCE_DIRECTORIES: &[&str] = &[
    "src",
    "tests",
    "cluster-config/src",
    "cluster-config/tests",
    "vipd/src",
    "vipd/tests",
    "gateway/src",
    "gateway/tests",
    "gateway/fuzz/src",
    "gateway/fuzz/fuzz_targets",
    "gateway/fuzz/examples",
    "gateway/fuzz/tests",
    "dns/src",
];

#[test]
fn every_module_starts_with_a_module_doc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    for directory in SOURCE_DIRECTORIES {
        collect_rust_files(&root.join(directory), &mut sources);
    }
    assert!(sources.len() > 20, "only {} sources found", sources.len());
    let undocumented: Vec<String> = sources
        .iter()
        .filter(|path| {
            let text = fs::read_to_string(path)
                .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
            !text.trim_start().starts_with("//!")
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        undocumented.is_empty(),
        "modules without a `//!` doc: {undocumented:?}"
    );
}

fn collect_rust_files(directory: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(directory) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}
