//! Every source file of this crate starts with a `//!` paragraph saying what it is for
//! (STYLE.md: make the architecture visible).

#[test]
fn every_module_starts_with_a_doc_comment() {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for directory in ["src", "tests"] {
        for entry in std::fs::read_dir(crate_dir.join(directory)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|extension| extension == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                if !text.starts_with("//! ") {
                    missing.push(path.display().to_string());
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files without a leading //! paragraph: {missing:?}"
    );
}
