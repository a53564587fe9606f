//! The sites benchmark: five dedicated sites on one backend commit with their own frontends (real go, pnpm
//! and pm2), one `trigger dedicated --all-sites` round with the artifact cache off and one with it on (wall
//! time, Go builds, cache hits and hit rate, peak memory of the busiest step, bytes written, each job's
//! fixed cost around its builds), the cached round against one backend build plus five frontend builds
//! measured as real jobs (a frontend-only round, a backend-only job) and as build steps alone, then one
//! site's backend commit changes alone. See tests/sites_harness/bench.rs.
//!
//!   cargo bench --bench sites             five sites
//!   cargo bench --bench sites -- --quick  two sites: what CI runs (the integration test
//!                                         benches::the_sites_benchmark_runs_in_quick_mode_and_builds_once, on the debug build)

// The test harnesses; the benchmark uses only what the sites need.
#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/sites_harness/mod.rs"]
mod sites_harness;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    sites_harness::bench::run(quick);
}
