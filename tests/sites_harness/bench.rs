//! The sites benchmark (benches/sites.rs; the integration test benches::the_sites_benchmark_runs_in_quick_mode_and_builds_once
//! runs its quick mode): N dedicated sites on one backend commit with their own frontends, real go, pnpm
//! and pm2. In full mode an unmeasured first release per site; then one `trigger dedicated --all-sites`
//! round with the artifact cache off (every site builds its backend), one with it on, then one site's
//! backend commit changes alone. It prints figures and asserts only that it measured something.

use std::os::unix::process::ExitStatusExt;
use std::time::Instant;

use super::super::common::{git, text};
use super::{Server, steps};

/// What one round measured.
#[derive(Debug, Default, Clone)]
pub struct Round {
    /// Wall time of `t8k-engine run` over every site's trigger.
    pub wall_s: f64,
    /// CPU time (user and system) of `t8k-engine run` and every process it waited for.
    pub cpu_s: f64,
    /// `go build` steps run.
    pub go_builds: usize,
    /// Backends placed from the artifact cache.
    pub cache_hits: usize,
    /// The Go build's wall time (the first, when several).
    pub backend_build_s: f64,
    /// Each site's frontend install and build, summed.
    pub frontend_builds_s: f64,
    /// The busiest step: its memory (MiB), name and site.
    pub peak_rss_mib: u64,
    pub peak_step: String,
    /// Bytes the round wrote to storage: the engine and every process it waited for (wait4).
    pub written_bytes: u64,
    /// Sites that built their backend with go.
    pub built_by: Vec<String>,
    /// Wall time by step name, summed over the sites, largest first.
    pub by_step: Vec<(String, f64)>,
    /// Wall time in no step: the engine's own work (claiming, compiling scripts, journal, release records)
    /// and starting `t8k-engine run`.
    pub outside_steps_s: f64,
}

/// Everything the benchmark measured.
#[derive(Debug, Default)]
pub struct Figures {
    pub sites: usize,
    pub independent: Round,
    pub cached: Round,
    pub one_changed: Round,
    /// The artifact cache's hit rate over the cached round.
    pub hit_rate: f64,
}

/// Runs `t8k-engine run` and measures it: wall time, bytes written and CPU seconds of it and its children.
fn timed_run(server: &Server) -> (f64, u64, f64) {
    let started = Instant::now();
    // Reaped below by wait4, which also gives its resource usage (std's wait cannot).
    #[allow(clippy::zombie_processes)]
    let child = server.engine(&["-q", "run"]).spawn().unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data for which all-zero bytes are valid; wait4 reaps our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pointers to live locals; the child is ours and not waited for elsewhere.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(r, child.id() as i32, "wait4");
    let code = std::process::ExitStatus::from_raw(status);
    assert!(
        code.success(),
        "t8k-engine run: {code:?}\n{}",
        server.root.log()
    );
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = secs(usage.ru_utime) + secs(usage.ru_stime);
    (wall, usage.ru_oublock.max(0) as u64 * 512, cpu)
}

