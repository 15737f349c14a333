//! The `flashcore` command over the kernels of the `flashcore` crate (see `flashcore::cli`).

fn main() -> std::process::ExitCode {
    flashcore::cli::main()
}
