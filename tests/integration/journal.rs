//! The journal at its largest (three rotated files and the current one, 8 MiB each, as on any server
//! that has run for a while): a follower keeps its place across a rotation that drops the oldest file, and
//! the metrics count what was there when the engine started plus every job after it, without re-reading,
//! and `serve`, which keeps what it read, shows what the journal holds after the rotation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{Root, text, wait_until};

/// The journal's rotation size (src/history/journal.rs).
const FILE_BYTES: usize = 8 << 20;

/// Fills the journal's three rotated files and its current one to the rotation size with superseded
/// records (the smallest kind), each marked with its file, so that the next record rotates and drops
/// `journal.3.jsonl`. Returns the number of records written.
fn fill_journal(root: &Root) -> usize {
    let dir = root.path.join("state/.t8k-engine/history");
    let current = dir.join("journal.jsonl");
    assert!(current.exists(), "the engine made its journal first");
    let mode = std::fs::metadata(&current).unwrap().permissions();
    let mut written = 0;
    let files = [
        (3, "journal.3.jsonl"),
        (2, "journal.2.jsonl"),
        (1, "journal.1.jsonl"),
        (0, "journal.jsonl"),
    ];
    for (n, name) in files {
        let mut text = String::with_capacity(FILE_BYTES + 200);
        while text.len() < FILE_BYTES {
            text.push_str(&format!(
                "{{\"at\":\"2026-01-01T00:00:00Z\",\"by\":\"pad-{n}-next.csv\",\"event\":\"superseded\",\"trigger\":\"pad-{n}-{written:08}.csv\"}}\n"
            ));
            written += 1;
        }
        let path: PathBuf = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, mode.clone()).unwrap();
    }
    written
}

/// A root whose main script runs one step, with its journal filled (see [`fill_journal`]).
fn full_journal() -> (Root, usize) {
    let root = Root::new();
    root.script(
        "main.rhai",
        "fn build(job) { step(\"compile\", || run(\"mark\", [\"built\"])); }\n",
    );
    root.trigger("build-0.csv", "type=main,tenant=default,command=build\n");
    assert_eq!(root.run(&["run"]).status.code(), Some(0));
    let padded = fill_journal(&root);
    (root, padded)
}

fn journal_holds(dir: &Path, needle: &str) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        std::fs::read_to_string(e.path())
            .unwrap_or_default()
            .contains(needle)
    })
}

#[test]
fn trigger_wait_follows_its_job_across_a_rotation_that_drops_the_oldest_file() {
    let (root, padded) = full_journal();

    let _daemon = root.daemon(&[]);
    root.wait_watching();
    // The job's first record rotates the full journal and drops journal.3.jsonl: a follower that counted
    // records (as it did) found fewer than it had seen and missed its job's end.
    let out = root.run(&["trigger", "main", "--wait", "--timeout", "60s"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout.contains("main build") && stdout.contains(" succeeded in "),
        "{stdout}"
    );
    let history = root.path.join("state/.t8k-engine/history");
    assert!(
        !journal_holds(&history, "pad-3-") && journal_holds(&history, "pad-2-"),
        "the job's records rotated the journal, dropping its oldest file"
    );

    // The metrics: every record of the journal at the daemon's start, and the job after it, counted once
    // (a counter never goes down while the engine runs, though the rotation took records away).
    let metrics = root.path.join("log/t8k-engine.prom");
    let superseded = || {
        let m = std::fs::read_to_string(&metrics).unwrap_or_default();
        let n = m
            .lines()
            .find_map(|l| l.strip_prefix("t8k_superseded_total "))
            .and_then(|n| n.parse::<usize>().ok());
        (n, m)
    };
    // The first job's file (from `run`) counted none; the daemon's counts the padding.
    wait_until(Duration::from_secs(20), "the daemon's metrics", || {
        superseded().0.is_some_and(|n| n > 0)
    });
    let (n, m) = superseded();
    assert_eq!(
        n,
        Some(padded),
        "every superseded record found at the start:\n{m}"
    );
    assert!(
        m.contains("t8k_jobs_total{type=\"main\",result=\"succeeded\"} 1\n"),
        "{m}"
    );
}

/// `serve` keeps the history it has read and reads on from cursors; when a rotation drops the oldest file
/// it reads the journal again, so that it shows what the journal holds: a job recorded only in the dropped
/// file leaves its history and status, and the job whose records rotated the journal arrives.
#[cfg(feature = "web")]
#[test]
fn serve_shows_what_the_journal_holds_across_a_rotation_that_drops_the_oldest_file() {
    use crate::common::web::{get, json, serve};
    let (root, _) = full_journal();
    // A failed job of a site of its own, only in the oldest file.
    let history = root.path.join("state/.t8k-engine/history");
    let mut oldest = std::fs::OpenOptions::new()
        .append(true)
        .open(history.join("journal.3.jsonl"))
        .unwrap();
    std::io::Write::write_all(
        &mut oldest,
        concat!(
            r#"{"at":"2026-01-01T00:00:01Z","attempt":1,"command":"build","event":"job_started","job_id":"01JGZ00000000000000000GONE","line":1,"target":"dedicated/gone","trigger":"build-gone.csv"}"#,
            "\n",
            r#"{"at":"2026-01-01T00:00:02Z","duration_ms":1000,"event":"job_finished","failed_step":"compile","job_id":"01JGZ00000000000000000GONE","reason":"it broke","result":"failed","steps":[]}"#,
            "\n"
        )
        .as_bytes(),
    )
    .unwrap();
    drop(oldest);

    let web = serve(&root, "127.0.0.1:0");
    let target = |doc: &serde_json::Value, name: &str| {
        doc["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == name)
            .cloned()
    };
    let status = || json(&get(&format!("{}/api/status", web.base)).1);
    let gone_jobs = || {
        let url = format!("{}/api/history?target=dedicated/gone", web.base);
        json(&get(&url).1)["jobs"].as_array().unwrap().len()
    };
    let gone = target(&status(), "dedicated/gone").expect("the old site's job is in the status");
    assert_eq!(
        gone["last_failure"]["job_id"], "01JGZ00000000000000000GONE",
        "{gone}"
    );
    assert_eq!(gone_jobs(), 1);

    let _daemon = root.daemon(&[]);
    root.wait_watching();
    let out = root.run(&["trigger", "main", "--wait", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !journal_holds(&history, "pad-3-") && !journal_holds(&history, "GONE"),
        "the job's records rotated the journal, dropping its oldest file"
    );
    wait_until(Duration::from_secs(30), "serve to show the new job", || {
        let doc = status();
        target(&doc, "main").is_some_and(|t| t["last_job"]["result"] == "succeeded")
            && doc["engine"]["state"] == "idle"
    });
    let doc = status();
    assert!(target(&doc, "dedicated/gone").is_none(), "{doc}");
    assert_eq!(gone_jobs(), 0);
    let main_jobs = json(&get(&format!("{}/api/history?target=main", web.base)).1);
    let jobs = main_jobs["jobs"].as_array().unwrap();
    assert_eq!(
        jobs.len(),
        1,
        "the first job's records were written over: {main_jobs}"
    );
    assert_eq!(jobs[0]["steps"][0]["name"], "compile", "{main_jobs}");
}