/// One round: drops the triggers, runs them, reads what the history says they did.
fn round(server: &Server) -> Round {
    let out = server
        .engine(&["trigger", "dedicated", "--all-sites"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let (wall_s, written_bytes, cpu_s) = timed_run(server);
    let jobs = server.history(server.sites.len());
    let mut r = Round {
        wall_s,
        written_bytes,
        cpu_s,
        ..Round::default()
    };
    for (target, s) in steps(&jobs) {
        let name = s["name"].as_str().unwrap_or("");
        let wall = s["wall_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
        match name {
            "build backend" => {
                if r.go_builds == 0 {
                    r.backend_build_s = wall;
                }
                r.go_builds += 1;
                r.built_by
                    .push(target.trim_start_matches("dedicated/").to_string());
            }
            "install frontend" | "build frontend" => r.frontend_builds_s += wall,
            _ => {}
        }
        let rss = s["max_rss_kib"].as_u64().unwrap_or(0) / 1024;
        if rss > r.peak_rss_mib {
            r.peak_rss_mib = rss;
            r.peak_step = format!("{name} ({target})");
        }
    }
    r.built_by.sort();
    r.by_step = by_step(&jobs);
    r.outside_steps_s = (wall_s - jobs.iter().map(in_steps).sum::<f64>()).max(0.0);
    r.cache_hits = server
        .root
        .log()
        .matches("from the cache instead of a build")
        .count();
    r
}

/// Wall time by step name over the jobs, largest first.
fn by_step(jobs: &[serde_json::Value]) -> Vec<(String, f64)> {
    let mut sums: Vec<(String, f64)> = Vec::new();
    for (_, s) in steps(jobs) {
        let name = s["name"].as_str().unwrap_or("").to_string();
        let wall = s["wall_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
        match sums.iter_mut().find(|(n, _)| *n == name) {
            Some((_, sum)) => *sum += wall,
            None => sums.push((name, wall)),
        }
    }
    sums.sort_by(|a, b| b.1.total_cmp(&a.1));
    sums
}

/// Seconds of a job spent in at least one step (steps of parallel branches overlap; nested ones too).
fn in_steps(job: &serde_json::Value) -> f64 {
    let mut spans: Vec<(u64, u64)> = job["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    let start = s["start_ms"].as_u64()?;
                    Some((start, start + s["wall_ms"].as_u64()?))
                })
                .collect()
        })
        .unwrap_or_default();
    spans.sort();
    let (mut total, mut end) = (0, 0);
    for (a, b) in spans {
        total += b.saturating_sub(a.max(end));
        end = end.max(b);
    }
    total as f64 / 1000.0
}

fn cache_stats(server: &Server) -> (u64, u64) {
    let s = server.status();
    let stats = &s["disk"]["artifacts"]["stats"];
    (
        stats["hits"].as_u64().unwrap_or(0),
        stats["misses"].as_u64().unwrap_or(0),
    )
}

/// Builds the fixture server and runs the three rounds; prints the figures.
pub fn run(quick: bool) -> Figures {
    let names: &[&str] = if quick {
        &["s1", "s2"]
    } else {
        &["s1", "s2", "s3", "s4", "s5"]
    };
    let set_up = Instant::now();
    let server = Server::new(names, "", 1000);
    eprintln!(
        "sites bench: {} sites set up in {:.0} s",
        names.len(),
        set_up.elapsed().as_secs_f64()
    );
    let mut f = Figures {
        sites: names.len(),
        ..Figures::default()
    };

    // Today's cost: the cache off, every site builds its own backend.
    let builtin = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/common.rhai"),
    )
    .unwrap();
    server.root.script(
        "lib/common.rhai",
        &builtin.replace(
            "export const ARTIFACT_CACHE = true;",
            "export const ARTIFACT_CACHE = false;",
        ),
    );
    if !quick {
        // A first release per site, unmeasured: it installs every frontend's dependencies, which the
        // measured rounds then need not, so that they differ only in the artifact cache.
        server.push_backend("v1w");
        for s in names {
            server.push_frontend(s, &format!("v1w-{s}"));
        }
        round(&server);
    }
    server.push_backend("v2");
    for s in names {
        server.push_frontend(s, &format!("v2-{s}"));
    }
    f.independent = round(&server);

    // The cache on: one Go build, every other site gets its binary.
    std::fs::remove_file(server.root.path.join("scripts/lib/common.rhai")).unwrap();
    let before_log = server.root.log().len();
    server.push_backend("v3");
    for s in names {
        server.push_frontend(s, &format!("v3-{s}"));
    }
    let (hits0, misses0) = cache_stats(&server);
    f.cached = round(&server);
    f.cached.cache_hits = server.root.log()[before_log..]
        .matches("from the cache instead of a build")
        .count();
    let (hits1, misses1) = cache_stats(&server);
    let lookups = (hits1 - hits0) + (misses1 - misses0);
    f.hit_rate = if lookups > 0 {
        (hits1 - hits0) as f64 / lookups as f64
    } else {
        0.0
    };
    for s in &server.sites {
        assert_eq!(
            s.serving(),
            (Some("v3".into()), Some(format!("v3-{}", s.name))),
            "{} serves the round's release",
            s.name
        );
    }

    // One site's backend follows a branch of its own with one more commit: only it builds.
    let odd = names[names.len() / 2];
    f.one_changed = one_site_changes(&server, odd);
    print(&f);
    f
}

