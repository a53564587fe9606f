//! The fleet benchmark: publish-to-job-start latency across three hosts (median and p99), jobs dispatched
//! per second through one bridge, the bridge's idle CPU and memory, and the binary-size and build-time
//! cost of the `fleet` feature (two clean release builds, so it takes minutes).
//!
//!   cargo bench --bench fleet            full mode
//!   cargo bench --bench fleet -- --quick  what CI runs (the integration test benches::the_benchmark_quick_mode_measures_every_figure runs it on the debug build)
//!
//! Needs `nats-server` on PATH (.ci/install.sh installs it).

// The test harnesses; the benchmark uses only their fleet part.
#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/fleet_harness/mod.rs"]
mod fleet_harness;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    fleet_harness::bench::run(quick);
    if quick {
        println!("  binary size and build time: skipped in quick mode (two clean release builds)");
        return;
    }
    build_cost();
}

/// Two clean release builds of the engine, without and with the fleet: wall time, binary size, crates.
fn build_cost() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut rows = Vec::new();
    for (label, args) in [
        ("without fleet", vec!["--no-default-features"]),
        ("with fleet", vec![]),
    ] {
        let target = repo
            .join("target/bench-fleet-cost")
            .join(label.replace(' ', "-"));
        let _ = std::fs::remove_dir_all(&target);
        let started = Instant::now();
        let status = Command::new("cargo")
            .args([
                "build",
                "--release",
                "--locked",
                "--quiet",
                "--bin",
                "t8k-engine",
            ])
            .args(&args)
            .arg("--target-dir")
            .arg(&target)
            .current_dir(repo)
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build {label} failed");
        let took = started.elapsed().as_secs_f64();
        let binary = target.join("release/t8k-engine");
        let stripped = target.join("t8k-engine.stripped");
        let _ = Command::new("strip")
            .arg("-o")
            .arg(&stripped)
            .arg(&binary)
            .status();
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let crates = Command::new("cargo")
            .args(["tree", "--locked", "-e", "normal", "--prefix", "none"])
            .args(&args)
            .current_dir(repo)
            .output()
            .map(|o| {
                let mut names: Vec<String> = String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
                    .collect();
                names.sort();
                names.dedup();
                names.len()
            })
            .unwrap_or(0);
        println!(
            "  {label}: clean release build {took:.0} s, binary {} bytes ({} stripped), {crates} crates",
            size(&binary),
            size(&stripped)
        );
        rows.push((took, size(&stripped), crates));
        let _ = std::fs::remove_dir_all(&target);
    }
    let (without, with) = (rows[0], rows[1]);
    println!(
        "  the fleet costs +{} bytes stripped (+{:.1}%), +{:.0} s of clean build, +{} crates",
        with.1 as i64 - without.1 as i64,
        (with.1 as f64 / without.1 as f64 - 1.0) * 100.0,
        with.0 - without.0,
        with.2 as i64 - without.2 as i64
    );
}
