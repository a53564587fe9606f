//! Owns the `[web]` settings of `t8k-engine serve`: the address, the named action tokens (kept as SHA-256
//! digests, never as the tokens), the git webhooks (repository and branch to targets, each with a secret
//! file) and their limits, with validation; it never listens or reads a request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Where `serve` listens without `--listen` or `listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// The `[web]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// The address to listen on, e.g. `127.0.0.1:8787`.
    #[serde(default)]
    pub listen: Option<String>,
    /// Host names a loopback server also answers to: the public name a proxy passes on in `Host`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Who may act (trigger, cancel, roll back): each a name and the SHA-256 of its token.
    #[serde(default)]
    pub tokens: Vec<Token>,
    /// Git push webhooks: which repository and branch trigger which targets.
    #[serde(default)]
    pub hooks: Vec<Hook>,
    /// A delivery id seen within this many seconds is a replay and is ignored.
    #[serde(default = "default_dedup")]
    pub hook_dedup_seconds: u64,
    /// Webhook bodies larger than this are refused (413).
    #[serde(default = "default_max_hook_bytes")]
    pub max_hook_bytes: usize,
}

/// A named action token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// Who holds it: recorded in the history with every action it is used for.
    pub name: String,
    /// The token's SHA-256, in hex (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
}

/// One webhook mapping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// The repository as the forge names it in the push event (`repository.full_name`, `owner/name`).
    pub repository: String,
    /// The branch whose pushes trigger builds (`refs/heads/BRANCH`).
    pub branch: String,
    /// The targets to build: `main`, `multi/TENANT` or `dedicated/SITE`.
    pub targets: Vec<String>,
    /// A file holding the webhook's secret on one line (mode 0600 or stricter).
    pub secret_file: PathBuf,
    /// The name recorded in the history (`hook:NAME`; default: the repository).
    #[serde(default)]
    pub name: Option<String>,
}

fn default_dedup() -> u64 {
    3600
}

fn default_max_hook_bytes() -> usize {
    1 << 20
}

impl WebConfig {
    /// Reads and checks the `[web]` table.
    pub fn from_table(table: &toml::Table) -> Result<WebConfig> {
        let config: WebConfig = table
            .clone()
            .try_into()
            .context("config section [web] is not valid (see README \"Web page and API\")")?;
        config.validate()?;
        Ok(config)
    }

    /// The `[web]` section of the configuration, or the defaults (read-only, no hooks).
    pub fn of(config: &crate::config::Config) -> Result<WebConfig> {
        match &config.web {
            Some(table) => Self::from_table(table),
            None => Ok(WebConfig {
                hook_dedup_seconds: default_dedup(),
                max_hook_bytes: default_max_hook_bytes(),
                ..WebConfig::default()
            }),
        }
    }

    fn validate(&self) -> Result<()> {
        if let Some(listen) = &self.listen {
            parse_listen(listen).context("config setting web.listen")?;
        }
        for host in &self.hosts {
            let ok = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
            if !ok {
                bail!(
                    "config setting web.hosts: `{}` is not a host name (e.g. status.example.net, without a port)",
                    host.escape_debug()
                );
            }
        }
        for (i, t) in self.tokens.iter().enumerate() {
            check_name("web.tokens name", &t.name)?;
            let hex_ok = t.sha256.len() == 64 && t.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_ok {
                bail!(
                    "config setting web.tokens[{i}] ({}): sha256 must be the token's SHA-256 in 64 hex digits (`printf %s \"$TOKEN\" | sha256sum`), never the token itself",
                    t.name
                );
            }
            if self.tokens[..i].iter().any(|o| o.name == t.name) {
                bail!(
                    "config setting web.tokens: the name `{}` is given twice; each token needs its own name, which the history records",
                    t.name
                );
            }
        }
        for h in &self.hooks {
            let repo_ok = h.repository.split('/').count() == 2
                && h.repository.split('/').all(|part| {
                    !part.is_empty()
                        && part.len() <= 100
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
                });
            if !repo_ok {
                bail!(
                    "config setting web.hooks: repository `{}` must be `owner/name` as the forge spells it",
                    h.repository.escape_debug()
                );
            }
            if h.branch.is_empty() || h.branch.len() > 200 || h.branch.contains(['\n', ' ']) {
                bail!(
                    "config setting web.hooks ({}): branch `{}` is not a branch name",
                    h.repository,
                    h.branch.escape_debug()
                );
            }
            if h.targets.is_empty() {
                bail!(
                    "config setting web.hooks ({}): targets is empty; list what a push builds, e.g. [\"main\"]",
                    h.repository
                );
            }
            for t in &h.targets {
                target_spec(t)
                    .with_context(|| format!("config setting web.hooks ({})", h.repository))?;
            }
            if let Some(name) = &h.name {
                check_name("web.hooks name", name)?;
            }
        }
        Ok(())
    }