/// Moves `odd`'s backend to a branch with one more commit and runs a round: only it should build.
fn one_site_changes(server: &Server, odd: &str) -> Round {
    let up = &server.backend_upstream;
    git(up, &["checkout", "-q", "-b", "custom"]);
    std::fs::write(up.join("cmd/tractstack-go/version.txt"), "v3-custom\n").unwrap();
    git(up, &["commit", "-qam", "a change for one site"]);
    git(up, &["push", "-q", "origin", "custom"]);
    git(up, &["checkout", "-q", "main"]);
    let clone = server.site(odd).backend_src();
    git(&clone, &["fetch", "-q", "origin"]);
    git(&clone, &["branch", "-q", "--set-upstream-to=origin/custom"]);
    let before_log = server.root.log().len();
    let mut r = round(server);
    r.cache_hits = server.root.log()[before_log..]
        .matches("from the cache instead of a build")
        .count();
    assert_eq!(server.site(odd).serving().0, Some("v3-custom".into()));
    r
}

fn print(f: &Figures) {
    let sum = f.cached.backend_build_s + f.cached.frontend_builds_s;
    println!(
        "sites benchmark: {} dedicated sites, one backend commit, a frontend each (real go, pnpm, pm2)",
        f.sites
    );
    println!(
        "{:<30} {:>8} {:>7} {:>9} {:>10} {:>11} {:>13} {:>9} {:>12}",
        "round",
        "wall_s",
        "cpu_s",
        "go_builds",
        "cache_hits",
        "backend_s",
        "frontends_s",
        "peak_MiB",
        "written_MiB"
    );
    for (name, r) in [
        ("all sites, cache off", &f.independent),
        ("all sites, cache on", &f.cached),
        ("one site's backend changed", &f.one_changed),
    ] {
        println!(
            "{:<30} {:>8.2} {:>7.1} {:>9} {:>10} {:>11.2} {:>13.2} {:>9} {:>12.1}",
            name,
            r.wall_s,
            r.cpu_s,
            r.go_builds,
            r.cache_hits,
            r.backend_build_s,
            r.frontend_builds_s,
            r.peak_rss_mib,
            r.written_bytes as f64 / (1u64 << 20) as f64
        );
    }
    let go_s = |r: &Round| {
        r.by_step
            .iter()
            .find(|(n, _)| n == "build backend")
            .map_or(0.0, |(_, s)| *s)
    };
    println!(
        "cache on vs off: {:.2}x the wall time ({:.2} s vs {:.2} s); go builds {} vs {} (target 1), {:.2} s vs {:.2} s of them",
        f.cached.wall_s / f.independent.wall_s.max(1e-9),
        f.cached.wall_s,
        f.independent.wall_s,
        f.cached.go_builds,
        f.independent.go_builds,
        go_s(&f.cached),
        go_s(&f.independent)
    );
    println!(
        "cache on vs one backend build + {} frontend builds ({:.2} + {:.2} = {:.2} s): {:+.0}% (target within 10%)",
        f.sites,
        f.cached.backend_build_s,
        f.cached.frontend_builds_s,
        sum,
        (f.cached.wall_s / sum.max(1e-9) - 1.0) * 100.0
    );
    println!(
        "artifact cache hit rate over the round: {:.0}%; busiest step: {} at {} MiB",
        f.hit_rate * 100.0,
        f.cached.peak_step,
        f.cached.peak_rss_mib
    );
    println!(
        "one site's backend changed: {} go build(s), by {:?}; {:.2} s",
        f.one_changed.go_builds, f.one_changed.built_by, f.one_changed.wall_s
    );
    print_breakdown(f);
}

/// Where the cached round's time went, by step and outside any step.
fn print_breakdown(f: &Figures) {
    let steps: Vec<String> = f
        .cached
        .by_step
        .iter()
        .filter(|(_, s)| *s >= 0.05)
        .map(|(n, s)| format!("{n} {s:.2}"))
        .collect();
    println!(
        "cache on, where the {:.2} s went (s, summed over the sites; parallel steps overlap): {}; in no step {:.2}",
        f.cached.wall_s,
        steps.join(", "),
        f.cached.outside_steps_s
    );
}
