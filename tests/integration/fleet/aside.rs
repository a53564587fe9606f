//! Jobs a host cannot run are set aside with their reason, never retried forever: a poison job after
//! `max_deliver`, a job that is malformed or for a site that moved, and what a producer is told when the
//! site map cannot place its job. The next job always flows.

use std::time::Duration;

use super::{aside_of, job, one_host, ran};
use crate::common::{text, wait_until};
use crate::fleet_harness::{Server, publish, with_nats};

#[test]
fn a_poison_job_is_set_aside_after_max_deliver_and_the_next_job_flows() {
    let server = Server::start(&["h1", "h2"]);
    let mut h = one_host(&server, 1, 3);
    let (poison, good) = (job("s1", "p"), job("s1", "g"));
    publish(&server, &[poison.clone(), good.clone()]);
    // Stand-in for a job that crashes the bridge (no real job can): a failpoint kills the bridge each time
    // it receives a job; like systemd, the test starts it again.
    for _ in 0..12 {
        if aside_of(&h, &poison.1).is_some() {
            break;
        }
        h.start_bridge(&[("FAILPOINTS", "fleet.received=return(kill)")]);
        wait_until(
            Duration::from_secs(30),
            "the bridge to die on the job",
            || !h.bridge_alive() || aside_of(&h, &poison.1).is_some(),
        );
        h.kill_bridge();
    }
    let aside = aside_of(&h, &poison.1).expect("the poison job is set aside");
    let reason = h.root.reason(&aside);
    assert!(
        reason.contains("on each of its 3 deliveries")
            && reason.contains(&format!("t8k-engine retry {aside}")),
        "{reason}"
    );
    assert!(
        reason.contains("type=dedicated,tenant=p,site=s1,command=build"),
        "{reason}"
    );
    h.start_bridge(&[]);
    wait_until(Duration::from_secs(30), "the next job to run", || {
        ran(&h, &good.1) == (1, 1)
    });
    assert_eq!(ran(&h, &poison.1), (0, 0), "the poison job did not run");
    with_nats(&server, "admin", async |_, js| {
        let mut jobs = js.get_stream("T8K_JOBS").await.unwrap();
        assert_eq!(
            jobs.info().await.unwrap().state.messages,
            0,
            "removed from the stream"
        );
    });
    // The advice in the reason is safe to follow: retried, it runs once.
    let out = h.root.run(&["retry", &aside]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until(Duration::from_secs(30), "the retried job to run", || {
        ran(&h, &poison.1) == (1, 1)
    });
}

#[test]
fn bad_and_moved_jobs_are_set_aside_with_their_reason_and_the_next_flows() {
    let server = Server::start(&["h1", "h2"]);
    let mut h = one_host(&server, 2, 5);
    h.start_bridge(&[]);
    let bad_body = ulid::Ulid::new();
    let wrong_subject = ulid::Ulid::new();
    with_nats(&server, "producer", async |_, js| {
        for (id, subject, body) in [
            (
                bad_body.to_string(),
                "t8k.jobs.h1.dedicated.default.s1.build",
                "type=dedicated,site=s1,command=build;rm -rf /\n",
            ),
            (
                wrong_subject.to_string(),
                "t8k.jobs.h1.dedicated.default.s1.build",
                "type=dedicated,site=s2,command=build\n",
            ),
            (
                "not-a-ulid".to_string(),
                "t8k.jobs.h1.dedicated.default.s1.build",
                "type=dedicated,site=s1,command=build\n",
            ),
        ] {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            js.publish_with_headers(subject, headers, body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    // A site moved to another host after its job was queued for this one.
    let moved = job("s1", "m");
    publish(&server, std::slice::from_ref(&moved));
    let out = server.operator(&["fleet", "sites", "set", "s1", "h2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("moved from h1 to h2"),
        "{}",
        text(&out)
    );
    let next = job("s3", "n");
    server.site("s3", "h1");
    publish(&server, std::slice::from_ref(&next));
    wait_until(Duration::from_secs(30), "the next job to run", || {
        ran(&h, &next.1) == (1, 1)
    });
    let reasons: Vec<String> = h.root.failed().iter().map(|n| h.root.reason(n)).collect();
    for needle in [
        "its body is not one trigger line: line 1: value `build;rm -rf /` for `command` contains ';'",
        "does not match its body",
        "header `not-a-ulid` is not a job id",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "no reason says {needle:?}: {reasons:#?}"
        );
    }
    // The moved job ran here before the move or was set aside after it: never lost.
    let moved_aside = aside_of(&h, &moved.1).map(|n| h.root.reason(&n));
    assert!(
        ran(&h, &moved.1) == (1, 1)
            || moved_aside
                .as_ref()
                .is_some_and(|r| r.contains("site `s1` is now served by host `h2`")),
        "{moved_aside:?}"
    );
    assert_eq!(
        h.marks().iter().filter(|(w, _)| w == "start").count(),
        1 + usize::from(moved_aside.is_none())
    );
}

#[test]
fn producers_get_clear_errors_for_what_the_site_map_cannot_place() {
    let server = Server::start(&["h1", "h2"]);
    server.init(&["h1"], 2, 5);
    let cases: [(&[&str], &str); 3] = [
        (
            &["trigger", "dedicated", "--site", "nowhere", "--fleet"],
            "site `nowhere` is not in the fleet's site map: add it with `t8k-engine fleet sites set nowhere HOST`",
        ),
        (&["trigger", "main", "--fleet"], "a main job names no site"),
        (
            &["trigger", "dedicated", "--site", "a.b", "--fleet"],
            "contains '.'",
        ),
    ];
    for (args, needle) in cases {
        let out = server.producer(args);
        assert_ne!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out)
        );
    }
    let out = server.operator(&["fleet", "sites", "set", "s1", "h9"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("host `h9` is not in the fleet"),
        "{}",
        text(&out)
    );
    // A producer may not change the site map.
    let out = server.producer(&["fleet", "sites", "set", "s1", "h1"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the NATS server refused this user"),
        "{}",
        text(&out)
    );
    server.site("s1", "h1");
    server.site("s_2", "h1");
    let out = server.producer(&["fleet", "sites", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "s1\th1\ns_2\th1\n",
        "{}",
        text(&out)
    );
    let out = server.operator(&["fleet", "sites", "rm", "s1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = server.producer(&["fleet", "sites", "list", "--json"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"s_2":"h1"}"#,
        "{}",
        text(&out)
    );
}
