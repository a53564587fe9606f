//! The fleet under a kill storm: three hosts with real daemons and bridges and a real nats-server, while
//! jobs are published (and re-published): kill -9 of bridges, daemons and the server at random moments, a
//! clean server restart mid-job, and bridges crashing at failpoints between "trigger written" and "acked".
//! Then: 0 jobs lost, 0 run on a wrong host, first runs in publish order per host, a job run twice only where
//! a daemon was killed, and the events stream equal to each host's journal record for record.
//!
//! CI runs a short storm; `T8K_FLEET_STORM_JOBS` (default 36) and `T8K_FLEET_STORM_SEED` make it longer or
//! replay one.

// The harnesses are shared with the integration tests; these use only part of them.
#[allow(dead_code)]
mod common;
#[allow(dead_code)]
mod fleet_harness;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wait_until;
use fleet_harness::{Host, Server, runs, with_nats};

/// A small deterministic generator, so a failing storm can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Failpoints a restarted bridge may carry: crashes between receiving, writing, recording and acknowledging
/// a job, and between sending events and moving the cursor.
const BRIDGE_FAULTS: [&str; 5] = [
    "",
    "fleet.dropped=25%return(kill)",
    "fleet.received=15%return(kill)",
    "fleet.acked=25%return(kill)",
    "fleet.events_sent=25%return(kill)",
];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn no_job_is_lost_or_misplaced_under_a_kill_storm() {
    let seed = env_or(
        "T8K_FLEET_STORM_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    eprintln!("kill storm seed {seed} (replay with T8K_FLEET_STORM_SEED={seed})");
    let total = env_or("T8K_FLEET_STORM_JOBS", 36) as usize;
    let names = ["h0", "h1", "h2"];
    let server = Arc::new(Mutex::new(Server::start(&names)));
    {
        let s = server.lock().unwrap();
        s.init(&names, 2, 20);
        for i in 0..12 {
            s.site(&format!("s{i}"), names[i % 3]);
        }
    }
    let pause = [("JOB_PAUSE", "0.3")];
    let mut hosts: Vec<Host> = names
        .iter()
        .map(|n| {
            let mut h = Host::new(&server.lock().unwrap(), n, "");
            h.start_daemon(&pause);
            h.start_bridge(&[]);
            h
        })
        .collect();
    let jobs: Vec<(String, ulid::Ulid)> = (0..total)
        .map(|i| {
            (
                format!("type=dedicated,tenant=t{i},site=s{},command=build", i % 12),
                ulid::Ulid::new(),
            )
        })
        .collect();

    // The producer: publishes in order, retrying through outages; now and then re-publishes an earlier job.
    let done = Arc::new(AtomicBool::new(false));
    let (url, password) = {
        let s = server.lock().unwrap();
        (s.url(), s.password("producer"))
    };
    let producer = {
        let (jobs, done) = (jobs.clone(), done.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
            let runtime = t8k_engine::fleet::connect::runtime().unwrap();
            let duplicates = runtime.block_on(async {
                let client = async_nats::ConnectOptions::new()
                    .user_and_password("producer".into(), password)
                    .custom_inbox_prefix("_INBOX.producer")
                    .retry_on_initial_connect()
                    .connect(url)
                    .await
                    .unwrap();
                let js = async_nats::jetstream::new(client);
                let mut duplicates = 0;
                for (i, (line, id)) in jobs.iter().enumerate() {
                    let spec = t8k_engine::trigger::parse_line(line, 1).unwrap();
                    let host = format!("h{}", i % 12 % 3);
                    t8k_engine::fleet::producer::publish(
                        &js,
                        &host,
                        &spec,
                        id,
                        Duration::from_secs(120),
                    )
                    .await
                    .unwrap();
                    if rng.below(3) == 0 {
                        let k = rng.below(i as u64 + 1) as usize;
                        let spec = t8k_engine::trigger::parse_line(&jobs[k].0, 1).unwrap();
                        let again = t8k_engine::fleet::producer::publish(
                            &js,
                            &format!("h{}", k % 12 % 3),
                            &spec,
                            &jobs[k].1,
                            Duration::from_secs(120),
                        )
                        .await
                        .unwrap();
                        duplicates += usize::from(again.duplicate);
                    }
                    tokio::time::sleep(Duration::from_millis(100 + rng.below(200))).await;
                }
                duplicates
            });
            done.store(true, Ordering::SeqCst);
            duplicates
        })
    };

    // The storm, until the producer is done and a little after.
    let mut rng = Rng(seed);
    let mut daemon_kills: BTreeMap<String, usize> = BTreeMap::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut clean_restart_done = false;
    let calm_after = Instant::now() + Duration::from_secs(4);
    while !done.load(Ordering::SeqCst) || Instant::now() < calm_after {
        std::thread::sleep(Duration::from_millis(300 + rng.below(900)));
        // Bridges that a failpoint killed come back, like systemd's Restart=always.
        for h in hosts.iter_mut() {
            if !h.bridge_alive() {
                h.kill_bridge();
                let fault = BRIDGE_FAULTS[rng.below(BRIDGE_FAULTS.len() as u64) as usize];
                h.start_bridge(&[("FAILPOINTS", fault)]);
                *counts
                    .entry("bridge died at a failpoint or was restarted")
                    .or_default() += 1;
            }
        }
        let h = rng.below(3) as usize;
        match rng.below(10) {
            0..=2 => {
                hosts[h].kill_bridge();
                let fault = BRIDGE_FAULTS[rng.below(BRIDGE_FAULTS.len() as u64) as usize];
                hosts[h].start_bridge(&[("FAILPOINTS", fault)]);
                *counts.entry("bridge kill -9").or_default() += 1;
            }
            3..=5 => {
                if hosts[h].kill_daemon() {
                    *daemon_kills.entry(hosts[h].name.clone()).or_default() += 1;
                }
                hosts[h].start_daemon(&pause);
                *counts.entry("daemon kill -9").or_default() += 1;
            }
            6 | 7 => {
                let mut s = server.lock().unwrap();
                s.kill9();
                std::thread::sleep(Duration::from_millis(200 + rng.below(1500)));
                s.start_again();
                *counts.entry("server kill -9").or_default() += 1;
            }
            _ => {
                // A clean restart while a job runs somewhere.
                let busy = hosts.iter().any(|h| {
                    let (_, c) = runs(&h.marks());
                    c.values().any(|(s, e)| s > e)
                });
                if busy || clean_restart_done {
                    server.lock().unwrap().restart();
                    clean_restart_done |= busy;
                    *counts.entry("server clean restart").or_default() += 1;
                }
            }
        }
    }
    let duplicates = producer.join().unwrap();
    if !clean_restart_done {
        server.lock().unwrap().restart();
        *counts.entry("server clean restart").or_default() += 1;
    }
    eprintln!(
        "storm: {counts:?}, daemon kills {daemon_kills:?}, {duplicates} re-publishes dropped as duplicates"
    );

    // Calm: everything clean, every job accounted for.
    for h in hosts.iter_mut() {
        h.kill_bridge();
        h.start_bridge(&[]);
        if !h.daemon_alive() {
            h.kill_daemon();
            h.start_daemon(&pause);
        }
    }
    let expected: BTreeMap<String, Vec<String>> = names
        .iter()
        .enumerate()
        .map(|(hi, n)| {
            let ids = (0..total)
                .filter(|i| i % 12 % 3 == hi)
                .map(|i| jobs[i].1.to_string())
                .collect();
            (n.to_string(), ids)
        })
        .collect();
    for h in &hosts {
        let want: BTreeSet<&String> = expected[&h.name].iter().collect();
        wait_until(
            Duration::from_secs(180),
            "every job to finish after the storm",
            || {
                let (_, c) = runs(&h.marks());
                want.iter()
                    .all(|id| c.get(*id).is_some_and(|(s, e)| *e >= 1 && s >= e))
            },
        );
    }
    let mut doubles = 0;
    for h in &hosts {
        let (order, counts) = runs(&h.marks());
        let want = &expected[&h.name];
        assert_eq!(
            &order, want,
            "{}: first runs in publish order, its own jobs only (seed {seed})",
            h.name
        );
        let doubled: Vec<_> = counts.iter().filter(|(_, (s, _))| *s > 1).collect();
        let killed = daemon_kills.get(&h.name).copied().unwrap_or(0);
        assert!(
            doubled.len() <= killed,
            "{}: {} jobs ran twice but its daemon was killed {killed} times: {doubled:?} (seed {seed})",
            h.name,
            doubled.len()
        );
        doubles += doubled.len();
        assert!(
            h.root.failed().is_empty(),
            "{}: set aside {:?} (seed {seed})",
            h.name,
            h.root.failed()
        );
    }
    eprintln!(
        "storm: {total} jobs, 0 lost, 0 on a wrong host, {doubles} re-run after a daemon kill"
    );
    let server = server.lock().unwrap();
    events_match_journals(&server, &hosts, seed);
}

