//! Releases that go live: what is built, switched, restarted (the backend by systemd) and served.

use super::site::{Setup, Site, get_with, sha256};
use crate::common::{commit, text};

/// Checks that the engine's `restart_systemd` had systemd restart the backend's unit once, into the
/// release it switched in: a new invocation of the unit (`before` was the last one's id), started by the
/// engine's `systemctl restart`, not by `Restart=` after a crash, whose main process runs the file now at
/// `bin/tractstack-go`. Prints how long the restart step took.
fn restarted_by_systemd(site: &Site, before: &str, log: &str) {
    assert!(
        log.contains(&format!("$ systemctl restart {}", site.unit)),
        "{log}"
    );
    assert_ne!(site.unit_says("InvocationID"), before, "a new invocation");
    assert_eq!(site.unit_says("ActiveState"), "active");
    assert_eq!(site.unit_says("NRestarts"), "0", "no restart after a crash");
    let pid: u32 = site.unit_says("MainPID").parse().unwrap();
    let exe = std::fs::read_link(site.sd.inside(&format!("/proc/{pid}/exe"))).unwrap();
    assert_eq!(exe, site.base.join("bin/tractstack-go"));
    let steps = site.record()["steps"].clone();
    let restart = steps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "restart backend")
        .unwrap_or_else(|| panic!("no restart step in {steps}"));
    eprintln!(
        "restart_systemd under a real systemd: {} ms ({})",
        restart["wall_ms"], site.unit
    );
}

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
    restarted_by_systemd(&site, &before, &log);
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
    assert!(
        log.contains("step `update astro-tractstack` done"),
        "astro-tractstack is updated on every build, as the concierge did: {log}"
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
    assert!(!log.contains("update astro-tractstack"), "{log}");
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
    restarted_by_systemd(&site, &before, &log);
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
