//! Owns the `[fleet]` settings: what they are, their defaults and their validation, and the names they
//! allow (hosts, users); it never connects to anything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The `[fleet]` section of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The NATS server(s), e.g. `tls://nats.example.net:4222`; several separated by commas.
    pub url: String,
    /// This host's name in the fleet: its jobs subject, its consumer and (by default) its user. Needed by the
    /// bridge; a machine that only produces jobs or looks at the fleet may leave it out.
    #[serde(default)]
    pub host: Option<String>,
    /// The NATS user (default: `host`).
    #[serde(default)]
    pub user: Option<String>,
    /// A file holding the user's password (one line, mode 0600).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for the server's TLS certificate; setting it requires TLS.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for servers that verify clients (`verify: true`), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// A directory whose trigger files the bridge forwards to the fleet (for producers that can only write
    /// files); the bridge's user needs the producer role too. Off unless set.
    #[serde(default)]
    pub outbox: Option<PathBuf>,
    /// Seconds between two reports of this host's status.
    #[serde(default = "default_status_interval")]
    pub status_interval: u64,
}

fn default_status_interval() -> u64 {
    15
}

impl FleetConfig {
    /// Reads and checks the `[fleet]` table.
    pub fn from_table(table: &toml::Table) -> Result<FleetConfig> {
        let config: FleetConfig = table
            .clone()
            .try_into()
            .context("config section [fleet] is not valid (see README \"Fleet\")")?;
        config.validate()?;
        Ok(config)
    }

    /// The `[fleet]` section of the loaded configuration, or a configuration error (exit 2: a unit
    /// restarting would meet it again) saying how to fix it.
    pub fn of(config: &crate::config::Config) -> Result<FleetConfig> {
        let fleet = match &config.fleet {
            Some(table) => Self::from_table(table),
            None => Err(anyhow::anyhow!(
                "no [fleet] section in the configuration: add one with at least `url` (see README \"Fleet\"), or run `t8k-engine config` to see which file is read"
            )),
        };
        fleet.map_err(|e| crate::error::usage(format!("{e:#}")))
    }

    fn validate(&self) -> Result<()> {
        if self.url.trim().is_empty() {
            bail!(
                "config setting fleet.url is empty: give the NATS server, e.g. \"tls://nats.example.net:4222\""
            );
        }
        for url in self.urls() {
            let scheme = url.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("nats" | "tls")) {
                bail!("config setting fleet.url: `{url}` must start with nats:// or tls://");
            }
        }
        if let Some(host) = &self.host {
            check_name("fleet.host", host)?;
        }
        if let Some(user) = &self.user {
            check_name("fleet.user", user)?;
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            bail!(
                "config settings fleet.cert_file and fleet.key_file go together: give both or neither"
            );
        }
        if self.status_interval == 0 {
            bail!("config setting fleet.status_interval must be greater than 0");
        }
        Ok(())
    }

    /// The server URLs.
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// This host's name, or an error for commands that need one.
    pub fn host(&self) -> Result<&str> {
        self.host.as_deref().ok_or_else(|| {
            crate::error::usage(
                "config setting fleet.host is missing: the bridge needs this host's name in the fleet",
            )
        })
    }

    /// The NATS user name: `user`, else `host`.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref().or(self.host.as_deref())
    }

    /// The password from `password_file`, refusing a file others can read.
    pub fn password(&self) -> Result<Option<String>> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        read_secret(path).map(Some)
    }

    /// How often the host's status is reported.
    pub fn status_every(&self) -> Duration {
        Duration::from_secs(self.status_interval)
    }
}

/// Reads a one-line secret from a file that only its owner may read.
pub fn read_secret(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the fleet password file {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the fleet password file {} can be read by others (mode {:o}): `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the fleet password file {}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() || secret.contains('\n') {
        bail!(
            "the fleet password file {} must hold the password on one line",
            path.display()
        );
    }
    Ok(secret)
}

/// Host and user names become subject tokens, consumer names and file names: `[A-Za-z0-9_-]{1,32}`, not
/// starting with `-`.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !ok {
        bail!(
            "{what} `{}` is not a valid name: use 1 to 32 letters, digits, `_` or `-`, not starting with `-`",
            name.escape_debug()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_minimal_section_reads_with_defaults() {
        let c = FleetConfig::from_table(&table(
            "url = \"nats://127.0.0.1:4222\"\nhost = \"web-1\"\n",
        ))
        .unwrap();
        assert_eq!(c.user(), Some("web-1"));
        assert_eq!(c.status_interval, 15);
        assert_eq!(c.urls(), ["nats://127.0.0.1:4222"]);
    }

    #[test]
    fn bad_settings_are_named() {
        for (text, needle) in [
            ("url = \"http://x\"", "must start with nats://"),
            ("url = \"nats://x\"\nhost = \"a.b\"", "fleet.host `a.b`"),
            ("url = \"nats://x\"\nhost = \"-a\"", "not a valid name"),
            ("url = \"nats://x\"\ncert_file = \"/c\"", "go together"),
            ("url = \"nats://x\"\nhots = \"a\"", "unknown field `hots`"),
        ] {
            let err = format!("{:#}", FleetConfig::from_table(&table(text)).unwrap_err());
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn a_password_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(format!("{:#}", read_secret(&p).unwrap_err()).contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&p).unwrap(), "s3cret");
    }
}
