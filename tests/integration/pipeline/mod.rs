//! The shipped release pipeline end to end on the faithful fixture site (tests/common/site): real git
//! remotes, real `go build` of a backend that keeps tractstack-go's contracts (tenant middleware, `/health`,
//! warm-up, `sqlite_fts5`, data under GO_BACKEND_PATH), real `pnpm` against a local npm registry that
//! publishes astro-tractstack, a real Astro frontend served by real pm2 in fork mode (as the installer
//! sets it up) or cluster mode.
//!
//! The backend runs under a real systemd: each site boots a user manager of its own in a private PID and
//! mount namespace (tests/common/systemd/), its backend is the installer's `tractstack-go.service` or an
//! instance of `tractstack-go@.service` (tests/common/site/unit.rs), and the engine restarts it with its
//! real `restart_systemd`: plain `systemctl restart UNIT`, which reaches that manager through the harness's
//! wrapper (`Systemd::replace_fake_systemctl`). Failures are real too: a build that fails its health
//! check, a binary that exits 1. The one stand-in is for journald, which does not run in the namespace:
//! the units write their output to a file and tests/fixtures/journalctl reads it for the scripts' log
//! check.

mod rollbacks;

use std::time::Duration;

use crate::common::site::{Setup, Site, get_with, sha256};
use crate::common::{commit, text, wait_until};

/// The release record says both parts were built, from which `.env`, and that the builds overlapped.
fn recorded_as_a_parallel_build(site: &Site) {
    let record = site.record();
    assert_eq!(
        record["built"],
        serde_json::json!({"backend": true, "frontend": true})
    );
    assert_eq!(
        record["env"].as_str(),
        Some(sha256(&site.frontend_src().join(".env")).as_str())
    );
    let steps = record["steps"].as_array().unwrap();
    let span = |name: &str| {
        let s = steps
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no step {name} in {steps:?}"));
        let start = s["start_ms"].as_u64().unwrap();
        (start, start + s["wall_ms"].as_u64().unwrap())
    };
    let (b0, b1) = span("build backend");
    let (f0, _) = span("install frontend");
    let (_, f2) = span("build frontend");
    assert!(
        b0 < f2 && f0 < b1,
        "the builds overlap: backend {b0}..{b1}, frontend {f0}..{f2}"
    );
}

#[test]
fn new_commits_of_both_are_built_in_parallel_switched_and_served() {
    let Some(site) = Site::new() else {
        return;
    };
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "v2\n")],
        "backend v2",
    );
    commit(&site.frontend, &[("version.txt", "v2\n")], "frontend v2");
    let before = site.unit_says("InvocationID");
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    assert_eq!(site.serving(), (Some("v2".into()), Some("v2".into())));
    site.restarted_by_systemd(&before, &log);
    // Built as t8k-concierge.sh builds: with full-text search.
    assert!(log.contains("$ go build -tags sqlite_fts5 -o"), "{log}");
    // Liveness first, then the tenant's readiness with its header.
    let live = log
        .find(&format!(
            "http_check http://127.0.0.1:{}/health: status 200",
            site.go_port
        ))
        .expect("liveness checked");
    let ready = log
        .find(&format!(
            "http_check http://127.0.0.1:{}/api/v1/health: status 200",
            site.go_port
        ))
        .expect("readiness checked");
    assert!(live < ready, "{log}");
    // The backend's monitors log alerts with severity=fatal at every start: not a failed release.
    assert!(
        !log.contains("no journal to read"),
        "the journal is read: {log}"
    );
    let journal = site.journal();
    assert!(journal.contains("severity=fatal"), "{journal}");
    // In fork mode, as the installer runs it, the log says what a reload costs.
    assert!(
        log.contains("pm2 runs astro-main in fork mode")
            && log.contains("frontend is down until Node listens again"),
        "{log}"
    );

    // One scan, written into each tenant the backend knows and nowhere else; the backend reads it.
    assert_eq!(log.matches("step `whitelist` started").count(), 1, "{log}");
    for tenant in ["default", "blue"] {
        let classes = site.served_whitelist(tenant);
        assert!(
            classes.contains(&"font-bold".to_string())
                && classes.contains(&"bg-red-500".to_string()),
            "{tenant}: {classes:?}"
        );
    }
    assert!(
        !site.data.join("config/t8k/tailwindWhitelist.json").exists(),
        "config/t8k is the tenant registry, not a tenant"
    );
    assert!(
        site.root.path.join("bin/tractstack-go.prev").is_file(),
        "the previous binary is kept"
    );
    assert!(
        site.frontend_src()
            .join("dist.prev/server/entry.mjs")
            .is_file(),
        "the previous dist is kept"
    );

    recorded_as_a_parallel_build(&site);
}

