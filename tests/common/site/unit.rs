//! The backend's systemd unit as TractStack's installer writes it (`configure_systemd_services` in
//! pkg/scripts/t8k-install.sh of AtRiskMedia/tractstack-go): `tractstack-go.service` for the main install,
//! the template `tractstack-go@.service` for dedicated sites, whose paths name the site by `%i`. The test
//! runs it in a systemd user manager, so it differs from the installer's only where such a manager does,
//! and where no journald runs; each difference is marked in the unit.

use std::path::Path;

use super::Root;

/// The unit's file name and text for the main install (`site` is `None`) or a dedicated site.
pub fn backend(root: &Root, site: Option<&str>, go_port: u16) -> (String, String) {
    let home = root.path.display().to_string();
    let (file, description, base) = match site {
        None => (
            "tractstack-go.service".to_string(),
            "TractStack Go Backend".to_string(),
            home.clone(),
        ),
        // The installer writes the template with the port of the site it installs, as here.
        Some(_) => (
            "tractstack-go@.service".to_string(),
            "TractStack Go Backend (Site: %i)".to_string(),
            format!("{home}/sites/%i"),
        ),
    };
    let journal = root.fakes.join("journal");
    let text = format!(
        "[Unit]
Description={description}
After=network.target
[Service]
Type=simple
# A user manager runs units as its own user: in place of User=t8k and Group=t8k, t8k's home.
Environment=HOME={home}
WorkingDirectory={base}/src/tractstack-go
Environment=GO_BACKEND_PATH={base}/t8k-go-server/
Environment=PORT={go_port}
Environment=GIN_MODE=release
ExecStart={base}/bin/tractstack-go
Restart=always
# The fixture backend's warm-up before it listens (the real one warms its caches).
Environment=WARMUP_MS=1000
{journald}
[Install]
# A user manager has no multi-user.target.
WantedBy=default.target
",
        journald = journald_stand_in(&journal)
    );
    (file, text)
}

/// No journald runs in the test's namespace: the unit's output goes to `<dir>/<unit>.log`, and each start
/// of the unit (a restart by systemd's `Restart=` too) writes a `-- t8k-start EPOCH --` line first, so
/// that tests/fixtures/journalctl can answer `journalctl -u UNIT --since @EPOCH` from it.
fn journald_stand_in(dir: &Path) -> String {
    format!(
        "# journald's stand-in: the output to a file, every start marked.
ExecStartPre=/bin/sh -c 'echo \"-- t8k-start $$(date +%%s) --\"'
StandardOutput=append:{}/%N.log
StandardError=inherit",
        dir.display()
    )
}