    /// The address: `--listen`, else `listen`, else [`DEFAULT_LISTEN`].
    pub fn address(&self, flag: Option<&str>) -> Result<SocketAddr> {
        let text = flag.or(self.listen.as_deref()).unwrap_or(DEFAULT_LISTEN);
        parse_listen(text)
    }
}

impl Hook {
    /// The name the history records for its pushes.
    pub fn who(&self) -> String {
        format!("hook:{}", self.name.as_deref().unwrap_or(&self.repository))
    }

    /// The secret, refusing a file others can read.
    pub fn secret(&self) -> Result<Vec<u8>> {
        read_secret(&self.secret_file)
    }
}

fn parse_listen(text: &str) -> Result<SocketAddr> {
    text.parse().map_err(|_| {
        anyhow::anyhow!(
            "`{}` is not an address to listen on: give IP:PORT, e.g. 127.0.0.1:8787 or [::1]:8787",
            text.escape_debug()
        )
    })
}

/// A name recorded in the history: `[A-Za-z0-9_.-]{1,64}`.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        bail!(
            "config setting {what} `{}`: use 1 to 64 letters, digits, `_`, `-` or `.`",
            name.escape_debug()
        );
    }
    Ok(())
}

/// A target name as a trigger's fields: `main`, `multi/TENANT`, `dedicated/SITE` → (type, tenant, site),
/// each value checked as the trigger parser checks it.
pub fn target_spec(target: &str) -> Result<(&'static str, String, Option<String>)> {
    let (kind, tenant, site) = match target.split_once('/') {
        None if target == "main" => ("main", "default".to_string(), None),
        Some(("multi", tenant)) => ("multi", tenant.to_string(), None),
        Some(("dedicated", site)) => ("dedicated", "default".to_string(), Some(site.to_string())),
        _ => bail!(
            "`{}` is not a target: use main, multi/TENANT or dedicated/SITE",
            target.escape_debug()
        ),
    };
    let mut line = format!("type={kind},tenant={tenant}");
    if let Some(site) = &site {
        line.push_str(&format!(",site={site}"));
    }
    line.push_str(",command=build");
    crate::trigger::parse_line(&line, 1)
        .map_err(|e| anyhow::anyhow!("target `{}`: {}", target.escape_debug(), e.message))?;
    Ok((kind, tenant, site))
}

/// Reads a one-line secret from a file that only its owner may read.
pub fn read_secret(path: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the webhook secret file {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the webhook secret file {} can be read by others (mode {:o}): `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        );
    }
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read the webhook secret file {}", path.display()))?;
    let secret = text.strip_suffix(b"\n").unwrap_or(&text);
    let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
    if secret.is_empty() || secret.contains(&b'\n') {
        bail!(
            "the webhook secret file {} must hold the secret on one line",
            path.display()
        );
    }
    Ok(secret.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebConfig> {
        WebConfig::from_table(&toml::from_str(text).unwrap())
    }

    #[test]
    fn tokens_are_digests_with_unique_names() {
        let digest = "a".repeat(64);
        assert!(
            parse(&format!(
                "[[tokens]]\nname = \"ops\"\nsha256 = \"{digest}\"\n"
            ))
            .is_ok()
        );
        let e = parse("[[tokens]]\nname = \"ops\"\nsha256 = \"hunter2\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("never the token itself"), "{e:#}");
        let e = parse(&format!(
            "[[tokens]]\nname = \"ops\"\nsha256 = \"{digest}\"\n[[tokens]]\nname = \"ops\"\nsha256 = \"{digest}\"\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("given twice"), "{e:#}");
    }

    #[test]
    fn hooks_name_real_targets_and_repositories() {
        let hook = |repo: &str, targets: &str| {
            parse(&format!(
                "[[hooks]]\nrepository = \"{repo}\"\nbranch = \"main\"\ntargets = {targets}\nsecret_file = \"/x\"\n"
            ))
        };
        assert!(
            hook(
                "AtRiskMedia/my-tractstack",
                "[\"main\", \"dedicated/acme\"]"
            )
            .is_ok()
        );
        assert!(hook("nobody", "[\"main\"]").is_err());
        assert!(hook("a/b", "[\"dedicated/../etc\"]").is_err());
        assert!(hook("a/b", "[\"prod/x\"]").is_err());
        assert!(hook("a/b", "[]").is_err());
    }

    #[test]
    fn targets_become_trigger_fields() {
        assert_eq!(
            target_spec("main").unwrap(),
            ("main", "default".into(), None)
        );
        assert_eq!(
            target_spec("multi/blue").unwrap(),
            ("multi", "blue".into(), None)
        );
        assert_eq!(
            target_spec("dedicated/acme").unwrap(),
            ("dedicated", "default".into(), Some("acme".into()))
        );
        assert!(target_spec("dedicated/a,command=x").is_err());
    }
}
