//! Releases people can see and steer, through the real binary: `releases` and `rollback` on the faithful
//! fixture site (real go, pnpm and pm2 builds, real health checks), the commits a rollback marks bad,
//! `keep_releases` pruning, `status.json` while a job runs, records of an older engine, and a crash in the
//! middle of a rollback.

mod records;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::site::{Setup, Site};
use crate::common::{commit, text, wait_until};
use records::target_doc;
use serde_json::Value;

fn releases_json(cmd: Command) -> Value {
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    all[0].clone()
}

fn run(mut cmd: Command) -> Output {
    cmd.output().unwrap()
}

fn ids(install: &Value) -> Vec<(u64, String)> {
    install["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Runs `t8k-engine rollback ARGS` as an operator would (it drops the trigger and follows it) while a
/// `run` picks the trigger up; returns the rollback command's output and the build log it caused.
fn roll_back(site: &Site, args: &[&str]) -> (Output, String) {
    let before = site.root.log().len();
    let mut all = vec!["rollback"];
    all.extend(args);
    let follower = site
        .engine(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(20), "the rollback trigger", || {
        !site.root.inbox().is_empty()
    });
    let pass = site.engine(&["run"]).output().unwrap();
    let out = follower.wait_with_output().unwrap();
    let log = site.root.log()[before..].to_string();
    assert!(matches!(pass.status.code(), Some(0 | 1)), "{}", text(&pass));
    (out, log)
}

#[test]
fn rollback_puts_back_the_previous_and_an_older_release_and_a_rolled_back_commit_is_not_rebuilt() {
    let Some(site) = Site::new() else {
        return;
    };
    // Release 1 rebuilds what the installer built (there was no record); 2 and 3 are new commits.
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    let v2 = (
        commit(
            &site.backend,
            &[("cmd/tractstack-go/version.txt", "v2\n")],
            "backend v2",
        ),
        commit(&site.frontend, &[("version.txt", "v2\n")], "frontend v2"),
    );
    assert_eq!(site.build("").0.status.code(), Some(0));
    let v3 = (
        commit(
            &site.backend,
            &[("cmd/tractstack-go/version.txt", "v3\n")],
            "backend v3",
        ),
        commit(&site.frontend, &[("version.txt", "v3\n")], "frontend v3"),
    );
    assert_eq!(site.build("").0.status.code(), Some(0));
    assert_eq!(site.serving(), (Some("v3".into()), Some("v3".into())));

    // `releases`: newest first, the live one marked, with commits, digests, steps and files.
    let out = run(site.engine(&["releases", "main"]));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0]
            .starts_with("main (main and multi/* targets): 3 release(s) kept, keep_releases = 3"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("* 3    live ")
            && lines[1].contains(&format!("backend {}", &v3.0[..10])),
        "{table}"
    );
    let pos = |s: &str| {
        table
            .find(s)
            .unwrap_or_else(|| panic!("no {s:?} in {table}"))
    };
    assert!(
        pos("\n  2    replaced ") < pos("\n  1    replaced "),
        "{table}"
    );
    assert!(
        table.contains("files kept")
            && table.contains("steps: check room ")
            && table.contains("; pull backend "),
        "{table}"
    );
    let json = releases_json(site.engine(&["releases", "main", "--json"]));
    assert_eq!(
        ids(&json),
        [
            (3, "live".into()),
            (2, "replaced".into()),
            (1, "replaced".into())
        ]
    );
    let live = &json["releases"][0];
    assert_eq!(live["live"], true);
    assert_eq!(live["files_kept"], true);
    assert_eq!(live["backend"].as_str(), Some(v3.0.as_str()));
    for key in [
        "lockfile",
        "package_json",
        "local_changes",
        "env",
        "job_id",
        "released_at",
    ] {
        assert!(live[key].is_string(), "{key}: {live}");
    }
    assert!(!live["steps"].as_array().unwrap().is_empty());
    assert_eq!(
        json["releases"][1]["ended"]["reason"],
        "replaced by release 3"
    );
    let usage = run(site.engine(&["releases", "nowhere"]));
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage));

    // Back to the previous release, with the same restart and checks as a build.
    let (out, log) = roll_back(&site, &["main"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("rolling main back from release 3 to release 2"),
        "{said}"
    );
    assert!(
        log.contains("step `restart backend` done") && log.contains("step `check frontend` done"),
        "{log}"
    );
    assert_eq!(site.serving(), (Some("v2".into()), Some("v2".into())));
    let json = releases_json(site.engine(&["releases", "main", "--json"]));
    assert_eq!(
        ids(&json),
        [
            (3, "rolled_back".into()),
            (2, "live".into()),
            (1, "replaced".into())
        ]
    );
    let history: Value =
        serde_json::from_slice(&run(site.engine(&["history", "-n", "1", "--json"])).stdout)
            .unwrap();
    assert_eq!(
        (
            history["jobs"][0]["command"].as_str(),
            history["jobs"][0]["result"].as_str()
        ),
        (Some("rollback"), Some("succeeded"))
    );
    println!(
        "figure: a rollback on the fixture site (switch, restarts, health and log checks) took {} ms; the build before it {} ms",
        history["jobs"][0]["duration_ms"], json["releases"][0]["duration_ms"]
    );

    // The rolled-back commits are not built again: the trigger finishes at once.
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(1), "{log}");
    let reason = site.root.reason(site.root.failed().last().unwrap());
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains(&format!(
            "commit {} (backend), {} (frontend) was rolled back at ",
            &v3.0[..10],
            &v3.1[..10]
        )) && first.contains("push a fix, or trigger with force=true"),
        "{reason}"
    );
    assert!(!log.contains("step `build backend` started"), "{log}");
    assert_eq!(site.serving(), (Some("v2".into()), Some("v2".into())));

    // Further back, by number.
    let (out, log) = roll_back(&site, &["main", "--to", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    assert_eq!(site.serving(), (Some("v1".into()), Some("v1".into())));
    let json = releases_json(site.engine(&["releases", "--json"]));
    assert_eq!(json["live"], 1);
    assert_eq!(json["releases"][1]["state"], "rolled_back", "release 2 too");
    assert_eq!(
        json["rolled_back"][0]["facts"]["backend"].as_str(),
        Some(v2.0.as_str())
    );

    // force=true builds the rolled-back commits all the same.
    let (out, log) = site.build(",force=true");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("building it anyway (force=true)"), "{log}");
    assert_eq!(site.serving(), (Some("v3".into()), Some("v3".into())));
    let json = releases_json(site.engine(&["releases", "main", "--json"]));
    assert_eq!(json["live"], 4);
    assert_eq!(
        json["previous"], 1,
        "the newest release that was replaced while it worked"
    );
}

