//! The web and fleet units under a real systemd: the web unit serves and drops triggers but its
//! sandbox keeps it out of the engine's directories; a fleet bridge refused for its configuration
//! exits 2 and is not restarted forever.

use std::time::{Duration, Instant};

use super::{root_with, test_environment};
use crate::common::site::free_port;
use crate::common::systemd::Systemd;
use crate::common::systemd::units::adapt_unit;
use crate::common::{Root, wait_until};

const WEB: &str = "t8k-engine-web.service";

#[test]
fn the_web_unit_serves_and_drops_triggers_but_cannot_write_the_engines_directories() {
    let Some(sd) = Systemd::boot() else { return };
    const TOKEN: &str = "unit-token-9c2e";
    let root = Root::with_config(&format!(
        "[web]\n[[web.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\n",
        crate::common::web::digest(TOKEN)
    ));
    // The engine's directories as a daemon leaves them.
    for d in [
        "state/.t8k-engine/history",
        "state/.t8k-engine/requests",
        "state/.t8k-engine/releases",
        "state/failed",
    ] {
        std::fs::create_dir_all(root.path.join(d)).unwrap();
    }
    let port = free_port();
    let p = root.path.display();
    // Runs inside the unit's sandbox, as the service does: which paths may it write?
    let probe = format!(
        "ExecStartPost=/bin/sh -c 'for f in {p}/state/failed/probe {p}/state/.t8k-engine/probe {p}/state/.t8k-engine/releases/probe {p}/scripts/probe {p}/state/.probe.tmp {p}/state/.t8k-engine/history/probe {p}/state/.t8k-engine/requests/probe; do if touch $$f 2>/dev/null; then echo \"writable $$f\"; rm -f $$f; else echo \"refused $$f\"; fi; done'"
    );
    let unit = adapt_unit(
        WEB,
        &[
            ("User=", None),
            ("Group=", None),
            (
                "Environment=T8K_ROOT=",
                Some(format!("Environment=T8K_ROOT={p}")),
            ),
            (
                "ExecStart=",
                Some(format!(
                    "ExecStart={} serve --listen 127.0.0.1:{port}",
                    env!("CARGO_BIN_EXE_t8k-engine")
                )),
            ),
            (
                "ReadWritePaths=",
                Some(format!(
                    "ReadWritePaths={p}/state -{p}/state/.t8k-engine/requests"
                )),
            ),
            (
                "ReadOnlyPaths=",
                Some(format!(
                    "ReadOnlyPaths=-{p}/state/.t8k-engine -{p}/state/failed"
                )),
            ),
            // The test's root lives in /tmp, which a private /tmp would hide.
            ("PrivateTmp=", None),
            // A user manager in the test's PID namespace cannot set these two up (the unit fails at step
            // NAMESPACE, "No such file or directory"); the system manager on a server can. Every other
            // setting of the shipped unit applies here as it ships.
            ("ProtectKernelTunables=", None),
            ("ProtectKernelLogs=", None),
        ],
        &test_environment(&sd, &root, "web.out", &[&probe]),
    );
    sd.install(WEB, &unit);
    sd.ok(&["start", WEB]);
    let base = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(20), "the web unit to answer", || {
        ureq::get(&format!("{base}/api/info")).call().is_ok()
    });
    let out = || std::fs::read_to_string(root.path.join("web.out")).unwrap_or_default();
    wait_until(Duration::from_secs(20), "the probe's answers", || {
        out().matches("able ").count() + out().matches("refused ").count() >= 7
    });
    let text = out();
    for refused in [
        "state/failed/probe",
        "state/.t8k-engine/probe",
        // The engine's own journal: a compromised web process cannot rewrite the history.
        "state/.t8k-engine/history/probe",
        "state/.t8k-engine/releases/probe",
        "scripts/probe",
    ] {
        assert!(
            text.contains(&format!("refused {p}/{refused}")),
            "{refused}: {text}"
        );
    }
    for writable in ["state/.probe.tmp", "state/.t8k-engine/requests/probe"] {
        assert!(
            text.contains(&format!("writable {p}/{writable}")),
            "{writable}: {text}"
        );
    }
    assert_eq!(sd.show(WEB, "ProtectSystem"), "strict");
    assert_eq!(sd.show(WEB, "NoNewPrivileges"), "yes");

    // Through the sandbox it still reads the status and drops a trigger, recorded with who asked.
    let status: serde_json::Value =
        crate::common::web::json(&crate::common::web::get(&format!("{base}/api/status")).1);
    assert_eq!(status["engine"]["state"], "stopped", "{status}");
    let mut r = ureq::post(&format!("{base}/api/trigger"))
        .header("authorization", &format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .send("{\"target\":\"main\"}")
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        202,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    assert_eq!(root.inbox().len(), 1);
    let requests =
        std::fs::read_to_string(root.path.join("state/.t8k-engine/requests/journal.jsonl"))
            .unwrap();
    assert!(requests.contains("\"by\":\"ops\""), "{requests}");
    let stopped = Instant::now();
    sd.ok(&["stop", WEB]);
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopped.elapsed()
    );
}

