//! Releases that must not go live: what fails, what is rolled back, and what the failure says.

use std::time::Duration;

use super::site::Site;
use crate::common::{commit, text, wait_until};

#[test]
fn a_compile_error_changes_nothing_live() {
    let Some(site) = Site::new() else {
        return;
    };
    commit(
        &site.backend,
        &[(
            "cmd/tractstack-go/broken.go",
            "package main\n\nfunc init() { undefinedThing() }\n",
        )],
        "broken",
    );
    commit(&site.frontend, &[("version.txt", "v2\n")], "frontend v2");
    let live = std::fs::read(site.root.path.join("bin/tractstack-go")).unwrap();
    let invocation = site.unit_says("InvocationID");
    let out = site.trigger("type=main,command=build");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failed = site.root.failed();
    let reason = site.root.reason(&failed[0]);
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains("step `build backend` failed")
            && first.contains("undefined: undefinedThing"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read(site.root.path.join("bin/tractstack-go")).unwrap(),
        live
    );
    assert_eq!(
        site.serving(),
        (Some("v1".into()), Some("v1".into())),
        "nothing was switched or restarted"
    );
    assert_eq!(
        site.unit_says("InvocationID"),
        invocation,
        "systemd did not restart the backend"
    );
}

#[test]
fn a_backend_that_fails_its_health_check_or_logs_a_fatal_error_is_rolled_back() {
    let Some(site) = Site::new() else {
        return;
    };
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "broken-v2\n")],
        "unhealthy backend",
    );
    let out = site.trigger("type=main,command=build");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = site.root.reason(&site.root.failed()[0]);
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains("rolled back:")
            && first.contains("/api/v1/health")
            && first.contains("status 503"),
        "{reason}"
    );
    assert_eq!(
        site.serving(),
        (Some("v1".into()), Some("v1".into())),
        "the old release serves again"
    );
    assert!(
        site.root.path.join("bin/tractstack-go.failed").is_file(),
        "the failed build is kept for inspection"
    );

    // Healthy, but its journal says it is dying.
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "fatal-v3\n")],
        "backend that logs a fatal error",
    );
    let (out, _) = site.build("");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = site.root.reason(&site.root.failed()[1]);
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains("rolled back: the journal of tractstack-go since the restart says:")
            && first.contains("level=FATAL msg=\"database connection lost\""),
        "{reason}"
    );
    assert_eq!(site.serving(), (Some("v1".into()), Some("v1".into())));
}

#[test]
fn the_default_build_tags_are_the_concierges_and_stay_configurable() {
    let Some(site) = Site::new() else {
        return;
    };
    // An operator who drops the flags gets a backend without full-text search, which reports itself
    // unhealthy: the release is rolled back.
    site.edit_common(
        "export const GO_BUILD_FLAGS = [\"-tags\", \"sqlite_fts5\"];",
        "export const GO_BUILD_FLAGS = [];",
    );
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "v2\n")],
        "backend v2",
    );
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("$ go build -o"), "{log}");
    let reason = site.root.reason(&site.root.failed()[0]);
    assert!(
        reason.lines().next().unwrap().contains("status 503"),
        "{reason}"
    );
    assert_eq!(site.serving().0, Some("v1".into()));
}

#[test]
fn a_frontend_that_fails_its_health_check_is_rolled_back() {
    let Some(site) = Site::new() else {
        return;
    };
    commit(
        &site.frontend,
        &[("version.txt", "broken-v2\n")],
        "unhealthy frontend",
    );
    let out = site.trigger("type=main,command=build");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = site.root.reason(&site.root.failed()[0]);
    assert!(
        reason.lines().next().unwrap().contains("rolled back:"),
        "{reason}"
    );
    assert_eq!(site.serving(), (Some("v1".into()), Some("v1".into())));
}

#[test]
fn a_frontend_that_logs_a_fatal_error_is_rolled_back() {
    let Some(site) = Site::new() else {
        return;
    };
    commit(
        &site.frontend,
        &[("version.txt", "fatal-v2\n")],
        "serves but logs a fatal error",
    );
    let out = site.trigger("type=main,command=build");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = site.root.reason(&site.root.failed()[0]);
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains("rolled back: pm2's error log of astro-main since the restart says: {\"level\":\"fatal\"")
            && first.contains("cannot reach the database"),
        "{reason}"
    );
    assert_eq!(site.serving(), (Some("v1".into()), Some("v1".into())));
}

/// A real failure of the unit, not a stand-in's: another process holds the backend's port, so every
/// release systemd starts, the old one too, exits 1 (`bind: address already in use`) and is started again
/// by `Restart=always` until its start limit.
#[test]
fn a_rollback_that_fails_too_says_so_loudly() {
    let Some(site) = Site::new() else {
        return;
    };
    site.sd.ok(&["stop", &site.unit]);
    // Bound and listening but never answering, as a hung stray process would.
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", site.go_port)).unwrap();
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "v2\n")],
        "backend v2",
    );
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = site.root.reason(&site.root.failed()[0]);
    let first = reason.lines().next().unwrap();
    assert!(first.contains("ROLLBACK FAILED after"), "{reason}");
    assert!(
        first.contains("check tractstack-go and astro-main now"),
        "{reason}"
    );
    assert_eq!(
        log.matches("step `restart backend` started").count(),
        2,
        "the new release, then the rolled-back one: {log}"
    );
    assert!(
        site.journal().contains(&format!(
            "Application startup failed: listen tcp 127.0.0.1:{}: bind: address already in use",
            site.go_port
        )),
        "{}",
        site.journal()
    );
}

#[test]
fn a_kill_during_the_build_leaves_the_live_release_untouched() {
    let Some(site) = Site::new() else {
        return;
    };
    commit(
        &site.frontend,
        &[("version.txt", "slow-v2\n")],
        "slow build",
    );
    site.root
        .trigger("build-1.csv", "type=main,command=build\n");
    let mut engine = site.engine(&["run"]).spawn().unwrap();
    wait_until(
        Duration::from_secs(60),
        "the frontend build to start",
        || site.root.log().contains("step `build frontend` started"),
    );
    engine.kill().unwrap();
    engine.wait().unwrap();
    assert_eq!(site.serving(), (Some("v1".into()), Some("v1".into())));
    assert!(site.frontend_src().join("dist/server/entry.mjs").is_file());
    assert!(
        !site.frontend_src().join("dist.prev").exists(),
        "nothing was switched"
    );
    // The next run stops the orphaned build before it builds again; make that one quick.
    commit(&site.frontend, &[("version.txt", "v3\n")], "fast again");
    let out = site.engine(&["run"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        site.root.log()
    );
    assert_eq!(site.serving().1, Some("v3".into()));
}
