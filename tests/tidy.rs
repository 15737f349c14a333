//! Tidy checks over the source tree: every Rust file opens with a `//!` line saying what it is
//! for (the DSL samples under `tests/ui/` are user code and exempt), and the README shows the
//! kernel the example runs, and the DSL reference quotes the errors the UI tests pin.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | "ui" | ".git" | ".cache" | ".device" | "snapshots") {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![];
    rust_files(root, &mut files);
    assert!(files.len() > 20, "found only {} files: wrong root?", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap_or_default().starts_with("//!"))
        .map(|f| f.strip_prefix(root).unwrap_or(f).display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a leading `//!` line: {missing:?}");
}

/// The README's DSL guide shows the kernel the example runs: it must be that kernel, verbatim.
#[test]
fn the_readme_kernel_is_the_standard_kernel() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kernels = std::fs::read_to_string(root.join("src/kernels.rs")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let kernel = &kernels[kernels.find("#[flash_kernel(").expect("a kernel in src/kernels.rs")..];
    // The kernel function ends at its first closing brace in column 0.
    let kernel = &kernel[..kernel.find("\n}\n").expect("the kernel's closing brace") + 2];
    let start = readme.find("```rust\n#[flash_kernel(").expect("a kernel in README.md") + "```rust\n".len();
    let end = start + readme[start..].find("```").expect("closing fence");
    assert_eq!(readme[start..end].trim(), kernel.trim(), "README.md's kernel differs from src/kernels.rs");
}

/// Every error message docs/dsl.md quotes as pinned by a UI test (`"..." *(UI name)*`) is in
/// that test's `.stderr`, so the reference cannot drift from what the compiler says.
#[test]
fn the_dsl_reference_quotes_the_compilers_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reference = std::fs::read_to_string(root.join("docs/dsl.md")).unwrap();
    let mut checked = 0;
    for (at, _) in reference.match_indices("*(UI ") {
        let name = &reference[at + 5..][..reference[at + 5..].find(")*").unwrap()];
        let before = &reference[..at];
        let close = before.rfind('"').expect("a quote before the UI marker");
        let open = before[..close].rfind('"').expect("the quote's start");
        let quote = &before[open + 1..close];
        let stderr = std::fs::read_to_string(root.join(format!("tests/ui/{name}.stderr")))
            .unwrap_or_else(|e| panic!("tests/ui/{name}.stderr: {e}"));
        let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
        let (quote, stderr) = (words(quote), words(&stderr));
        // `..` in a quote stands for text left out.
        for piece in quote.split(" ..").map(str::trim).filter(|p| !p.is_empty()) {
            assert!(
                stderr.contains(piece),
                "docs/dsl.md quotes `{piece}`, which tests/ui/{name}.stderr does not say"
            );
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} quoted errors found");
}
