//! Owns the fleet's security model as a nats-server configuration: an accounts block with one user per
//! host, producer, viewer and administrator, each allowed exactly the subjects its role needs, no anonymous
//! user and no `authorization` block; it writes text and never talks to a server.

use std::fmt::Write;
use std::path::PathBuf;

use super::names::{EVENTS_STREAM, JOBS_STREAM, SITES_BUCKET, STATUS_BUCKET};

/// What a user may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Creates streams, consumers and buckets and changes the site map; never on a host.
    Admin,
    /// Runs the bridge of this host: its own jobs, its own events and status.
    Host(String),
    /// Queues jobs for any host (`trigger --fleet`, an outbox).
    Producer,
    /// Reads every host's status and the events stream (`fleet status`, `fleet history`).
    Viewer,
}

/// One user of the fleet's account.
#[derive(Debug, Clone)]
pub struct User {
    /// The user name (a host's user is named after the host).
    pub name: String,
    /// Its password (alphanumeric).
    pub password: String,
    /// Its roles.
    pub roles: Vec<Role>,
}

/// TLS on the client port.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The server's certificate.
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
    /// The CA that signed client certificates; with it clients must present one (`verify: true`).
    pub ca_file: Option<PathBuf>,
}

/// A server configuration to write.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `host:port` of the client listener.
    pub listen: String,
    /// JetStream's store directory.
    pub store_dir: PathBuf,
    /// The users.
    pub users: Vec<User>,
    /// TLS, strongly advised beyond one machine.
    pub tls: Option<Tls>,
}

