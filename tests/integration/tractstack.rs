//! The shipped scripts against contracts of the real TractStack server that need no build: the
//! installer's sudoers rule and polkit, and what a fatal start looks like in real logs.

use std::path::Path;
use std::process::Command;

use crate::common::{Root, text};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

/// A root whose systemctl behaves as for the installer's t8k user: polkit refuses to let it start or
/// restart units, and sudo allows exactly the installer's rule (`systemctl restart|reload tractstack-go*`).
///
/// These tests keep the fake `systemctl` (tests/fixtures/systemctl) on purpose: the failure they inject,
/// polkit's "Interactive authentication required" for a system unit, comes from the system manager and
/// polkitd, and the tests' real systemd, a user manager that lets its own user do anything, cannot produce
/// it.
fn installer_root(config: &str) -> Root {
    let root = Root::with_config(config);
    std::os::unix::fs::symlink(fixtures().join("sudo"), root.fakes.join("bin/sudo")).unwrap();
    std::fs::write(root.fakes.join("polkit"), "").unwrap();
    std::fs::write(root.fakes.join("units/tractstack-go"), "exec sleep 300\n").unwrap();
    root
}

fn stop_unit(root: &Root) {
    let _ = Command::new(root.fakes.join("bin/systemctl"))
        .args(["stop", "tractstack-go"])
        .env("FAKE_DIR", &root.fakes)
        .env("SUDO_USER", "t8k")
        .output();
}

#[test]
fn restart_systemd_works_with_the_installers_sudoers_rule() {
    let root = installer_root("sudo_systemctl = true\n");
    let out = root.run(&[
        "eval",
        "--job",
        "type=main,command=build",
        "restart_systemd(job.unit)",
    ]);
    stop_unit(&root);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Only the restart goes through sudo; is-active needs no privileges and the rule would refuse it.
    assert_eq!(root.calls("sudo"), ["-n systemctl restart tractstack-go"]);
    assert!(
        root.calls("systemctl")
            .contains(&"is-active tractstack-go".to_string()),
        "{:?}",
        root.calls("systemctl")
    );
}

#[test]
fn without_sudo_a_polkit_refusal_says_which_setting_to_change() {
    let root = installer_root("sudo_systemctl = false\n");
    let out = root.run(&[
        "eval",
        "--job",
        "type=main,command=build",
        "restart_systemd(job.unit)",
    ]);
    stop_unit(&root);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Interactive authentication required")
            && err.contains("set `sudo_systemctl = true`"),
        "{err}"
    );
    assert!(root.calls("sudo").is_empty());
}

/// Runs the shipped `is_fatal` over each line; returns the lines it flags.
fn flagged(lines: &[&str]) -> Vec<String> {
    let root = Root::new();
    let file = root.path.join("lines.txt");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let snippet = format!(
        "import \"lib/common\" as t8k; read_from({:?}, 0).split(\"\\n\").filter(|l| t8k::is_fatal(l))",
        file.display().to_string()
    );
    let out = root.run(&["eval", "--job", "type=main,command=build", &snippet]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let found: Vec<String> = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("eval printed no JSON-like array ({e}): {stdout}"));
    found
}

#[test]
fn the_log_check_flags_fatal_starts_not_lines_that_mention_fatal() {
    // Real-looking lines of a healthy tractstack-go and Astro frontend: none may fail a release.
    let healthy = [
        // tractstack-go's monitors log alerts with a "fatal" severity (monitoring/tenant_monitor.go).
        r#"time=2026-12-04T10:00:00.000Z level=WARN msg="Tenant alert" channel=alert tenantId=default severity=fatal message="Tenant health status changed from healthy to critical""#,
        r#"{"time":"2026-12-04T10:00:00Z","level":"WARN","msg":"Performance alert","channel":"alert","severity":"fatal","operation":"get_story_fragment"}"#,
        r#"[GIN] 2026/12/04 - 10:00:00 | 404 |      15.653µs |       127.0.0.1 | GET      "/fatal-mistakes-to-avoid""#,
        r#"time=2026-12-04T10:00:00.000Z level=INFO msg="Loaded content" channel=content title="Fatal Attraction: a review""#,
        r#"2026/12/04 10:00:00 Config override: LOG_VERBOSITY=ERROR (default: WARN)"#,
        r#"time=2026-12-04T10:00:00.000Z level=ERROR msg="Cache warming failed" channel=startup error="context deadline exceeded""#,
        "[preHealthCheck] An unexpected error occurred during the health check process. { tenantId: 'default', originalError: 'TypeError: fetch failed' }",
        "Error fetching storyfragment: Error: Health check failed with status code: 503",
        "    at getStoryData (file:///home/t8k/src/my-tractstack/dist/server/chunks/storyData.mjs:12:11)",
        "  panic: quoted in an indented line",
        "level=information",
    ];
    assert_eq!(flagged(&healthy), Vec::<String>::new());

    let dying = [
        "panic: runtime error: invalid memory address or nil pointer dereference",
        "fatal error: concurrent map writes",
        "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory",
        r#"time=2026-12-04T10:00:00.000Z level=FATAL msg="database connection lost" channel=database"#,
        r#"{"level":"fatal","time":1796410751000,"msg":"cannot reach the database"}"#,
        r#"{"level": "FATAL", "msg": "cannot open tractstack.db"}"#,
        r#"{"level":60,"time":1796410751000,"msg":"pino fatal"}"#,
        "You have triggered an unhandledRejection, you may have forgotten to catch a Promise rejection:",
        "[UnhandledPromiseRejection: This error originated either by throwing inside of an async function without a catch block, or by rejecting a promise which was not handled with .catch(). The promise rejected with the reason \"boom\".] {",
        "Node.js v22.12.0",
    ];
    assert_eq!(flagged(&dying), dying.map(str::to_string).to_vec());
}