#[test]
fn an_unchanged_retrigger_builds_nothing_but_still_checks_health() {
    let Some(site) = Site::new() else {
        return;
    };
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(log.contains("nothing changed"), "{log}");
    // Every build asks whether astro-tractstack has a new release; this site has the newest, so nothing
    // runs `pnpm up`.
    assert!(
        log.contains("step `look up astro-tractstack` done")
            && log.contains("astro-tractstack 2.0.0 is installed and is the latest")
            && !log.contains("update astro-tractstack"),
        "{log}"
    );
    assert!(
        !log.contains("step `build backend` started")
            && !log.contains("step `build frontend` started"),
        "{log}"
    );
    assert!(
        log.contains("step `check backend` done") && log.contains("step `check frontend` done"),
        "{log}"
    );

    let (out, log) = site.build(",force=true");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        log.contains("step `build backend` started")
            && log.contains("step `build frontend` started"),
        "force rebuilds: {log}"
    );
}

#[test]
fn a_backend_that_needs_setup_is_a_warning_not_a_rollback() {
    // A fresh install: the default tenant is inactive, the backend answers {"needsSetup":true} and the
    // frontend's `/` redirects to /storykeep/init.
    let Some(site) = Site::with(Setup {
        default_status: "inactive",
        ..Setup::default()
    }) else {
        return;
    };
    let (status, head, _) = get_with(site.astro_port, "/", "").unwrap();
    assert!(status == 302 && head.contains("/storykeep/init"), "{head}");
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "v2\n")],
        "backend v2",
    );
    commit(&site.frontend, &[("version.txt", "v2\n")], "frontend v2");
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    assert!(
        log.contains("tenant default is not set up yet (needsSetup)"),
        "{log}"
    );
    assert!(log.contains("(redirect to /storykeep/init)"), "{log}");
    assert!(!log.contains("rolling back"), "{log}");
    assert_eq!(site.record()["built"]["backend"], true);
    // Once set up, the same build serves.
    std::fs::write(
        site.data.join("config/t8k/tenants.json"),
        "{\"tenants\":{\"default\":{\"status\":\"active\"}}}\n",
    )
    .unwrap();
    assert_eq!(site.serving(), (Some("v2".into()), Some("v2".into())));
}

#[test]
fn a_new_astro_tractstack_is_installed_built_and_served_unless_pinned() {
    // In cluster mode, as the README recommends: no fork-mode warning.
    let Some(site) = Site::with(Setup {
        pm2_mode: "cluster",
        ..Setup::default()
    }) else {
        return;
    };
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("pm2 runs astro-main in cluster mode"), "{log}");
    assert!(!log.contains("fork mode"), "{log}");
    assert_eq!(
        site.page_part("id=\"astro-tractstack\">", "</p>"),
        Some("2.0.0".into())
    );

    site.registry.publish("2.0.1");
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    assert!(
        log.contains("astro-tractstack 2.0.1 is the latest, but node_modules has 2.0.0: updating")
            && log.contains("step `update astro-tractstack` done"),
        "{log}"
    );
    assert!(log.contains("package.json changed"), "{log}");
    assert!(log.contains("step `install frontend` done"), "{log}");
    assert_eq!(
        site.page_part("id=\"astro-tractstack\">", "</p>"),
        Some("2.0.1".into())
    );
    let package = std::fs::read_to_string(site.frontend_src().join("package.json")).unwrap();
    assert!(
        package.contains("\"astro-tractstack\": \"^2.0.1\""),
        "{package}"
    );
    let record = site.record();
    assert_eq!(
        record["lockfile"].as_str(),
        Some(sha256(&site.frontend_src().join("pnpm-lock.yaml")).as_str())
    );
    assert_eq!(
        record["package_json"].as_str(),
        Some(sha256(&site.frontend_src().join("package.json")).as_str())
    );

    // Nothing new: the update changes nothing and nothing is built.
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("nothing changed"), "{log}");

    // Pinned: a new release is not taken.
    site.edit_common(
        "export const ASTRO_TRACTSTACK = \"latest\";",
        "export const ASTRO_TRACTSTACK = \"pinned\";",
    );
    site.registry.publish("2.0.2");
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        !log.contains("update astro-tractstack") && !log.contains("look up astro-tractstack"),
        "pinned asks no registry: {log}"
    );
    assert!(log.contains("nothing changed"), "{log}");
    assert_eq!(
        site.page_part("id=\"astro-tractstack\">", "</p>"),
        Some("2.0.1".into())
    );
}

