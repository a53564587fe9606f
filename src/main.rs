//! The `t8k-engine` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    t8k_engine::cli::main()
}
