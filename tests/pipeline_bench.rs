//! Runs `benches/pipeline.sh --quick` (one release with the frontend in pm2 fork mode, one in cluster mode,
//! on the faithful fixture site) so that the benchmark cannot rot; its figures are the benchmark's to
//! report, not this test's to judge.

use std::path::Path;
use std::process::Command;

#[test]
fn the_pipeline_benchmark_runs_in_quick_mode_and_reports_both_pm2_modes() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(repo.join("benches/pipeline.sh"))
        .arg("--quick")
        .env("T8K_ENGINE", env!("CARGO_BIN_EXE_t8k-engine"))
        .env_remove("T8K_ROOT")
        .env_remove("T8K_ENGINE_CONFIG")
        .output()
        .expect("run bash benches/pipeline.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "benches/pipeline.sh --quick failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for mode in ["fork", "cluster"] {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(mode))
            .unwrap_or_else(|| panic!("no {mode} row:\n{stdout}"));
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(fields.len(), 11, "{row}");
        assert!(
            fields[2..].iter().all(|f| f.parse::<f64>().is_ok()),
            "every figure is a number: {row}"
        );
    }
    assert!(
        stdout.contains("backend warm-up before it listens: 1000 ms"),
        "{stdout}"
    );
}