#[test]
fn local_edits_and_env_changes_are_built_and_recorded() {
    let Some(site) = Site::new() else {
        return;
    };
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    let clean = site.record()["local_changes"].clone();

    // An operator edits a tracked file in place, as the concierge's "skip the pull on a dirty tree" allows.
    std::fs::write(site.frontend_src().join("version.txt"), "v1-edited\n").unwrap();
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    assert!(
        log.contains("(local edits (1 file(s): version.txt))"),
        "{log}"
    );
    assert!(!log.contains("step `build backend` started"), "{log}");
    assert_eq!(site.serving().1, Some("v1-edited".into()));
    let edited = site.record()["local_changes"].clone();
    assert!(edited.is_string() && edited != clean, "{edited} vs {clean}");

    // The same edits again: nothing to build.
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("nothing changed"), "{log}");

    // A PUBLIC_* variable in .env, which Astro inlines at build time.
    let env = site.frontend_src().join(".env");
    let mut text_env = std::fs::read_to_string(&env).unwrap();
    text_env.push_str("PUBLIC_TAGLINE=fresh words\n");
    std::fs::write(&env, text_env).unwrap();
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains(".env changed"), "{log}");
    assert_eq!(
        site.page_part("id=\"tagline\">", "</p>"),
        Some("fresh words".into())
    );
    assert_eq!(site.record()["env"].as_str(), Some(sha256(&env).as_str()));
}

/// A dedicated site: its backend is an instance of `tractstack-go@.service`.
#[test]
fn a_dedicated_site_missing_from_the_ports_file_is_checked_as_its_tenant_where_its_backend_reads() {
    let Some(site) = Site::with(Setup {
        site: Some("acme"),
        ports_listed: false,
        tenants: &[],
        ..Setup::default()
    }) else {
        return;
    };
    // A leftover directory that is no tenant (no env.json).
    std::fs::create_dir_all(site.data.join("config/old-backup")).unwrap();
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "v2\n")],
        "backend v2",
    );
    commit(&site.frontend, &[("version.txt", "v2\n")], "frontend v2");
    // The backend is an instance of the installer's template, restarted as `tractstack-go@acme`.
    assert!(
        site.unit_says("FragmentPath")
            .ends_with("/systemd/user/tractstack-go@.service")
    );
    let before = site.unit_says("InvocationID");
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    site.restarted_by_systemd(&before, &log);
    assert!(!log.contains("no journal to read"), "{log}");
    assert!(
        log.contains(&format!(
            "backend {} from PORT in {}/.env",
            site.go_port,
            site.base.join("src/tractstack-go").display()
        )) && log.contains(&format!(
            "frontend {} from PORT in pm2's environment of astro-acme",
            site.astro_port
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "the backend reads {} (GO_BACKEND_PATH in",
            site.data.display()
        )),
        "{log}"
    );
    assert_eq!(site.serving(), (Some("v2".into()), Some("v2".into())));
    let classes = site.served_whitelist("default");
    assert!(classes.contains(&"font-bold".to_string()), "{classes:?}");
    assert!(!site.data.join("config/t8k/tailwindWhitelist.json").exists());
    assert!(
        !site
            .data
            .join("config/old-backup/tailwindWhitelist.json")
            .exists()
    );
    assert!(
        !site.root.path.join("t8k-go-server").exists(),
        "nothing is written into the main install's data"
    );
}

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
fn a_frontend_that_pm2_does_not_run_fails_the_job_before_anything_live_changes() {
    // pm2 is asked how it runs the frontend while the builds run, so a process it does not know fails the
    // job there: nothing is switched, the backend is not restarted, nothing is rolled back.
    let Some(site) = Site::new() else {
        return;
    };
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "v2\n")],
        "backend v2",
    );
    commit(&site.frontend, &[("version.txt", "v2\n")], "frontend v2");
    site.sh(&site.frontend_src(), "pm2", &["delete", &site.pm2_name]);
    let live = std::fs::read(site.root.path.join("bin/tractstack-go")).unwrap();
    // The switch exchanges dist.new into dist: the directory's inode says whether it happened.
    let dist = || {
        std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(site.frontend_src().join("dist")).unwrap(),
        )
    };
    let dist_before = dist();
    let invocation = site.unit_says("InvocationID");
    let out = site.trigger("type=main,command=build");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = site.root.reason(&site.root.failed()[0]);
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains("no process named `astro-main`") && !reason.contains("rolled back"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read(site.root.path.join("bin/tractstack-go")).unwrap(),
        live
    );
    assert_eq!(dist(), dist_before);
    assert_eq!(site.unit_says("InvocationID"), invocation);
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
