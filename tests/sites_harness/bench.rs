//! The sites benchmark (benches/sites.rs; the integration test benches::the_sites_benchmark_runs_in_quick_mode_and_builds_once
//! runs its quick mode): N dedicated sites on one backend commit with their own frontends, real go, pnpm
//! and pm2. In full mode an unmeasured first release per site. Then, with the artifact cache off: one
//! `trigger dedicated --all-sites` round in which every site builds its backend (N independent builds), and
//! the yardstick's jobs (yardstick.rs): a round in which only the frontends changed and one job in which
//! only one site's backend changed. Then one round with the cache on, and one in which one site's backend
//! commit changes alone. It prints figures (report.rs) and asserts only that it measured what it says.

use std::os::unix::process::ExitStatusExt;
use std::time::Instant;

use super::super::common::{git, text};
use super::{Server, steps};

/// What one round measured.
#[derive(Debug, Default, Clone)]
pub struct Round {
    /// Wall time of `t8k-engine run` over the round's triggers.
    pub wall_s: f64,
    /// CPU time (user and system) of `t8k-engine run` and every process it waited for.
    pub cpu_s: f64,
    /// Jobs the run ran (each succeeded).
    pub jobs: usize,
    /// The jobs' own wall times from the history's records, summed (the run's wall time less starting
    /// the engine and claiming the triggers).
    pub jobs_s: f64,
    /// `go build` steps run.
    pub go_builds: usize,
    /// Backends placed from the artifact cache.
    pub cache_hits: usize,
    /// `build frontend` steps run.
    pub frontend_builds: usize,
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
    /// Per job, averaged: seconds before its first build step (check room, pulls, the astro-tractstack
    /// update, the build key and the plan).
    pub head_s: f64,
    /// Per job, averaged: the release's tail, from its switch to its end (switch, restart, reload, health
    /// and log checks, storing the backend, records, pruning kept releases).
    pub tail_s: f64,
}

/// Everything the benchmark measured.
#[derive(Debug, Default)]
pub struct Figures {
    pub sites: usize,
    /// Every site's backend and frontend changed, the artifact cache off: N independent builds.
    pub independent: Round,
    /// Only each site's frontend changed (cache off): N frontend builds, as jobs.
    pub frontend_only: Round,
    /// Only one site's backend changed, the cache off so that `go build` runs: one backend build, as a job.
    pub backend_only: Round,
    /// The site of `backend_only`.
    pub backend_only_site: String,
    /// Every site's backend and frontend changed, the cache on.
    pub cached: Round,
    pub one_changed: Round,
    /// The artifact cache's hit rate over the cached round.
    pub hit_rate: f64,
}

/// Steps that build: everything before the first of them is the job's head.
const BUILD_STEPS: [&str; 4] = [
    "build backend",
    "fetch backend",
    "install frontend",
    "build frontend",
];

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

/// Every job the history holds, newest first.
fn all_jobs(server: &Server) -> Vec<serde_json::Value> {
    server.history(100_000)
}

/// Runs the triggers waiting in the inbox and reads what the history says their jobs did.
pub fn measure(server: &Server) -> Round {
    let before: Vec<serde_json::Value> = all_jobs(server)
        .into_iter()
        .map(|j| j["job_id"].clone())
        .collect();
    let log_before = server.root.log().len();
    let (wall_s, written_bytes, cpu_s) = timed_run(server);
    let jobs: Vec<serde_json::Value> = all_jobs(server)
        .into_iter()
        .filter(|j| !before.contains(&j["job_id"]))
        .collect();
    for j in &jobs {
        assert_eq!(j["result"], "succeeded", "{j}");
    }
    let mut r = Round {
        wall_s,
        written_bytes,
        cpu_s,
        jobs: jobs.len(),
        jobs_s: jobs.iter().map(duration_s).sum(),
        ..Round::default()
    };
    read_steps(&mut r, &jobs);
    r.by_step = by_step(&jobs);
    r.outside_steps_s = (wall_s - jobs.iter().map(in_steps).sum::<f64>()).max(0.0);
    r.cache_hits = server.root.log()[log_before..]
        .matches("from the cache instead of a build")
        .count();
    r.head_s = mean(jobs.iter().filter_map(head));
    r.tail_s = mean(jobs.iter().filter_map(tail));
    r
}

/// One round: a trigger for every site, run and measured.
pub fn round(server: &Server) -> Round {
    let out = server
        .engine(&["trigger", "dedicated", "--all-sites"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    measure(server)
}

/// Builds, frontend builds, their times and the busiest step, from the jobs' steps.
fn read_steps(r: &mut Round, jobs: &[serde_json::Value]) {
    for (target, s) in steps(jobs) {
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
            "install frontend" => r.frontend_builds_s += wall,
            "build frontend" => {
                r.frontend_builds_s += wall;
                r.frontend_builds += 1;
            }
            _ => {}
        }
        let rss = s["max_rss_kib"].as_u64().unwrap_or(0) / 1024;
        if rss > r.peak_rss_mib {
            r.peak_rss_mib = rss;
            r.peak_step = format!("{name} ({target})");
        }
    }
    r.built_by.sort();
}

fn duration_s(job: &serde_json::Value) -> f64 {
    job["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
}

/// Milliseconds from the job's start to the first step named one of `names`.
fn first_start(job: &serde_json::Value, names: &[&str]) -> Option<u64> {
    job["steps"]
        .as_array()?
        .iter()
        .filter(|s| names.contains(&s["name"].as_str().unwrap_or("")))
        .filter_map(|s| s["start_ms"].as_u64())
        .min()
}

/// Seconds of a job before its first build step; `None` when it built nothing.
fn head(job: &serde_json::Value) -> Option<f64> {
    Some(first_start(job, &BUILD_STEPS)? as f64 / 1000.0)
}

/// Seconds of a job from its switch to its end; `None` when it switched nothing.
fn tail(job: &serde_json::Value) -> Option<f64> {
    let switch = first_start(job, &["switch"])? as f64 / 1000.0;
    Some((duration_s(job) - switch).max(0.0))
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
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

/// A new backend commit and a new commit of every site's frontend, all tagged `version`.
fn push_all(server: &Server, version: &str) {
    server.push_backend(version);
    for s in &server.sites {
        server.push_frontend(&s.name, &format!("{version}-{}", s.name));
    }
}

/// Turns the artifact cache off with a copy of the built-in lib/common.rhai; removing it turns it on.
fn cache_off(server: &Server) {
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
}

/// Builds the fixture server and runs the rounds in an order in which none disturbs another; prints the
/// figures.
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
    cache_off(&server);
    if !quick {
        // A first release per site, unmeasured: it installs every frontend's dependencies, which the
        // measured rounds then need not, so that they differ only in the artifact cache.
        push_all(&server, "v1w");
        round(&server);
    }
    push_all(&server, "v2");
    f.independent = round(&server);

    // The yardstick's jobs, still with the cache off: frontends alone, then one backend alone. Nothing
    // is stored in the cache, so the cached round below still builds once.
    f.frontend_only = super::yardstick::frontends_only(&server, "v2f");
    f.backend_only_site = names[0].to_string();
    f.backend_only = super::yardstick::backend_only(&server, names[0], "v2b");

    // The cache on: one Go build, every other site gets its binary.
    std::fs::remove_file(server.root.path.join("scripts/lib/common.rhai")).unwrap();
    push_all(&server, "v3");
    let (hits0, misses0) = cache_stats(&server);
    f.cached = round(&server);
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
    super::report::print(&f);
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
    let r = round(server);
    assert_eq!(server.site(odd).serving().0, Some("v3-custom".into()));
    r
}
