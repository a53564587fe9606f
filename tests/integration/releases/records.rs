//! Release records without a site (a script that switches in what a test hands it): `keep_releases`
//! pruning, `status.json` while a job runs, records of an older engine, and a crash in the middle of a
//! rollback.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use super::{ids, releases_json};
use crate::common::site::ulid_like;
use crate::common::web::{RELEASING, next_release};
use crate::common::{Root, text, wait_until};
use serde_json::Value;

/// A root whose scripts release whatever `next-bin` and `next-dist` hold, and roll back by putting a kept
/// release back with no restart (the shipped scripts' restarts and checks are the fixture site's tests).
fn simple_root(config: &str) -> Root {
    let root = Root::with_config(config);
    for d in ["bin", "src/my-tractstack"] {
        std::fs::create_dir_all(root.path.join(d)).unwrap();
    }
    root.script("main.rhai", RELEASING);
    root
}

fn simple_build(root: &Root, version: &str) {
    next_release(root, version);
    root.trigger(
        &format!("build-{}.csv", ulid_like()),
        "type=main,command=build\n",
    );
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

fn simple_rollback(root: &Root, to: &str) -> Output {
    let dropped = root.run(&["rollback", "main", "--to", to, "--no-wait"]);
    assert_eq!(dropped.status.code(), Some(0), "{}", text(&dropped));
    root.run(&["run"])
}

/// The live backend and what is kept beside it.
fn on_disk(root: &Root) -> (String, Vec<String>) {
    let bin = root.path.join("bin");
    let live = std::fs::read_to_string(bin.join("tractstack-go")).unwrap();
    let mut kept: Vec<String> = std::fs::read_dir(&bin)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "tractstack-go")
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    kept.sort();
    (live, kept)
}