const FLEET: &str = "t8k-engine-fleet.service";

/// The shipped fleet unit as `name`, or (`restart_on_refusal`) the same without its
/// `RestartPreventExitStatus=`, for a user manager and the test's root.
fn install_fleet(sd: &Systemd, root: &Root, name: &str, restart_on_refusal: bool) {
    let mut edits = vec![
        ("User=", None),
        ("Group=", None),
        (
            "Environment=T8K_ROOT=",
            Some(format!("Environment=T8K_ROOT={}", root.path.display())),
        ),
        (
            "ExecStart=",
            Some(format!(
                "ExecStart={} fleet",
                env!("CARGO_BIN_EXE_t8k-engine")
            )),
        ),
        (
            "ReadWritePaths=",
            Some(format!("ReadWritePaths={}/state", root.path.display())),
        ),
        // The test's root lives in /tmp, which a private /tmp would hide; a user manager in the test's PID
        // namespace cannot set up ProtectKernelTunables= (see the web unit's test).
        ("PrivateTmp=", None),
        ("ProtectKernelTunables=", None),
    ];
    if restart_on_refusal {
        edits.push(("RestartPreventExitStatus=", None));
    }
    let unit = adapt_unit(
        FLEET,
        &edits,
        &test_environment(sd, root, &format!("{name}.out"), &[]),
    );
    sd.install(name, &unit);
}

#[test]
fn a_fleet_bridge_refused_for_its_configuration_is_not_restarted_forever() {
    let Some(sd) = Systemd::boot() else { return };
    // No [fleet] section: the bridge refuses to start with exit 2.
    let root = root_with("fn build(job) { }\n", "");

    // Control: without the shipped RestartPreventExitStatus=2, Restart=always and no start limit repeat
    // the refusal every RestartSec, forever.
    const CONTROL: &str = "t8k-engine-fleet-control.service";
    install_fleet(&sd, &root, CONTROL, true);
    sd.ok(&["start", "--no-block", CONTROL]);
    wait_until(
        Duration::from_secs(30),
        "the control to be restarted",
        || sd.show(CONTROL, "NRestarts").parse::<u32>().unwrap_or(0) >= 1,
    );
    sd.ok(&["stop", CONTROL]);

    install_fleet(&sd, &root, FLEET, false);
    sd.ok(&["start", "--no-block", FLEET]);
    wait_until(Duration::from_secs(30), "the unit to fail", || {
        sd.show(FLEET, "ActiveState") == "failed"
    });
    assert_eq!(sd.show(FLEET, "ExecMainStatus"), "2");
    assert_eq!(sd.show(FLEET, "NRestarts"), "0");
    let out = std::fs::read_to_string(root.path.join(format!("{FLEET}.out"))).unwrap_or_default();
    assert!(out.contains("no [fleet] section"), "{out}");
}
