//! Prints the sites benchmark's figures: the rounds side by side, the cache against its yardsticks, and
//! where the time went. bench.rs and yardstick.rs measure; this only formats.

use super::bench::{Figures, Round};
use super::yardstick::against;

pub fn print(f: &Figures) {
    println!(
        "sites benchmark: {} dedicated sites, one backend commit, a frontend each (real go, pnpm, pm2)",
        f.sites
    );
    print_rounds(f);
    let go_s = |r: &Round| {
        r.by_step
            .iter()
            .find(|(n, _)| n == "build backend")
            .map_or(0.0, |(_, s)| *s)
    };
    println!(
        "cache on vs off ({} independent builds): {:.2}x the wall time ({:.2} s vs {:.2} s); go builds {} vs {} (target 1), {:.2} s vs {:.2} s of them",
        f.sites,
        f.cached.wall_s / f.independent.wall_s.max(1e-9),
        f.cached.wall_s,
        f.independent.wall_s,
        f.cached.go_builds,
        f.independent.go_builds,
        go_s(&f.cached),
        go_s(&f.independent)
    );
    print_yardsticks(f);
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
    print_breakdown("cache on", &f.cached);
    print_breakdown("frontends only", &f.frontend_only);
}

/// One line per round, with each job's fixed cost around its builds.
fn print_rounds(f: &Figures) {
    println!(
        "{:<30} {:>4} {:>8} {:>7} {:>9} {:>10} {:>11} {:>13} {:>7} {:>7} {:>9} {:>12}",
        "round",
        "jobs",
        "wall_s",
        "cpu_s",
        "go_builds",
        "cache_hits",
        "backend_s",
        "frontends_s",
        "head_s",
        "tail_s",
        "peak_MiB",
        "written_MiB"
    );
    let backend_only = format!("{}'s backend only, cache off", f.backend_only_site);
    for (name, r) in [
        ("all sites, cache off", &f.independent),
        ("frontends only, cache off", &f.frontend_only),
        (backend_only.as_str(), &f.backend_only),
        ("all sites, cache on", &f.cached),
        ("one site's backend changed", &f.one_changed),
    ] {
        println!(
            "{:<30} {:>4} {:>8.2} {:>7.1} {:>9} {:>10} {:>11.2} {:>13.2} {:>7.2} {:>7.2} {:>9} {:>12.1}",
            name,
            r.jobs,
            r.wall_s,
            r.cpu_s,
            r.go_builds,
            r.cache_hits,
            r.backend_build_s,
            r.frontend_builds_s,
            r.head_s,
            r.tail_s,
            r.peak_rss_mib,
            r.written_bytes as f64 / (1u64 << 20) as f64
        );
    }
    println!(
        "  (wall_s: `t8k-engine run`; head_s and tail_s, averaged over the jobs that built and switched: before its first build step (check room, pulls, the astro-tractstack update, the build key, the plan), and from its switch to its end (switch, restart, reload, health and log checks, storing the backend, records))"
    );
}

/// The cached round against one backend build plus N frontend builds, as jobs and as build steps alone.
fn print_yardsticks(f: &Figures) {
    let (jobs, records, steps) = (
        f.jobs_yardstick_s(),
        f.jobs_yardstick_records_s(),
        f.steps_yardstick_s(),
    );
    println!(
        "cache on ({:.2} s) vs one backend build + {} frontend builds (target within 10%):",
        f.cached.wall_s, f.sites
    );
    println!(
        "  as jobs: {}'s backend-only job {:.2} s ({} go build) + {} frontend-only jobs {:.2} s ({} go builds) = {:.2} s: {:+.0}% (`t8k-engine run` wall times, as the rounds)",
        f.backend_only_site,
        f.backend_only.wall_s,
        f.backend_only.go_builds,
        f.frontend_only.jobs,
        f.frontend_only.wall_s,
        f.frontend_only.go_builds,
        jobs,
        against(f.cached.wall_s, jobs)
    );
    println!(
        "    the job records alone (no engine start-up or claiming): {:.2} + {:.2} = {:.2} s, against the cached round's {:.2} s: {:+.0}%",
        f.backend_only.jobs_s,
        f.frontend_only.jobs_s,
        records,
        f.cached.jobs_s,
        against(f.cached.jobs_s, records)
    );
    println!(
        "  as build steps alone: the cached round's `build backend` {:.2} s + every site's `install frontend` and `build frontend` {:.2} s = {:.2} s: {:+.0}%",
        f.cached.backend_build_s,
        f.cached.frontend_builds_s,
        steps,
        against(f.cached.wall_s, steps)
    );
    println!(
        "    which leaves out what every release does besides building: check room, pulls, the astro-tractstack update, the build key, switch, restarts, reload, health and log checks, records, the engine's own work"
    );
}

/// Where a round's time went, by step and outside any step: the cached round and the frontend-only round
/// the yardstick is mostly made of.
fn print_breakdown(label: &str, r: &Round) {
    let steps: Vec<String> = r
        .by_step
        .iter()
        .filter(|(_, s)| *s >= 0.05)
        .map(|(n, s)| format!("{n} {s:.2}"))
        .collect();
    println!(
        "{label}, where the {:.2} s went (s, summed over the sites; parallel steps overlap): {}; in no step {:.2}",
        r.wall_s,
        steps.join(", "),
        r.outside_steps_s
    );
}
