//! The fleet for real: a real nats-server (Debian's 2.9.10 in CI) with the accounts and permissions the engine
//! generates, three engine roots each running its real daemon and bridge. Every job runs exactly once on its
//! own host and in order; producers' retries are dropped as duplicates; events match journals; poison jobs
//! are set aside; a host's credentials cannot do what a host must not. The kill storm is in
//! `tests/fleet_storm.rs`.

mod common;
mod fleet_harness;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{text, wait_until};
use fleet_harness::{Host, Server, job_id, publish, runs, with_nats};

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
            eprintln!("{}: {stream} events, {} journal records", h.name, h.journal_lines().len());
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
                "trigger", "dedicated", "--site", &site, "--tenant", &tenant, "--fleet", "--id", &id,
            ]);
            assert!(out.status.success(), "{}", text(&out));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains(&format!("job {id} queued for host h{}", i % 12 % 3)), "{stdout}");
        } else {
            published.extend(publish(&server, &jobs[i..=i]));
        }
    }
    // Every producer retries every job: the server drops each retry as a duplicate.
    let retried = publish(&server, &jobs);
    assert!(retried.iter().all(|r| r.3), "every retry is a duplicate: {retried:?}");
    let out = server.producer(&[
        "trigger", "dedicated", "--site", "s1", "--tenant", "t1", "--fleet", "--id", &jobs[1].1.to_string(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("dropped as a duplicate"), "{}", text(&out));
    // A host's own credentials cannot queue jobs: refused at once, with the reason.
    let out = hosts[0].root.run(&["trigger", "dedicated", "--site", "s0", "--fleet"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not queue jobs"), "{}", text(&out));

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
        assert_eq!(&order, &expected[&h.name], "{}: jobs ran in publish order, only its own", h.name);
        assert!(
            counts.values().all(|c| *c == (1, 1)),
            "{}: each job ran exactly once: {counts:?}",
            h.name
        );
        assert!(h.root.failed().is_empty(), "{}: {:?}", h.name, h.root.failed());
    }
    events_match_journals(&server, &hosts);

    // The operator's views: every host reported, every job is in the fleet's history.
    wait_until(Duration::from_secs(20), "every host to report", || {
        let out = server.operator(&["fleet", "status", "--json", "--user", "viewer", "--password-file", server.password_file("viewer").to_str().unwrap()]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        doc["hosts"].as_array().is_some_and(|hs| {
            hs.len() == 3
                && hs.iter().all(|h| {
                    h["report_age_s"].as_u64().is_some_and(|a| a < 30)
                        && h["report"]["bridge"]["jobs"].as_u64() == Some(expected[h["host"].as_str().unwrap()].len() as u64)
                        && h["waiting_in_stream"] == 0
                })
        })
    });
    let out = server.operator(&["fleet", "status", "--user", "viewer", "--password-file", server.password_file("viewer").to_str().unwrap()]);
    let shown = String::from_utf8_lossy(&out.stdout);
    for h in ["h0", "h1", "h2"] {
        assert!(shown.contains(&format!("{h}: reported ")), "{shown}");
    }
    let out = server.operator(&[
        "fleet", "history", "--json", "-n", "1000", "--user", "viewer", "--password-file", server.password_file("viewer").to_str().unwrap(),
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
