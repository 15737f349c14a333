//! The `flashcore` command over this crate's kernels (`list`, `emit`, `check`, `schedule`).

// The kernels live in this crate's library; naming it links it into the binary (a dependency
// nothing names is not linked, and its kernels would not register).
extern crate flashcore_downstream;

fn main() -> std::process::ExitCode {
    flashcore::cli::main()
}
