//! The fleet for real: a real nats-server (Debian's 2.9.10 in CI) with the accounts and permissions the engine
//! generates, three engine roots each running its real daemon and bridge. Every job runs exactly once on its
//! own host and in order; producers' retries are dropped as duplicates; events match journals; poison jobs
//! are set aside; a host's credentials cannot do what a host must not. The kill storm is in
//! `tests/fleet_storm.rs`.

// These have files of their own, to keep this one under 600 lines.
mod aside;
mod credentials;
mod links;
mod wait;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{text, wait_until};
use crate::fleet_harness::{Host, Server, job_id, publish, runs, with_nats};

/// Jobs published in `exactly_once_in_order_on_their_own_host` (T8K_FLEET_JOBS for longer runs).
fn job_count() -> usize {
    std::env::var("T8K_FLEET_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45)
}

/// Three hosts, four sites each (`s0`…`s11`, site `sN` on host `hN%3`), daemons and bridges running.
fn three_hosts(server: &Server) -> Vec<Host> {
    let names = ["h0", "h1", "h2"];
    server.init(&names, 2, 10);
    for i in 0..12 {
        server.site(&format!("s{i}"), names[i % 3]);
    }
    names
        .iter()
        .map(|n| {
            let mut h = Host::new(server, n, "");
            h.start_daemon(&[]);
            h.start_bridge(&[]);
            h
        })
        .collect()
}

/// Waits until every host's events stream holds exactly its journal, record for record.
fn events_match_journals(server: &Server, hosts: &[Host]) {
    let read = || {
        with_nats(server, "viewer", async |_, js| {
            t8k_engine::fleet::view::records(&js, None, Duration::from_secs(86_400))
                .await
                .unwrap()
        })
    };
    let mut last = Vec::new();
    let ok = (0..300).any(|_| {
        last = read();
        let matched = hosts.iter().all(|h| {
            let stream: Vec<&String> = last
                .iter()
                .filter(|(host, _)| *host == h.name)
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
            let stream = last.iter().filter(|(host, _)| *host == h.name).count();
            eprintln!(
                "{}: {stream} events, {} journal records",
                h.name,
                h.journal_lines().len()
            );
        }
        panic!("the events stream does not match the journals");
    }
}

#[test]
fn exactly_once_in_order_on_their_own_host_with_retried_publishes() {
    let server = Server::start(&["h0", "h1", "h2"]);
    let hosts = three_hosts(&server);
    let n = job_count();
    // Jobs in a fixed order; every fifth is published through the real CLI, the rest through the library.
    let jobs: Vec<(String, ulid::Ulid)> = (0..n)
        .map(|i| {
            (
                format!("type=dedicated,tenant=t{i},site=s{},command=build", i % 12),
                ulid::Ulid::new(),
            )
        })
        .collect();
    let mut published = Vec::new();
    for (i, (_, id)) in jobs.iter().enumerate() {
        if i % 5 == 0 {
            let site = format!("s{}", i % 12);
            let tenant = format!("t{i}");
            let id = id.to_string();
            let out = server.producer(&[
                "trigger",
                "dedicated",
                "--site",
                &site,
                "--tenant",
                &tenant,
                "--fleet",
                "--id",
                &id,
            ]);
            assert!(out.status.success(), "{}", text(&out));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains(&format!("job {id} queued for host h{}", i % 12 % 3)),
                "{stdout}"
            );
        } else {
            published.extend(publish(&server, &jobs[i..=i]));
        }
    }
    // Every producer retries every job: the server drops each retry as a duplicate.
    let retried = publish(&server, &jobs);
    assert!(
        retried.iter().all(|r| r.3),
        "every retry is a duplicate: {retried:?}"
    );
    let out = server.producer(&[
        "trigger",
        "dedicated",
        "--site",
        "s1",
        "--tenant",
        "t1",
        "--fleet",
        "--id",
        &jobs[1].1.to_string(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("dropped as a duplicate"),
        "{}",
        text(&out)
    );
    // A host's own credentials cannot queue jobs: refused at once, with the reason.
    let out = hosts[0]
        .root
        .run(&["trigger", "dedicated", "--site", "s0", "--fleet"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not queue jobs"),
        "{}",
        text(&out)
    );

    let expected: BTreeMap<String, Vec<String>> = (0..3)
        .map(|h| {
            let ids = (0..n)
                .filter(|i| i % 12 % 3 == h)
                .map(|i| jobs[i].1.to_string())
                .collect();
            (format!("h{h}"), ids)
        })
        .collect();
    for h in &hosts {
        let want = &expected[&h.name];
        wait_until(Duration::from_secs(120), "every job to run", || {
            runs(&h.marks()).1.values().filter(|c| c.1 >= 1).count() >= want.len()
        });
    }
    for h in &hosts {
        let (order, counts) = runs(&h.marks());
        assert_eq!(
            &order, &expected[&h.name],
            "{}: jobs ran in publish order, only its own",
            h.name
        );
        assert!(
            counts.values().all(|c| *c == (1, 1)),
            "{}: each job ran exactly once: {counts:?}",
            h.name
        );
        assert!(
            h.root.failed().is_empty(),
            "{}: {:?}",
            h.name,
            h.root.failed()
        );
    }
    events_match_journals(&server, &hosts);

    // The operator's views: every host reported, every job is in the fleet's history.
    wait_until(Duration::from_secs(20), "every host to report", || {
        let out = server.operator(&[
            "fleet",
            "status",
            "--json",
            "--user",
            "viewer",
            "--password-file",
            server.password_file("viewer").to_str().unwrap(),
        ]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        doc["hosts"].as_array().is_some_and(|hs| {
            hs.len() == 3
                && hs.iter().all(|h| {
                    h["report_age_s"].as_u64().is_some_and(|a| a < 30)
                        && h["report"]["bridge"]["jobs"].as_u64()
                            == Some(expected[h["host"].as_str().unwrap()].len() as u64)
                        && h["waiting_in_stream"] == 0
                })
        })
    });
    let out = server.operator(&[
        "fleet",
        "status",
        "--user",
        "viewer",
        "--password-file",
        server.password_file("viewer").to_str().unwrap(),
    ]);
    let shown = String::from_utf8_lossy(&out.stdout);
    for h in ["h0", "h1", "h2"] {
        assert!(shown.contains(&format!("{h}: reported ")), "{shown}");
    }
    let out = server.operator(&[
        "fleet",
        "history",
        "--json",
        "-n",
        "1000",
        "--user",
        "viewer",
        "--password-file",
        server.password_file("viewer").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let history: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history.len(), n, "{}", text(&out));
    assert!(history.iter().all(|j| j["result"] == "succeeded"));
    for j in &history {
        let id = job_id(j["trigger"].as_str().unwrap()).unwrap();
        assert!(expected[j["host"].as_str().unwrap()].contains(&id), "{j}");
    }
}

/// The single host `h1` (site `s1`, plus `s2` on `h2` when asked), its daemon running.
fn one_host(server: &Server, ack_wait: u64, max_deliver: u64) -> Host {
    server.init(&["h1", "h2"], ack_wait, max_deliver);
    server.site("s1", "h1");
    server.site("s2", "h2");
    let mut h = Host::new(server, "h1", "");
    h.start_daemon(&[]);
    h
}

fn job(site: &str, tenant: &str) -> (String, ulid::Ulid) {
    (
        format!("type=dedicated,tenant={tenant},site={site},command=build"),
        ulid::Ulid::new(),
    )
}

fn ran(h: &Host, id: &ulid::Ulid) -> (usize, usize) {
    runs(&h.marks())
        .1
        .get(&id.to_string())
        .copied()
        .unwrap_or_default()
}

fn aside_of(h: &Host, id: &ulid::Ulid) -> Option<String> {
    h.root
        .failed()
        .into_iter()
        .find(|n| job_id(n).as_deref() == Some(id.to_string().as_str()))
}

#[test]
fn an_outbox_is_forwarded_once_even_across_a_crash() {
    let server = Server::start_with(&["h1", "h2"], &["h1"]);
    server.init(&["h1", "h2"], 2, 5);
    server.site("s1", "h1");
    server.site("s2", "h2");
    let mut cms = Host::with_fleet(&server, "h1", "", "outbox = \"OUTBOX\"");
    let outbox = cms.root.path.join("outbox");
    let config = std::fs::read_to_string(cms.root.path.join("config.toml")).unwrap();
    std::fs::write(
        cms.root.path.join("config.toml"),
        config.replace("OUTBOX", outbox.to_str().unwrap()),
    )
    .unwrap();
    let mut other = Host::new(&server, "h2", "");
    for h in [&mut cms, &mut other] {
        h.start_daemon(&[]);
    }
    other.start_bridge(&[]);
    std::fs::create_dir_all(&outbox).unwrap();
    // What the TractStack backend writes: plain trigger files, one with a job for each host.
    std::fs::write(
        outbox.join("build-1.csv"),
        "type=dedicated,site=s2,command=build\ntype=dedicated,site=s1,command=build\n",
    )
    .unwrap();
    std::fs::write(
        outbox.join("build-2.csv"),
        "type=dedicated,site=s9,command=build\n",
    )
    .unwrap();
    std::fs::write(
        outbox.join("build-3.csv"),
        "type=dedicated,site=s2,comand=build\n",
    )
    .unwrap();
    // The bridge dies after publishing a file's jobs and before removing it.
    cms.start_bridge(&[("FAILPOINTS", "fleet.forwarded=return(kill)")]);
    wait_until(
        Duration::from_secs(30),
        "the bridge to die after publishing",
        || !cms.bridge_alive(),
    );
    cms.kill_bridge();
    cms.start_bridge(&[]);
    let count = |h: &Host| h.marks().iter().filter(|(w, _)| w == "end").count();
    wait_until(Duration::from_secs(30), "both jobs to run", || {
        count(&cms) == 1 && count(&other) == 1
    });
    wait_until(Duration::from_secs(30), "the outbox to empty", || {
        let left: Vec<_> = std::fs::read_dir(&outbox)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".csv"))
            .collect();
        left.is_empty()
            && std::fs::read_dir(outbox.join(".forwarding"))
                .unwrap()
                .count()
                == 0
    });
    let failed =
        |name: &str| std::fs::read_to_string(outbox.join("failed").join(format!("{name}.reason")));
    assert!(
        failed("build-2.csv")
            .unwrap()
            .contains("site `s9` is not in the fleet's site map")
    );
    assert!(
        failed("build-3.csv")
            .unwrap()
            .contains("unknown key `comand`")
    );
    assert!(
        cms.bridge_out().contains("already queued"),
        "the re-forward was a duplicate"
    );
    // Forwarded twice, stored once: the stream only ever held two jobs, and both were taken.
    with_nats(&server, "admin", async |_, js| {
        let mut jobs = js.get_stream("T8K_JOBS").await.unwrap();
        let state = jobs.info().await.unwrap().state.clone();
        assert_eq!((state.messages, state.last_sequence), (0, 2));
    });
    assert_eq!((count(&cms), count(&other)), (1, 1));
}

/// The sockets of `pid` connected to `port` on loopback.
fn connections(pid: u32, port: u16) -> usize {
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let inodes: std::collections::HashSet<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote = f.get(2)?;
            let rport = u16::from_str_radix(remote.rsplit(':').next()?, 16).ok()?;
            (rport == port)
                .then(|| f.get(9).map(|s| s.to_string()))
                .flatten()
        })
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    l.to_string_lossy()
                        .strip_prefix("socket:[")
                        .and_then(|s| s.strip_suffix(']'))
                        .map(str::to_string)
                })
                .filter(|i| inodes.contains(i))
                .count()
        })
        .unwrap_or(0)
}

