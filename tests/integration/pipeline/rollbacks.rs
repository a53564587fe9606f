//! The shipped pipeline's roll backs on the fixture site (see the parent module): a backend or frontend that
//! fails its health check, logs a fatal error, or crashes after passing its checks (the settle window)
//! leaves the previous release serving; a roll back that fails too says so loudly.

use crate::common::site::Site;
use crate::common::{commit, text};

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

/// The shipped settle window (SETTLE_SECS = 5): a backend that answers its checks, then panics 2 s after it
/// listens and is started again by systemd's `Restart=always` (a crash loop) is rolled back like a failed
/// check. The control, the same kind of release declared live with the window off, is
/// `releases::a_rollback_to_a_release_that_crash_loops_fails_and_leaves_the_live_one_serving`.
#[test]
fn a_backend_that_crashes_after_passing_its_checks_is_rolled_back() {
    let Some(site) = Site::new() else {
        return;
    };
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "crash-v2\n")],
        "backend that panics after its checks",
    );
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(1), "{}\n{log}", text(&out));
    let reason = site.root.reason(&site.root.failed()[0]);
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains("rolled back: tractstack-go ")
            && first.contains(" s after its checks passed (")
            && (first.contains("ActiveState active -> ") || first.contains("NRestarts 0 -> 1"))
            && first.contains("the journal of tractstack-go since the restart says: panic: assignment to entry in nil map"),
        "{reason}"
    );
    assert!(log.contains("step `settle` failed"), "{log}");
    // The previous release serves again, and stays up: the roll back waits the window too.
    assert!(
        log.contains("tractstack-go and astro-main stayed up for 5 s"),
        "the restored release (both parts: the first build builds both) is watched: {log}"
    );
    assert!(reason.contains("\nfailed step: settle\n"), "{reason}");
    assert_eq!(site.serving(), (Some("v1".into()), Some("v1".into())));
    // Not NRestarts == 0: systemd resets the count on the roll back's `systemctl restart` only when the
    // restart does not meet the unit waiting to restart itself after the crash (on a loaded CI machine it
    // did, and the count stayed 1). That the restored release stayed up is the settle step's finding above,
    // measured against the unit's state right after its restart; here it still runs the restored file.
    assert_eq!(site.unit_says("ActiveState"), "active");
    let pid: u32 = site.unit_says("MainPID").parse().unwrap();
    let exe = std::fs::read_link(site.sd.inside(&format!("/proc/{pid}/exe"))).unwrap();
    assert_eq!(exe, site.base.join("bin/tractstack-go"));
}

/// A frontend that answers its check, then dies of an uncaught exception 2 s later; pm2 starts it again.
#[test]
fn a_frontend_that_crashes_after_its_first_answer_is_rolled_back() {
    let Some(site) = Site::new() else {
        return;
    };
    commit(
        &site.frontend,
        &[("version.txt", "crash-v2\n")],
        "frontend that crashes after its first answer",
    );
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(1), "{}\n{log}", text(&out));
    let reason = site.root.reason(&site.root.failed()[0]);
    let first = reason.lines().next().unwrap();
    // pm2 names the log after the process and its id.
    let pm2_log = std::fs::read_to_string(site.pm2_home.join("logs/astro-main-error-0.log"))
        .unwrap_or_default();
    assert!(
        first.contains("rolled back: astro-main ")
            && first.contains(" s after its checks passed (")
            && first.contains("pid ")
            // pm2 (6.0) logs an uncaught exception in fork mode as its bare stack, which the log check does
            // not count as fatal: the reason quotes the log's last error instead.
            && first.contains("its log's last error: Error: session store unavailable (crash-v2) (see pm2 logs astro-main)"),
        "{reason}\npm2's error log:\n{pm2_log}"
    );
    assert!(
        pm2_log.contains("Error: session store unavailable (crash-v2)"),
        "{pm2_log}"
    );
    assert_eq!(site.serving(), (Some("v1".into()), Some("v1".into())));
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
