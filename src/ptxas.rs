//! Runs NVIDIA's `ptxas` on generated PTX and reads its `-v` resource report (registers, spills,
//! shared memory). ptxas is found through `FLASHCORE_PTXAS`, the project's cache
//! (`.cache/ptxas/bin/ptxas`, filled by `scripts/test.sh`), `PATH`, or `/usr/local/cuda/bin`.
//!
//! ```
//! use flashcore::kernels::attention;
//!
//! // ptxas is optional: without it there is no report, and nothing else changes.
//! if let Some(ptxas) = flashcore::ptxas::find() {
//!     let report = flashcore::ptxas::assemble(&ptxas, &attention::ptx(&attention::CONFIG)?, "sm_89")?;
//!     assert!(report.registers > 0 && report.spill_store_bytes == 0);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

/// The resource report of one assembled entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The architecture it was assembled for, e.g. `sm_89`.
    pub arch: String,
    /// Registers a thread.
    pub registers: u32,
    /// Bytes a thread spills to local memory.
    pub spill_store_bytes: u32,
    /// Bytes a thread reloads from local memory.
    pub spill_load_bytes: u32,
    /// Stack frame bytes a thread.
    pub stack_bytes: u32,
    /// Static shared memory (FlashCore's is dynamic, so usually 0).
    pub static_shared_bytes: u32,
    /// The raw `ptxas info` lines.
    pub text: String,
}

/// Why ptxas gave no report.
#[derive(Debug, thiserror::Error)]
pub enum PtxasError {
    /// No ptxas was found.
    #[error("ptxas not found (set FLASHCORE_PTXAS, or run scripts/test.sh to install it)")]
    NotFound,
    /// ptxas could not be started (or its files written).
    #[error("could not run {path}: {source}")]
    Run {
        /// The ptxas it tried.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// ptxas refused the PTX.
    #[error("ptxas rejected the PTX for {arch}:\n{stderr}")]
    Rejected {
        /// The architecture.
        arch: String,
        /// What ptxas said.
        stderr: String,
    },
}

/// Where ptxas is, if anywhere.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLASHCORE_PTXAS") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let cached = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/ptxas/bin/ptxas");
    if cached.is_file() {
        return Some(cached);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("ptxas");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let cuda = PathBuf::from("/usr/local/cuda/bin/ptxas");
    cuda.is_file().then_some(cuda)
}

fn number_before(text: &str, suffix: &str) -> Option<u32> {
    let at = text.find(suffix)?;
    text[..at].split_whitespace().last()?.parse().ok()
}

/// Parses the `ptxas info` lines of `ptxas -v` for one entry.
pub fn parse_report(arch: &str, text: &str) -> Report {
    Report {
        arch: arch.to_string(),
        registers: number_before(text, " registers").unwrap_or(0),
        spill_store_bytes: number_before(text, " bytes spill stores").unwrap_or(0),
        spill_load_bytes: number_before(text, " bytes spill loads").unwrap_or(0),
        stack_bytes: number_before(text, " bytes stack frame").unwrap_or(0),
        static_shared_bytes: number_before(text, " bytes smem").unwrap_or(0),
        text: text.to_string(),
    }
}

/// Assembles `ptx` for `arch` (e.g. `sm_89`) and returns the resource report.
pub fn assemble(ptxas: &Path, ptx: &str, arch: &str) -> Result<Report, PtxasError> {
    let dir = std::env::temp_dir().join(format!("flashcore-ptxas-{}-{}", std::process::id(), arch));
    let run_err = |source| PtxasError::Run { path: ptxas.display().to_string(), source };
    std::fs::create_dir_all(&dir).map_err(run_err)?;
    let unique = format!("{:x}", {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ptx.hash(&mut h);
        std::thread::current().id().hash(&mut h);
        h.finish()
    });
    let input = dir.join(format!("{unique}.ptx"));
    let output = dir.join(format!("{unique}.cubin"));
    std::fs::write(&input, ptx).map_err(run_err)?;
    let result = Command::new(ptxas)
        .arg(format!("-arch={arch}"))
        .arg("-v")
        .arg("-o")
        .arg(&output)
        .arg(&input)
        .output()
        .map_err(run_err);
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    let out = result?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        return Err(PtxasError::Rejected { arch: arch.to_string(), stderr });
    }
    let info: Vec<&str> = stderr.lines().filter(|l| !l.contains("Compile time")).collect();
    Ok(parse_report(arch, &info.join("\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_ptxas_v_report() {
        let text = "ptxas info    : 0 bytes gmem\nptxas info    : Compiling entry function 'attention' for 'sm_89'\nptxas info    : Function properties for attention\n    0 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\nptxas info    : Used 133 registers, used 1 barriers, 400 bytes cmem[0]";
        let r = parse_report("sm_89", text);
        assert_eq!((r.registers, r.spill_store_bytes, r.spill_load_bytes, r.stack_bytes), (133, 8, 12, 0));
    }
}
