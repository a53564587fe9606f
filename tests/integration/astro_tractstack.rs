//! How often the sites of one server ask the npm registry for the newest astro-tractstack: once a round (the
//! jobs an engine runs back to back), shared by the round's sites through `remember()` and forgotten when
//! the queue empties; and `pnpm up astro-tractstack --latest` only on the sites that lack that release. Real
//! git, go, pnpm and pm2 on two fixture sites (tests/sites_harness), a local npm registry that counts who
//! asked it (tests/fixtures/npm-registry.py), `run` and the daemon.

use std::path::Path;
use std::time::Duration;

use crate::common::{stop, text, wait_until};
use crate::sites_harness::{Server, steps, ulid_like};

/// The sites whose jobs, among the newest `n`, ran step `name`, sorted.
fn ran(server: &Server, n: usize, name: &str) -> Vec<String> {
    let mut sites: Vec<String> = steps(&server.history(n))
        .into_iter()
        .filter(|(_, s)| s["name"] == name)
        .map(|(t, _)| t.trim_start_matches("dedicated/").to_string())
        .collect();
    sites.sort();
    sites
}

/// Lookups (`pnpm view`, which runs npm) and `pnpm` requests the registry answered so far.
fn asked(server: &Server) -> (usize, usize) {
    (
        server.registry.asked_by("npm/"),
        server.registry.asked_by("pnpm/"),
    )
}

/// Drops triggers for the daemon and waits until its queue is empty again: the `round`-th time it says so.
fn round(server: &Server, lines: &[&str], round: usize) {
    for line in lines {
        server
            .root
            .trigger(&format!("build-{}.csv", ulid_like()), &format!("{line}\n"));
    }
    wait_until(Duration::from_secs(600), "the round to end", || {
        server
            .root
            .daemon_out()
            .matches("queue empty: forgot 1 value(s)")
            .count()
            >= round
    });
}

fn copy(from: &Path, to: &Path, names: &[&str]) {
    for name in names {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

#[test]
fn the_newest_astro_tractstack_is_looked_up_once_a_round_and_installed_only_where_it_is_missing() {
    let server = Server::new(
        &["a", "b"],
        // No retries: the registry is down at the end, and npm's retries would only add minutes.
        "job_timeout = 600\nstep_timeout = 300\nhttp_timeout = 10\n[env]\nvars = { npm_config_fetch_retries = \"0\" }\n",
        300,
    );
    let (a, b) = (server.site("a"), server.site("b"));
    assert_eq!(a.astro_tractstack(), Some("2.0.0".into()));

    // A `run` of both sites with nothing new: one lookup, by a's job; neither runs `pnpm up`.
    let (views, pnpm) = asked(&server);
    let (out, log) = server.all_sites();
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    assert_eq!(asked(&server), (views + 1, pnpm), "{log}");
    assert_eq!(ran(&server, 2, "look up astro-tractstack"), ["a"], "{log}");
    assert!(
        ran(&server, 2, "update astro-tractstack").is_empty(),
        "{log}"
    );
    assert_eq!(
        log.matches("astro-tractstack 2.0.0 is installed and is the latest (looked up ")
            .count(),
        2,
        "{log}"
    );
    assert!(
        log.contains("s ago by dedicated/a): not running pnpm up"),
        "{log}"
    );

    // The daemon, one round: 2.0.1 is out. Looked up once; b, older, is updated on a's answer.
    let daemon = server.daemon();
    server.registry.publish("2.0.1");
    let (views, _) = asked(&server);
    round(
        &server,
        &[
            "type=dedicated,site=a,command=build",
            "type=dedicated,site=b,command=build",
        ],
        1,
    );
    assert_eq!(asked(&server).0, views + 1, "{}", server.root.log());
    assert_eq!(ran(&server, 2, "look up astro-tractstack"), ["a"]);
    assert_eq!(ran(&server, 2, "update astro-tractstack"), ["a", "b"]);
    assert_eq!(a.astro_tractstack(), Some("2.0.1".into()));
    assert_eq!(b.astro_tractstack(), Some("2.0.1".into()));
    let at_201 = server.root.path.join("a-at-2.0.1");
    std::fs::create_dir_all(&at_201).unwrap();
    copy(
        &a.frontend_src(),
        &at_201,
        &["package.json", "pnpm-lock.yaml"],
    );

    // The next round, well within LATEST_CHECK_SECS: the queue emptied in between, so 2.0.2 is seen.
    server.registry.publish("2.0.2");
    round(&server, &["type=dedicated,site=a,command=build"], 2);
    assert_eq!(asked(&server).0, views + 2, "{}", server.root.log());
    assert_eq!(ran(&server, 1, "update astro-tractstack"), ["a"]);
    assert_eq!(a.astro_tractstack(), Some("2.0.2".into()));

    // a's package.json and lockfile are put back to 2.0.1 while node_modules holds 2.0.2: an install from
    // that lockfile would build 2.0.1, so a is updated. force=true (b) looks up afresh.
    copy(
        &at_201,
        &a.frontend_src(),
        &["package.json", "pnpm-lock.yaml"],
    );
    round(
        &server,
        &[
            "type=dedicated,site=a,command=build",
            "type=dedicated,site=b,command=build,force=true",
        ],
        3,
    );
    let log = server.root.log();
    assert_eq!(asked(&server).0, views + 4, "{log}");
    assert_eq!(ran(&server, 2, "look up astro-tractstack"), ["a", "b"]);
    assert_eq!(ran(&server, 2, "update astro-tractstack"), ["a", "b"]);
    assert!(
        log.contains(
            "astro-tractstack 2.0.2 is the latest, but pnpm-lock.yaml resolves 2.0.1: updating"
        ),
        "{log}"
    );
    assert!(
        log.contains("astro-tractstack 2.0.2 is the latest, but node_modules has 2.0.1: updating"),
        "{log}"
    );
    assert_eq!(a.astro_tractstack(), Some("2.0.2".into()));
    assert_eq!(b.astro_tractstack(), Some("2.0.2".into()));
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
    assert!(
        !server.root.daemon_out().contains(" ERROR "),
        "{}",
        server.root.daemon_out()
    );

    // The registry is down for lookups: the round's one lookup fails and that is remembered too (one
    // timeout a round, not one a site); each site then runs `pnpm up` as it always did (whose own outcome,
    // from pnpm's metadata cache or a failure naming ASTRO_TRACTSTACK = "pinned", is pnpm's).
    std::fs::write(server.registry.dir.join("down"), "").unwrap();
    let (out, log) = server.all_sites();
    assert!(out.status.code().is_some(), "{}\n{log}", text(&out));
    assert_eq!(ran(&server, 2, "look up astro-tractstack"), ["a"], "{log}");
    assert_eq!(
        ran(&server, 2, "update astro-tractstack"),
        ["a", "b"],
        "{log}"
    );
    assert_eq!(
        log.matches("could not look up the latest astro-tractstack")
            .count(),
        2,
        "{log}"
    );
    assert!(log.contains("s ago by dedicated/a): "), "{log}");
}