#[test]
fn keep_releases_prunes_old_releases_but_never_the_live_or_the_previous_one() {
    let root = simple_root("keep_releases = 2\n");
    for v in ["v1", "v2", "v3", "v4"] {
        simple_build(&root, v);
    }
    assert_eq!(on_disk(&root), ("v4".into(), vec!["v3".into()]));
    let json = releases_json(root.cmd(&["releases", "main", "--json"]));
    assert_eq!(ids(&json), [(4, "live".into()), (3, "replaced".into())]);

    // A script whose rollback does not put the release back fails, and nothing is recorded.
    std::fs::write(root.path.join("rollback-does-nothing"), "").unwrap();
    let out = simple_rollback(&root, "3");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = root.reason(root.failed().last().unwrap());
    assert!(reason.contains("did not put that release back"), "{reason}");
    std::fs::remove_file(root.path.join("rollback-does-nothing")).unwrap();

    let out = simple_rollback(&root, "3");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(on_disk(&root), ("v3".into(), vec!["v4".into()]));
    // Release 5: kept are the newest two (5 and the rolled-back 4) and the previous one (3, live before 5).
    simple_build(&root, "v5");
    assert_eq!(
        on_disk(&root),
        ("v5".into(), vec!["v3".into(), "v4".into()])
    );
    let json = releases_json(root.cmd(&["releases", "main", "--json"]));
    assert_eq!(
        ids(&json),
        [
            (5, "live".into()),
            (4, "rolled_back".into()),
            (3, "replaced".into())
        ]
    );
    simple_build(&root, "v6");
    assert_eq!(on_disk(&root), ("v6".into(), vec!["v5".into()]));
    let dist =
        std::fs::read_to_string(root.path.join("src/my-tractstack/dist/index.html")).unwrap();
    assert_eq!(dist, "v6");
    let kept_dists = std::fs::read_dir(root.path.join("src/my-tractstack"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("dist.prev"))
        .count();
    assert_eq!(kept_dists, 1);
    // Asking for what is live already does nothing.
    let out = root.run(&["rollback", "main", "--to", "6"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("live already"));
    let out = root.run(&["rollback", "main", "--to", "3"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("release 3 of main is not kept (kept: 6, 5)"),
        "{}",
        text(&out)
    );
    let out = root.run(&["rollback", "main", "--to", "x1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(root.inbox().is_empty(), "no trigger for a refused rollback");
}

/// A target's entry in the status document.
pub(super) fn target_doc(doc: &Value, target: &str) -> Value {
    doc["targets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["target"] == target).cloned())
        .unwrap_or(Value::Null)
}

fn status_doc(root: &Root) -> Value {
    std::fs::read_to_string(root.path.join("log/status.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

#[test]
fn status_json_follows_the_engine_the_running_step_and_the_queue() {
    let root = Root::new();
    let go = root.path.join("go");
    root.script(
        "main.rhai",
        &format!(
            r#"fn build(job) {{
    step("prepare", || run("true", []));
    parallel(#{{
        a: || step("wait a", || run("sh", ["-c", "while [ ! -f {0} ]; do sleep 0.05; done"])),
        b: || step("short b", || run("true", [])),
    }});
    record_release(job, #{{ backend: "b1", frontend: "f1" }});
}}
fn broken(job) {{ step("compile", || run("false", [])); }}
"#,
            go.display()
        ),
    );
    let daemon = root.daemon(&[]);
    let pid = daemon.id() as u64;
    wait_until(
        Duration::from_secs(20),
        "status.json of an idle engine",
        || {
            let s = status_doc(&root);
            s["engine"]["state"] == "idle" && s["engine"]["pid"] == pid
        },
    );
    let s = status_doc(&root);
    assert_eq!(s["version"], 1);
    assert!(s["engine"]["since"].is_string() && s["running"].is_null());
    assert!(target_doc(&s, "main")["live"].is_null(), "{s}");

    root.trigger("build-1.csv", "type=main,command=build\n");
    wait_until(
        Duration::from_secs(20),
        "the step `wait a` in status.json",
        || {
            let s = status_doc(&root);
            s["running"]["step"]["name"] == "wait a"
        },
    );
    let s = status_doc(&root);
    let running = &s["running"];
    assert_eq!(s["engine"]["state"], "running", "{s}");
    assert_eq!(
        (&running["trigger"], &running["line"]),
        (&Value::from("build-1.csv"), &Value::from(1))
    );
    assert_eq!(
        (running["target"].as_str(), running["command"].as_str()),
        (Some("main"), Some("build"))
    );
    assert_eq!(running["step"]["branch"], "a");
    assert!(running["job_id"].is_string() && running["started_at"].is_string());
    assert!(running["elapsed_s"].is_u64() && running["step"]["elapsed_s"].is_u64());
    // Every step so far: the ended ones with their figures, the open ones with `ok: null`.
    let steps: Vec<(String, Value)> = running["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| (st["name"].as_str().unwrap().to_string(), st["ok"].clone()))
        .collect();
    assert!(
        steps.contains(&("prepare".into(), Value::Bool(true))),
        "{steps:?}"
    );
    assert!(steps.contains(&("wait a".into(), Value::Null)), "{steps:?}");
    assert_eq!(target_doc(&s, "main")["last_job"]["result"], "running");
    assert_eq!(
        s["queue"],
        serde_json::json!([]),
        "the running trigger is not queued"
    );

    // Triggers that arrive while a job runs are in the queue at once.
    root.trigger("build-2.csv", "type=main,command=broken\n");
    root.trigger("build-3.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(10), "the queue in status.json", || {
        status_doc(&root)["queue"]
            .as_array()
            .is_some_and(|q| q.len() == 2)
    });
    let s = status_doc(&root);
    assert_eq!(s["queue"][0]["name"], "build-2.csv");
    assert_eq!(
        s["queue"][0]["jobs"][0],
        "type=main,tenant=default,command=broken"
    );
    assert_eq!(
        s["running"]["step"]["name"], "wait a",
        "still in the same step"
    );
    assert_eq!(s["queue_total"], 2);

    std::fs::write(&go, "").unwrap();
    wait_until(Duration::from_secs(20), "every trigger to run", || {
        let s = status_doc(&root);
        s["engine"]["state"] == "idle"
            && s["queue"].as_array().is_some_and(|q| q.is_empty())
            && target_doc(&s, "main")["live"]["id"] == 2
    });
    let s = status_doc(&root);
    assert!(s["running"].is_null());
    let main = target_doc(&s, "main");
    assert_eq!(main["live"]["backend"], "b1");
    assert_eq!(
        main["last_job"]["result"], "succeeded",
        "build-3 ran last: {s}"
    );
    assert_eq!(main["last_failure"]["result"], "failed");
    assert!(
        main["last_failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("step `compile` failed"),
        "{s}"
    );
    // SIGTERM: the engine says it stopped.
    assert_eq!(crate::common::stop(daemon, libc::SIGTERM), Some(0));
    let s = status_doc(&root);
    assert_eq!(
        (s["engine"]["state"].as_str(), &s["engine"]["pid"]),
        (Some("stopped"), &Value::Null)
    );
    assert!(s["generated_at"].is_string());
}

#[test]
fn an_older_engines_release_records_still_read_and_its_live_release_can_be_rolled_back_to() {
    let root = simple_root("");
    let releases = root.path.join("state/.t8k-engine/releases");
    std::fs::create_dir_all(&releases).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/releases-0.1.0");
    for f in std::fs::read_dir(&fixtures).unwrap().flatten() {
        std::fs::copy(f.path(), releases.join(f.file_name())).unwrap();
    }
    // What the older engine's last release left live.
    std::fs::write(root.path.join("bin/tractstack-go"), "v0").unwrap();
    std::fs::create_dir_all(root.path.join("src/my-tractstack/dist")).unwrap();

    let json = releases_json(root.cmd(&["releases", "--json"]));
    assert_eq!(json["recorded_by_older_engine"], true);
    assert_eq!(
        ids(&json),
        [
            (3, "live".into()),
            (2, "replaced".into()),
            (1, "replaced".into())
        ]
    );
    assert_eq!(json["releases"][1]["target"], "multi/blue");
    let table = String::from_utf8_lossy(&root.run(&["releases"]).stdout).into_owned();
    assert!(
        table.contains("recorded by an older t8k-engine") && table.contains("files not tracked"),
        "{table}"
    );
    let status = String::from_utf8_lossy(&root.run(&["status"]).stdout).into_owned();
    assert!(
        status.contains("main: live backend 4f1c2a9d8e frontend 9a8b7c6d5e"),
        "{status}"
    );
    let out = root.run(&["eval", "--job", "type=main", "last_release(job).backend"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4f1c2a9d8e7b6c5a4f3e2d1c0b9a8f7e6d5c4b3a"),
        "{}",
        text(&out)
    );
    let out = root.run(&["rollback", "main"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("older t8k-engine"),
        "{}",
        text(&out)
    );

    // The next release learns which files the older engine's live release had: it can be put back.
    simple_build(&root, "v1");
    let out = simple_rollback(&root, "3");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(on_disk(&root).0, "v0");
    let json = releases_json(root.cmd(&["releases", "--json"]));
    assert_eq!(
        ids(&json),
        [
            (4, "rolled_back".into()),
            (3, "live".into()),
            (2, "replaced".into())
        ]
    );
}

#[cfg(feature = "failpoints")]
#[test]
fn a_crash_in_the_middle_of_a_rollback_leaves_a_whole_release_live_and_the_restart_finishes_it() {
    use std::os::unix::process::ExitStatusExt;
    for point in ["put_back.marked", "put_back.exchanged"] {
        let root = simple_root("");
        simple_build(&root, "v1");
        simple_build(&root, "v2");
        let dropped = root.run(&["rollback", "main", "--no-wait"]);
        assert_eq!(dropped.status.code(), Some(0), "{}", text(&dropped));
        let out = root
            .cmd(&["run"])
            .env("FAILPOINTS", format!("{point}=return(kill)"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{point}: {}",
            text(&out)
        );
        let live = on_disk(&root).0;
        assert!(live == "v1" || live == "v2", "{point}: {live}");
        let out = root.run(&["run"]);
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{point}: {log}");
        if point == "put_back.exchanged" {
            assert!(
                log.contains("the engine died before the release it put back was verified"),
                "{point}: {log}"
            );
        }
        assert_eq!(on_disk(&root), ("v1".into(), vec!["v2".into()]), "{point}");
        let json = releases_json(root.cmd(&["releases", "--json"]));
        assert_eq!(
            ids(&json),
            [(2, "rolled_back".into()), (1, "live".into())],
            "{point}"
        );
    }
}