/// The subjects a user may publish to and subscribe to; None for an administrator (everything).
pub fn permissions(user: &User) -> Option<(Vec<String>, Vec<String>)> {
    if user.roles.contains(&Role::Admin) {
        return None;
    }
    let mut publish: Vec<String> = Vec::new();
    let mut subscribe = vec![format!("_INBOX.{}.>", user.name)];
    let site_map = [
        format!("$JS.API.STREAM.INFO.KV_{SITES_BUCKET}"),
        format!("$JS.API.DIRECT.GET.KV_{SITES_BUCKET}.>"),
        format!("$JS.API.STREAM.MSG.GET.KV_{SITES_BUCKET}"),
    ];
    for role in &user.roles {
        match role {
            Role::Admin => {}
            Role::Host(h) => {
                publish.extend([
                    format!("$JS.API.CONSUMER.INFO.{JOBS_STREAM}.{h}"),
                    format!("$JS.API.CONSUMER.MSG.NEXT.{JOBS_STREAM}.{h}"),
                    format!("$JS.ACK.{JOBS_STREAM}.{h}.>"),
                    format!("t8k.events.{h}.>"),
                    format!("$KV.{STATUS_BUCKET}.{h}"),
                ]);
                publish.extend(site_map.iter().cloned());
                subscribe.push(super::names::max_deliveries_advisory(h));
            }
            Role::Producer => {
                publish.push("t8k.jobs.>".into());
                publish.extend(site_map.iter().cloned());
            }
            Role::Viewer => {
                publish.extend(site_map.iter().cloned());
                for stream in [EVENTS_STREAM.to_string(), format!("KV_{STATUS_BUCKET}")] {
                    publish.extend([
                        format!("$JS.API.STREAM.INFO.{stream}"),
                        format!("$JS.API.DIRECT.GET.{stream}.>"),
                        format!("$JS.API.STREAM.MSG.GET.{stream}"),
                        format!("$JS.API.CONSUMER.CREATE.{stream}"),
                        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
                        format!("$JS.API.CONSUMER.INFO.{stream}.*"),
                        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
                        format!("$JS.API.CONSUMER.DELETE.{stream}.*"),
                    ]);
                }
                publish.extend([
                    format!("$JS.API.CONSUMER.NAMES.{JOBS_STREAM}"),
                    format!("$JS.API.CONSUMER.INFO.{JOBS_STREAM}.*"),
                ]);
            }
        }
    }
    publish.sort();
    publish.dedup();
    subscribe.sort();
    subscribe.dedup();
    Some((publish, subscribe))
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| quoted(s))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole nats-server configuration.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# nats-server configuration for a t8k-engine fleet (t8k-engine fleet server-config).\n\
         # Every client authenticates as one user of account T8K; there is no anonymous user, no\n\
         # `authorization` block and no `no_auth_user`. Needs nats-server 2.9 or later; run a current\n\
         # upstream release in production (see the README's Fleet section)."
    );
    let _ = writeln!(out, "listen: {}", quoted(&plan.listen));
    let _ = writeln!(
        out,
        "jetstream {{\n  store_dir: {}\n}}",
        quoted(&plan.store_dir.display().to_string())
    );
    if let Some(tls) = &plan.tls {
        let _ = writeln!(out, "tls {{");
        let _ = writeln!(
            out,
            "  cert_file: {}",
            quoted(&tls.cert_file.display().to_string())
        );
        let _ = writeln!(
            out,
            "  key_file: {}",
            quoted(&tls.key_file.display().to_string())
        );
        if let Some(ca) = &tls.ca_file {
            let _ = writeln!(
                out,
                "  ca_file: {}\n  verify: true",
                quoted(&ca.display().to_string())
            );
        }
        let _ = writeln!(out, "}}");
    }
    let _ = writeln!(
        out,
        "accounts {{\n  SYS: {{}}\n  T8K: {{\n    jetstream: enabled\n    users: ["
    );
    for user in &plan.users {
        let roles: Vec<String> = user
            .roles
            .iter()
            .map(|r| match r {
                Role::Admin => "admin".to_string(),
                Role::Host(h) => format!("host {h}"),
                Role::Producer => "producer".to_string(),
                Role::Viewer => "viewer".to_string(),
            })
            .collect();
        let _ = writeln!(out, "      # {}: {}", user.name, roles.join(", "));
        let _ = write!(
            out,
            "      {{ user: {}, password: {}",
            quoted(&user.name),
            quoted(&user.password)
        );
        match permissions(user) {
            None => {
                let _ = writeln!(out, " }}");
            }
            Some((publish, subscribe)) => {
                let _ = writeln!(
                    out,
                    ",\n        permissions: {{\n          publish: {{ allow: [{}] }}\n          subscribe: {{ allow: [{}] }}\n        }} }}",
                    list(&publish),
                    list(&subscribe)
                );
            }
        }
    }
    let _ = writeln!(out, "    ]\n  }}\n}}\nsystem_account: SYS");
    out
}

/// A random alphanumeric password (32 characters from the kernel's random source).
pub fn password() -> std::io::Result<String> {
    use std::io::Read;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut bytes = [0u8; 64];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    // 256 is not a multiple of the alphabet's size: bytes past the last whole multiple are skipped.
    let limit = 256 - 256 % ALPHABET.len();
    Ok(bytes
        .iter()
        .filter(|&&b| (b as usize) < limit)
        .take(32)
        .map(|&b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_may_touch_only_its_own_subjects() {
        let user = User {
            name: "web-1".into(),
            password: "x".into(),
            roles: vec![Role::Host("web-1".into())],
        };
        let (publish, subscribe) = permissions(&user).unwrap();
        assert!(publish.iter().all(|s| !s.contains("web-2")));
        assert!(publish.contains(&"$JS.ACK.T8K_JOBS.web-1.>".to_string()));
        assert!(
            !publish.iter().any(|s| s.starts_with("t8k.jobs")),
            "{publish:?}"
        );
        assert!(
            !publish
                .iter()
                .any(|s| s.ends_with("$JS.API.>") || s == "$JS.>")
        );
        assert_eq!(
            subscribe[0],
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.T8K_JOBS.web-1"
        );
        let admin = User {
            roles: vec![Role::Admin],
            ..user
        };
        assert!(permissions(&admin).is_none());
    }

    #[test]
    fn passwords_are_long_and_alphanumeric() {
        let (a, b) = (password().unwrap(), password().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
