//! The fleet benchmark (benches/fleet.rs; tests/fleet.rs runs its quick mode): publish-to-job-start latency
//! across three hosts, jobs dispatched per second through one bridge, the bridge's idle CPU and memory, and,
//! in full mode, the binary-size and build-time cost of the `fleet` feature. It prints figures and asserts
//! only that it measured something.

use std::time::{Duration, Instant};

use super::super::common::wait_until;
use super::{Host, Server, job_id};

/// What one run measured.
#[derive(Debug, Default)]
pub struct Figures {
    /// Jobs whose latency was measured.
    pub latency_jobs: usize,
    /// Median publish-to-start latency, ms.
    pub latency_median_ms: f64,
    /// 99th percentile, ms.
    pub latency_p99_ms: f64,
    /// Jobs dispatched per second through one bridge.
    pub dispatch_per_s: f64,
    /// The idle bridge's CPU, percent of one core.
    pub idle_cpu_percent: f64,
    /// The idle bridge's resident memory, KiB.
    pub idle_rss_kib: u64,
}

const QUIET: &str = "fn build(job) { }\n";

fn now_ns() -> i128 {
    jiff::Timestamp::now().as_nanosecond()
}

/// Start times of jobs (ns since the epoch) by job id, from a host's journal.
fn starts(h: &Host) -> std::collections::HashMap<String, i128> {
    h.journal_lines()
        .iter()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            if v["event"] != "job_started" {
                return None;
            }
            let id = job_id(v["trigger"].as_str()?)?;
            let at: jiff::Timestamp = v["at"].as_str()?.parse().ok()?;
            Some((id, at.as_nanosecond()))
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the benchmark and prints its figures.
pub fn run(quick: bool) -> Figures {
    let (latency_jobs, dispatch_jobs, idle_s) = if quick { (60, 100, 3) } else { (300, 1000, 20) };
    let mut figures = Figures::default();
    let names = ["h0", "h1", "h2"];
    let server = Server::start(&names);
    server.init(&names, 30, 10);
    for (i, n) in names.iter().enumerate() {
        server.site(&format!("s{i}"), n);
    }
    let mut hosts: Vec<Host> = names
        .iter()
        .map(|n| {
            // The production default for status reports, so that the idle figures are what a host pays.
            let mut h = Host::with_fleet(&server, n, "", "status_interval = 15");
            h.root.script("dedicated.rhai", QUIET);
            h.start_daemon(&[]);
            h.root.wait_watching();
            h.start_bridge(&[]);
            h
        })
        .collect();

    // Latency: one job at a time, round-robin over the hosts, from the publish call to the job's start.
    let published: Vec<(usize, String, i128)> =
        super::with_nats(&server, "producer", async |_, js| {
            let mut out = Vec::new();
            for i in 0..latency_jobs {
                let h = i % 3;
                let spec = t8k_engine::trigger::parse_line(
                    &format!("type=dedicated,tenant=t{i},site=s{h},command=build"),
                    1,
                )
                .unwrap();
                let id = ulid::Ulid::new();
                let t0 = now_ns();
                t8k_engine::fleet::producer::publish(
                    &js,
                    names[h],
                    &spec,
                    &id,
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
                out.push((h, id.to_string(), t0));
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            out
        });
    wait_until(
        Duration::from_secs(120),
        "every latency job to start",
        || hosts.iter().map(|h| starts(h).len()).sum::<usize>() >= latency_jobs,
    );
    let started: Vec<_> = hosts.iter().map(starts).collect();
    let mut lat: Vec<f64> = published
        .iter()
        .map(|(h, id, t0)| (started[*h][id] - t0) as f64 / 1e6)
        .collect();
    lat.sort_by(f64::total_cmp);
    figures.latency_jobs = lat.len();
    figures.latency_median_ms = percentile(&lat, 0.5);
    figures.latency_p99_ms = percentile(&lat, 0.99);

    // Dispatch: jobs queued while h0's bridge and daemon are stopped, then one bridge hands them all over.
    let h0 = &mut hosts[0];
    h0.stop_bridge();
    h0.kill_daemon();
    let before = h0.root.inbox().len();
    super::with_nats(&server, "producer", async |_, js| {
        for i in 0..dispatch_jobs {
            let spec = t8k_engine::trigger::parse_line(
                &format!("type=dedicated,tenant=d{i},site=s0,command=build"),
                1,
            )
            .unwrap();
            t8k_engine::fleet::producer::publish(
                &js,
                "h0",
                &spec,
                &ulid::Ulid::new(),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        }
    });
    h0.start_bridge(&[]);
    let inbox = h0.root.path.join("state");
    let count = || {
        std::fs::read_dir(&inbox)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("build-"))
                    .count()
            })
            .unwrap_or(0)
    };
    wait_until(
        Duration::from_secs(60),
        "the first job to be handed over",
        || count() > before,
    );
    let first = Instant::now();
    wait_until(
        Duration::from_secs(300),
        "every job to be handed over",
        || count() >= before + dispatch_jobs,
    );
    figures.dispatch_per_s = (dispatch_jobs - 1) as f64 / first.elapsed().as_secs_f64();

    // Idle: h1's bridge with nothing to do.
    let pid = hosts[1].bridge.as_ref().unwrap().id();
    let cpu = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    // SAFETY: sysconf takes a plain integer and has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (c0, t0) = (cpu(), Instant::now());
    std::thread::sleep(Duration::from_secs(idle_s));
    figures.idle_cpu_percent = (cpu() - c0) as f64 / ticks / t0.elapsed().as_secs_f64() * 100.0;
    figures.idle_rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);

    println!(
        "fleet benchmark ({} mode, nats-server {}):",
        if quick { "quick" } else { "full" },
        server_version()
    );
    println!(
        "  publish-to-job-start latency over {} jobs on 3 hosts: median {:.1} ms, p99 {:.1} ms (target p99 < 100 ms)",
        figures.latency_jobs, figures.latency_median_ms, figures.latency_p99_ms
    );
    println!(
        "  dispatch through one bridge: {:.0} jobs/s ({dispatch_jobs} jobs queued, then handed over)",
        figures.dispatch_per_s
    );
    println!(
        "  idle bridge over {idle_s} s: {:.2}% of one core, {} KiB resident",
        figures.idle_cpu_percent, figures.idle_rss_kib
    );
    figures
}

fn server_version() -> String {
    std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