fn events_match_journals(server: &Server, hosts: &[Host], seed: u64) {
    let mut last = Vec::new();
    let ok = (0..600).any(|_| {
        last = with_nats(server, "viewer", async |_, js| {
            t8k_engine::fleet::view::records(&js, None, Duration::from_secs(86_400))
                .await
                .unwrap_or_default()
        });
        let matched = hosts.iter().all(|h| {
            let stream: Vec<&String> = last
                .iter()
                .filter(|(n, _)| *n == h.name)
                .map(|(_, l)| l)
                .collect();
            let journal = h.journal_lines();
            stream.len() == journal.len() && stream.iter().zip(&journal).all(|(a, b)| *a == b)
        });
        if !matched {
            std::thread::sleep(Duration::from_millis(100));
        }
        matched
    });
    if !ok {
        for h in hosts {
            let stream: Vec<&String> = last
                .iter()
                .filter(|(n, _)| *n == h.name)
                .map(|(_, l)| l)
                .collect();
            let journal = h.journal_lines();
            let first_diff = stream.iter().zip(&journal).position(|(a, b)| *a != b);
            eprintln!(
                "{}: {} events, {} journal records, first difference at {first_diff:?}",
                h.name,
                stream.len(),
                journal.len()
            );
        }
        panic!("the events stream does not match the journals (seed {seed})");
    }
}

/// What only the storm does to the server: stop it cleanly and start it again.
impl Server {
    /// A clean stop (SIGTERM, waits for the exit).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Starts it after a kill or a stop.
    fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        self.run();
    }
}

impl Host {
    /// Whether the daemon is still alive.
    fn daemon_alive(&mut self) -> bool {
        match &mut self.daemon {
            Some(d) => matches!(d.0.try_wait(), Ok(None)),
            None => false,
        }
    }
}
