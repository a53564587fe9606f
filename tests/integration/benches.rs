//! Every benchmark in `benches/` in its quick mode (a few seconds each, small sizes, one run), so that none
//! can rot: a change that breaks one fails here. Their figures are the benchmarks' to report, not these
//! tests' to judge; each checks only that every figure was measured.
//!
//! | benchmark | quick mode | test |
//! |---|---|---|
//! | `benches/pipeline.sh` | `--quick`: one release per pm2 mode | `the_pipeline_benchmark_runs_in_quick_mode_and_reports_both_pm2_modes` |
//! | `benches/watch.py` | `--triggers 20 --idle 1` | `the_watch_benchmark_runs_in_quick_mode` |
//! | `benches/journal.py` | `--quick`: a 1 MiB journal, 3 jobs | `the_journal_benchmark_runs_in_quick_mode` |
//! | `benches/whitelist.sh` | `--quick`: n500, one timed run | `the_whitelist_benchmark_runs_in_quick_mode` |
//! | `benches/sites.rs` | `-- --quick`: two sites, on the debug build | `the_sites_benchmark_runs_in_quick_mode_and_builds_once` |
//! | `benches/fleet.rs` | `-- --quick`: its harness on the debug build | `the_benchmark_quick_mode_measures_every_figure` |
//! | `benches/fuzz.sh` | `15` seconds per target | the `fuzz` test binary (`tests/fuzz.rs`), apart because it takes every core |

use std::path::Path;
use std::process::Command;

use crate::common::text;

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

#[test]
fn the_watch_benchmark_runs_in_quick_mode() {
    let out = std::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/watch.py"))
        .args(["--triggers", "20", "--idle", "1", "--binary"])
        .arg(env!("CARGO_BIN_EXE_t8k-engine"))
        .output()
        .expect("run python3 benches/watch.py");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("close-to-start latency over 20 triggers"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_journal_benchmark_runs_in_quick_mode() {
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/journal.py"))
        .args(["--quick", "--binary", env!("CARGO_BIN_EXE_t8k-engine")])
        .env_remove("T8K_ROOT")
        .env_remove("T8K_ENGINE_CONFIG")
        .output()
        .expect("run python3 benches/journal.py");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One row with an empty journal, one with the filled one: every figure a number, the journal filled.
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for row in &rows {
        assert_eq!(row.len(), 12, "{row:?}");
        let number = |f: &str| {
            f.trim_end_matches(char::is_alphabetic)
                .parse::<f64>()
                .is_ok()
        };
        assert!(
            row.iter().all(|f| number(f)),
            "every figure is a number: {row:?}"
        );
    }
    assert!(
        rows[1][1].parse::<u64>().unwrap() > 100,
        "the journal was filled: {stdout}"
    );
}

#[cfg(feature = "fleet")]
#[test]
fn the_benchmark_quick_mode_measures_every_figure() {
    let f = crate::fleet_harness::bench::run(true);
    assert!(
        f.latency_jobs >= 60
            && f.latency_median_ms > 0.0
            && f.latency_p99_ms >= f.latency_median_ms,
        "{f:?}"
    );
    assert!(f.dispatch_per_s > 0.0 && f.idle_rss_kib > 0, "{f:?}");
}

#[test]
fn the_whitelist_benchmark_runs_in_quick_mode() {
    let (bench, dist) = crate::whitelist_corpus::corpus();
    let corpus = dist.parent().and_then(Path::parent).unwrap();
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/whitelist.sh"))
        .arg("--quick")
        .env("T8K_ENGINE", env!("CARGO_BIN_EXE_t8k-engine"))
        .env("T8K_WL_BENCH", &bench)
        .env("T8K_WL_CORPUS", corpus)
        .env_remove("SEED")
        .output()
        .expect("run bash benches/whitelist.sh");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for extractor in ["t8k-engine whitelist", "baseline_v1.py"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with("n500 ") && l.contains(extractor))
            .unwrap_or_else(|| panic!("no n500 row for {extractor}:\n{stdout}"));
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert!(
            fields[fields.len() - 6..]
                .iter()
                .all(|f| f.parse::<f64>().is_ok()),
            "every figure is a number: {row}"
        );
    }
}

#[test]
fn the_sites_benchmark_runs_in_quick_mode_and_builds_once() {
    let f = crate::sites_harness::bench::run(true);
    assert_eq!(f.sites, 2);
    assert_eq!(
        (f.independent.go_builds, f.cached.go_builds),
        (2, 1),
        "{f:?}"
    );
    assert_eq!(f.cached.cache_hits, 1, "{f:?}");
    assert_eq!(f.one_changed.built_by, ["s2"], "{f:?}");
    assert!(
        f.cached.wall_s > 0.0 && f.cached.backend_build_s > 0.0 && f.cached.peak_rss_mib > 0,
        "{f:?}"
    );
    assert!(
        f.cached
            .by_step
            .iter()
            .any(|(n, s)| n == "build frontend" && *s > 0.0)
            && f.cached.outside_steps_s < f.cached.wall_s,
        "{f:?}"
    );
    // The yardstick as jobs: a frontend-only round (one job a site, no Go build, no cache) and one
    // backend-only job that really ran `go build` and built no frontend.
    let fo = &f.frontend_only;
    assert_eq!(
        (fo.jobs, fo.frontend_builds, fo.go_builds, fo.cache_hits),
        (2, 2, 0, 0),
        "{f:?}"
    );
    let bo = &f.backend_only;
    assert_eq!(
        (bo.jobs, bo.frontend_builds, bo.go_builds, bo.cache_hits),
        (1, 0, 1, 0),
        "{f:?}"
    );
    assert_eq!(
        (bo.built_by.as_slice(), f.backend_only_site.as_str()),
        (["s1".to_string()].as_slice(), "s1")
    );
    for r in [&f.independent, fo, bo, &f.cached, &f.one_changed] {
        assert!(
            r.wall_s > 0.0
                && r.jobs_s > 0.0
                && r.jobs_s <= r.wall_s
                && r.head_s > 0.0
                && r.tail_s > 0.0,
            "every round is measured, its jobs within its run, with a head and a tail: {r:?}"
        );
    }
    assert!(
        bo.backend_build_s > 0.0 && fo.frontend_builds_s > 0.0,
        "{f:?}"
    );
    assert!(
        f.jobs_yardstick_s() > 0.0 && f.steps_yardstick_s() > 0.0,
        "{f:?}"
    );
}