fn threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect()
}

#[test]
fn the_daemon_starts_no_runtime_and_opens_no_connection_even_with_a_fleet_configured() {
    let server = Server::start(&["h1"]);
    server.init(&["h1"], 2, 5);
    let mut h = Host::new(&server, "h1", "");
    h.start_daemon(&[]);
    h.root.wait_watching();
    h.start_bridge(&[]);
    wait_until(Duration::from_secs(20), "the bridge to connect", || {
        connections(h.bridge.as_ref().unwrap().id(), server.port) > 0
    });
    let daemon = h.daemon.as_ref().unwrap().id();
    h.root.trigger("build-1.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(20), "the local job to run", || {
        h.marks().len() == 2
    });
    assert_eq!(
        connections(daemon, server.port),
        0,
        "the daemon talks to NATS"
    );
    let names = threads(daemon);
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("t8k-fleet") || n.starts_with("tokio")),
        "{names:?}"
    );
    assert!(
        threads(h.bridge.as_ref().unwrap().id())
            .iter()
            .any(|n| n.starts_with("t8k-fleet"))
    );
}

#[test]
fn the_bridge_unit_passes_systemd_analyze_verify() {
    if let Err(problems) =
        crate::common::systemd::units::verify_shipped_unit("t8k-engine-fleet.service")
    {
        panic!("{problems}");
    }
}

#[test]
fn a_failing_inbox_write_is_retried_holding_the_job() {
    let server = Server::start(&["h1", "h2"]);
    let mut h = one_host(&server, 2, 3);
    // ENOSPC at the first four writes of the trigger: longer than the ack wait, more than max_deliver.
    h.start_bridge(&[("FAILPOINTS", "fleet.drop=4*return(enospc)")]);
    let j = job("s1", "f");
    publish(&server, std::slice::from_ref(&j));
    wait_until(Duration::from_secs(60), "the job to run", || {
        ran(&h, &j.1) == (1, 1)
    });
    let out = h.bridge_out();
    assert!(
        out.contains("No space left on device") && out.contains("retrying"),
        "{out}"
    );
    assert!(
        !out.contains("already in the engine's hands"),
        "the job was delivered again: {out}"
    );
    assert!(h.root.failed().is_empty(), "{:?}", h.root.failed());
}
