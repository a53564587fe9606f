//! Runs every fuzz target in `fuzz/` briefly through `benches/fuzz.sh` (cargo-fuzz on stable Rust, starting
//! from the committed seeds and an empty corpus) and fails on any finding. `T8K_FUZZ_SECONDS` sets the time
//! per target (default 15); `benches/fuzz.sh` alone runs them for as long as you like.

use std::path::Path;
use std::process::Command;

#[test]
fn fuzz_targets_find_nothing_in_a_short_run() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        installed,
        "cargo-fuzz is missing: run bash .ci/install.sh (or cargo install cargo-fuzz --locked)"
    );
    let seconds = std::env::var("T8K_FUZZ_SECONDS").unwrap_or_else(|_| "15".into());
    // A fresh corpus, so that the run is as long and as likely to find something on every machine; the
    // findings still go to fuzz/artifacts, where `cargo fuzz run` replays them.
    let corpus = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo.join("benches/fuzz.sh"))
        .arg(&seconds)
        .env("FUZZ_CORPUS", corpus.path())
        .current_dir(repo)
        .output()
        .expect("run bash benches/fuzz.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr_tail: String = {
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    assert!(
        out.status.success(),
        "benches/fuzz.sh {seconds} failed ({}): a finding is a bug to fix, replay it with the command shown\n{stdout}\n{stderr_tail}",
        out.status
    );
    eprintln!("{stdout}");
    // Every target ran, and ran for real: the table has a row per target with executions in it.
    let listed = Command::new("cargo")
        .args(["fuzz", "list", "--fuzz-dir", "fuzz"])
        .current_dir(repo)
        .output()
        .expect("run cargo fuzz list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let targets: Vec<&str> = listed.split_whitespace().collect();
    assert!(
        targets.len() >= 2,
        "cargo fuzz list found no targets: {listed}"
    );
    for target in targets {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(target))
            .unwrap_or_else(|| panic!("no result row for {target}:\n{stdout}"));
        let executions: u64 = row
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no execution count for {target}: {row}"));
        assert!(
            executions > 1000,
            "{target} ran only {executions} inputs: {row}"
        );
    }
}
