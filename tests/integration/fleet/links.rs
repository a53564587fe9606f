//! The bridge's own directories behind a link (issue 13 for the fleet): `state/.t8k-engine/fleet` (its
//! ledger, lock, last-chance copy and events cursor) and `state/failed` (where it sets jobs aside) are
//! never followed. A bridge refuses to start on either with a reason naming it; a `failed/` turned into a
//! link while it runs holds the job to be set aside until the operator moves the link aside. Nothing is
//! ever written where a link points.

use std::path::Path;
use std::time::Duration;

use super::{aside_of, job};
use crate::common::{text, wait_until};
use crate::fleet_harness::{Host, Server, publish, with_nats};

/// What a directory holds (the target of a link, which must stay empty).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Jobs in the work-queue stream, and how many deliveries of host `h1`'s consumer were redeliveries.
fn stream_state(server: &Server) -> (u64, u64) {
    with_nats(server, "admin", async |_, js| {
        let mut jobs = js.get_stream("T8K_JOBS").await.unwrap();
        let messages = jobs.info().await.unwrap().state.messages;
        let mut consumer = jobs
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("h1")
            .await
            .unwrap();
        (
            messages,
            consumer.info().await.unwrap().num_redelivered as u64,
        )
    })
}

#[test]
fn a_bridge_refuses_to_start_on_an_engine_directory_that_is_a_link() {
    let server = Server::start(&["h1", "h2"]);
    server.init(&["h1", "h2"], 2, 5);
    server.site("s1", "h1");
    let waiting = job("s1", "l");
    publish(&server, std::slice::from_ref(&waiting));
    for dir in ["state/.t8k-engine/fleet", "state/failed"] {
        let mut h = Host::new(&server, "h1", "");
        let target = tempfile::tempdir().unwrap();
        let link = h.root.path.join(dir);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target.path(), &link).unwrap();
        h.start_bridge(&[]);
        wait_until(Duration::from_secs(30), "the bridge to refuse", || {
            !h.bridge_alive()
        });
        let code = h.bridge.take().unwrap().0.wait().unwrap().code();
        let out = h.bridge_out();
        assert_eq!(code, Some(2), "{dir}: {out}");
        let reason = format!(
            "refusing to use {}: it is a symlink to {}, not a directory",
            link.display(),
            target.path().display()
        );
        assert!(out.contains(&reason), "{dir}: {out}");
        assert!(
            out.contains(&format!("mv {0} {0}.suspect", link.display())),
            "{out}"
        );
        assert_eq!(entries(target.path()), Vec::<String>::new(), "{dir}");
        assert!(
            std::fs::symlink_metadata(&link).unwrap().is_symlink(),
            "{dir} is left as it was"
        );
        assert_eq!(
            h.root.inbox(),
            Vec::<String>::new(),
            "{dir}: nothing pulled"
        );
    }
    assert_eq!(stream_state(&server), (1, 0), "the job waits in the stream");
}

#[test]
fn a_failed_dir_turned_link_under_a_running_bridge_holds_the_job_and_gets_nothing() {
    let server = Server::start(&["h1", "h2"]);
    server.init(&["h1", "h2"], 1, 3);
    server.site("s1", "h1");
    let mut h = Host::new(&server, "h1", "");
    h.start_bridge(&[]);
    wait_until(Duration::from_secs(30), "the bridge to start", || {
        h.bridge_out().contains("bridge of host h1 started")
    });
    // Someone who can write the inbox replaces the (empty) failed/ with a link.
    let failed = h.root.path.join("state/failed");
    let target = tempfile::tempdir().unwrap();
    std::fs::remove_dir(&failed).unwrap();
    std::os::unix::fs::symlink(target.path(), &failed).unwrap();
    // A job the bridge must set aside: its body names a site its subject does not.
    let bad = ulid::Ulid::new();
    with_nats(&server, "producer", async |_, js| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", bad.to_string().as_str());
        js.publish_with_headers(
            "t8k.jobs.h1.dedicated.default.s1.build",
            headers,
            "type=dedicated,site=s2,command=build\n".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    });
    let refusal = format!(
        "refusing to use {}: it is a symlink to {}",
        failed.display(),
        target.path().display()
    );
    wait_until(
        Duration::from_secs(30),
        "the set-aside to be refused",
        || {
            let out = h.bridge_out();
            out.contains(&format!("cannot set job {bad} aside; retrying")) && out.contains(&refusal)
        },
    );
    // The operator sees why in the fleet's status, while the job is held (not redelivered, not lost).
    wait_until(Duration::from_secs(30), "`fleet status` to show it", || {
        let out = server.operator(&["fleet", "status"]);
        text(&out).contains(&refusal)
    });
    assert_eq!(entries(target.path()), Vec::<String>::new());
    // The advice in the reason, followed: the link moved aside, a real failed/ is made and used.
    let suspect = h.root.path.join("state/failed.suspect");
    std::fs::rename(&failed, &suspect).unwrap();
    wait_until(Duration::from_secs(60), "the job to be set aside", || {
        aside_of(&h, &bad).is_some()
    });
    let aside = aside_of(&h, &bad).unwrap();
    assert!(
        h.root.reason(&aside).contains("does not match its body"),
        "{}",
        h.root.reason(&aside)
    );
    assert!(!std::fs::symlink_metadata(&failed).unwrap().is_symlink());
    assert_eq!(entries(target.path()), Vec::<String>::new());
    assert_eq!(h.root.failed(), [aside], "set aside once");
    // The next job flows.
    let next = job("s1", "n");
    publish(&server, std::slice::from_ref(&next));
    wait_until(Duration::from_secs(30), "the next job's trigger", || {
        h.root
            .inbox()
            .iter()
            .any(|n| n.contains(&next.1.to_string()))
    });
    wait_until(Duration::from_secs(30), "both jobs acknowledged", || {
        stream_state(&server).0 == 0
    });
    assert_eq!(stream_state(&server).1, 0, "held, never redelivered");
}
