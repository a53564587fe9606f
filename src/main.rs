//! The `t8k-engine` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    // Reads FAILPOINTS; lives as long as the process so that armed points stay armed.
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    t8k_engine::cli::main()
}