#[test]
fn a_rollback_whose_release_fails_its_checks_leaves_the_live_one_serving() {
    let Some(site) = Site::with(Setup::default()) else {
        return;
    };
    assert_eq!(site.build("").0.status.code(), Some(0));
    // Release 2 migrates the data: the binary of release 1 no longer starts healthy against it.
    commit(
        &site.backend,
        &[
            ("cmd/tractstack-go/version.txt", "v2\n"),
            ("cmd/tractstack-go/schema.txt", "2\n"),
        ],
        "backend v2 with a migration",
    );
    assert_eq!(site.build("").0.status.code(), Some(0));
    assert_eq!(site.serving(), (Some("v2".into()), Some("v1".into())));

    let (out, log) = roll_back(&site, &["main"]);
    assert_eq!(out.status.code(), Some(1), "{}\n{log}", text(&out));
    let reason = site.root.reason(site.root.failed().last().unwrap());
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains("release 1 failed its checks")
            && first.contains("status 503")
            && first.contains("release 2, which was live, is back and serving"),
        "{reason}"
    );
    assert_eq!(site.serving(), (Some("v2".into()), Some("v1".into())));
    let json = releases_json(site.engine(&["releases", "main", "--json"]));
    assert_eq!(ids(&json), [(2, "live".into()), (1, "replaced".into())]);
    let status: Value = serde_json::from_str(
        &std::fs::read_to_string(site.root.path.join("log/status.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(status["engine"]["state"], "stopped");
    let main = target_doc(&status, "main");
    assert_eq!(main["live"]["id"], 2, "{status}");
    assert_eq!(main["last_failure"]["result"], "failed");
    assert_eq!(main["last_job"], main["last_failure"]);
}

/// The settle window (SETTLE_SECS in lib/common.rhai) with its control: with the window off (an operator's
/// copy with SETTLE_SECS = 0), a backend that passes its checks and panics 2 s later is declared live while
/// systemd restarts it in a loop; with the shipped window, rolling back to that release fails like a
/// failed check and puts the live release back.
#[test]
fn a_rollback_to_a_release_that_crash_loops_fails_and_leaves_the_live_one_serving() {
    let Some(site) = Site::with(Setup::default()) else {
        return;
    };
    assert_eq!(site.build("").0.status.code(), Some(0));
    site.edit_common(
        "export const SETTLE_SECS = 5;",
        "export const SETTLE_SECS = 0;",
    );
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "crash-v2\n")],
        "backend that panics after its checks",
    );
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    assert!(!log.contains("step `settle`"), "{log}");
    wait_until(
        Duration::from_secs(30),
        "systemd to restart the crashing backend the engine declared live",
        || site.unit_says("NRestarts").parse::<u32>().unwrap_or(0) >= 1,
    );
    assert!(
        site.journal()
            .contains("panic: assignment to entry in nil map")
    );

    // The shipped script again, and a release that stays up: it waits the window and goes live.
    std::fs::remove_file(site.root.path.join("scripts/lib/common.rhai")).unwrap();
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "v3\n")],
        "backend v3",
    );
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    assert!(log.contains("tractstack-go stayed up for 5 s"), "{log}");
    let settle = site.record()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "settle")
        .cloned()
        .expect("a settle step in the release record");
    assert!(settle["wall_ms"].as_u64().unwrap() >= 5000, "{settle}");
    assert_eq!(site.serving(), (Some("v3".into()), Some("v1".into())));

    let (out, log) = roll_back(&site, &["main", "--to", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}\n{log}", text(&out));
    let reason = site.root.reason(site.root.failed().last().unwrap());
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains("release 2 failed its checks; release 3, which was live, is back and serving: tractstack-go ")
            && first.contains("after its checks passed (")
            && first.contains("panic: assignment to entry in nil map"),
        "{reason}"
    );
    assert_eq!(site.serving(), (Some("v3".into()), Some("v1".into())));
    let json = releases_json(site.engine(&["releases", "main", "--json"]));
    assert_eq!(ids(&json)[0], (3, "live".into()));
}
