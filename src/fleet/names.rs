//! Owns every name the fleet puts on the wire or on disk: streams, buckets, subjects, keys, and the file
//! name a fleet job gets in the inbox; it parses them back strictly and never does I/O.

use anyhow::{Result, bail};

use crate::trigger::{JobSpec, Kind};

/// The work-queue stream of jobs, one filtered consumer per host.
pub const JOBS_STREAM: &str = "T8K_JOBS";
/// Every job subject: `t8k.jobs.<host>.<kind>.<tenant>.<site or _>.<command>`.
pub const JOBS_SUBJECTS: &str = "t8k.jobs.>";
/// The stream of every host's journal records and bridge events.
pub const EVENTS_STREAM: &str = "T8K_EVENTS";
/// Every event subject: `t8k.events.<host>.journal.<event>` and `t8k.events.<host>.bridge.<what>`.
pub const EVENTS_SUBJECTS: &str = "t8k.events.>";
/// The site map: key = site, value = host.
pub const SITES_BUCKET: &str = "t8k_sites";
/// Each host's last status report: key = host.
pub const STATUS_BUCKET: &str = "t8k_status";
/// The header carrying the de-duplicating id of a message.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// The subject a job for `host` is published on.
pub fn job_subject(host: &str, spec: &JobSpec) -> Result<String> {
    let site = spec.site.as_deref().unwrap_or("_");
    for (what, token) in [
        ("tenant", spec.tenant.as_str()),
        ("site", site),
        ("command", spec.command.as_str()),
        ("host", host),
    ] {
        check_token(what, token)?;
    }
    Ok(format!(
        "t8k.jobs.{host}.{}.{}.{site}.{}",
        spec.kind, spec.tenant, spec.command
    ))
}

/// What a job subject says: (host, kind, tenant, site, command).
pub fn parse_job_subject(subject: &str) -> Option<(String, Kind, String, Option<String>, String)> {
    let parts: Vec<&str> = subject.split('.').collect();
    let ["t8k", "jobs", host, kind, tenant, site, command] = parts[..] else {
        return None;
    };
    let kind = Kind::ALL.into_iter().find(|k| k.as_str() == kind)?;
    let site = (site != "_").then(|| site.to_string());
    Some((host.into(), kind, tenant.into(), site, command.to_string()))
}

/// The filter of `host`'s consumer.
pub fn host_filter(host: &str) -> String {
    format!("t8k.jobs.{host}.>")
}

/// The subject a journal record of `host` is published on; `event` is the record's `event` field.
pub fn journal_subject(host: &str, event: &str) -> String {
    let event = if token_ok(event) { event } else { "other" };
    format!("t8k.events.{host}.journal.{event}")
}

/// The subject of an event the bridge itself reports (a rejected or poison job).
pub fn bridge_subject(host: &str, what: &str) -> String {
    format!("t8k.events.{host}.bridge.{what}")
}

/// The subject a host's status report is put on.
pub fn status_subject(host: &str) -> String {
    format!("$KV.{STATUS_BUCKET}.{host}")
}

/// The advisory the server sends when `host`'s consumer gave up redelivering a job.
pub fn max_deliveries_advisory(host: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{host}")
}

/// A site as a KV key: KV keys allow only `[-/_=.A-Za-z0-9]`, so any other byte (and `=`) becomes `=XX`.
pub fn site_key(site: &str) -> String {
    let mut key = String::with_capacity(site.len());
    for b in site.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') {
            key.push(b as char);
        } else {
            key.push_str(&format!("={b:02X}"));
        }
    }
    key
}

/// The site a KV key stands for.
pub fn site_from_key(key: &str) -> Option<String> {
    let mut out = Vec::with_capacity(key.len());
    let bytes = key.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = key.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A job id is a ULID in canonical form (26 Crockford base-32 characters).
pub fn parse_job_id(id: &str) -> Option<ulid::Ulid> {
    let ulid = ulid::Ulid::from_string(id).ok()?;
    (ulid.to_string() == id).then_some(ulid)
}

/// The inbox name of a fleet job: the stream's time and sequence first, so that fleet jobs sort in stream
/// order among themselves and by time among local triggers, then the job id, so that the name says
/// which job it is.
pub fn trigger_name(stream_secs: i64, stream_seq: u64, id: &ulid::Ulid) -> String {
    format!("build-{}-{stream_seq:012}-{id}.csv", stream_secs.max(0))
}

/// The job id in a fleet trigger's name (also a set-aside copy `NAME.csv.N`); None for other triggers.
pub fn job_id_of(name: &str) -> Option<ulid::Ulid> {
    let stem = name.strip_prefix("build-")?;
    let stem = match stem.rsplit_once(".csv") {
        Some((stem, "")) => stem,
        Some((stem, n)) if n.starts_with('.') && n[1..].bytes().all(|b| b.is_ascii_digit()) => stem,
        _ => return None,
    };
    let mut parts = stem.split('-');
    let (secs, seq, id) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if parts.next().is_some() || !digits(secs) || seq.len() != 12 || !digits(seq) {
        return None;
    }
    parse_job_id(id)
}

fn token_ok(token: &str) -> bool {
    !token.is_empty()
        && !token
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
}

fn check_token(what: &str, token: &str) -> Result<()> {
    if !token_ok(token) {
        bail!(
            "{what} `{}` cannot be part of a NATS subject (no `.`, `*`, `>` or spaces)",
            token.escape_debug()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::parse_line;

    #[test]
    fn job_subjects_round_trip() {
        let spec = parse_line("type=dedicated,site=acme,command=build", 1).unwrap();
        let subject = job_subject("web-1", &spec).unwrap();
        assert_eq!(subject, "t8k.jobs.web-1.dedicated.default.acme.build");
        let (host, kind, tenant, site, command) = parse_job_subject(&subject).unwrap();
        assert_eq!(
            (
                host.as_str(),
                kind,
                tenant.as_str(),
                site.as_deref(),
                command.as_str()
            ),
            ("web-1", Kind::Dedicated, "default", Some("acme"), "build")
        );
        let main = parse_line("type=main,command=build", 1).unwrap();
        assert_eq!(
            job_subject("h", &main).unwrap(),
            "t8k.jobs.h.main.default._.build"
        );
        assert!(parse_job_subject("t8k.jobs.h.main.default._").is_none());
        assert!(parse_job_subject("t8k.jobs.h.staging.default._.build").is_none());
    }

    #[test]
    fn site_keys_round_trip_any_site() {
        for site in ["acme", "a:b+c", "x=y", "dots.and/slash", "ünï"] {
            let key = site_key(site);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
                "{key}"
            );
            assert_eq!(site_from_key(&key).as_deref(), Some(site));
        }
        assert_eq!(site_key("a:b"), "a=3Ab");
        assert!(site_from_key("a=4").is_none());
    }

    #[test]
    fn fleet_trigger_names_carry_their_job_id() {
        let id = ulid::Ulid::new();
        let name = trigger_name(1_732_000_000, 42, &id);
        assert_eq!(name, format!("build-1732000000-000000000042-{id}.csv"));
        assert!(crate::trigger::is_trigger_name(&name));
        assert_eq!(job_id_of(&name), Some(id));
        assert_eq!(job_id_of(&format!("{name}.3")), Some(id));
        for other in [
            "build-1732000000.csv".to_string(),
            format!("build-1732000000-{id}.csv"),
            format!("build-1-000000000042-{id}.csv.x"),
            format!("build-1-42-{id}.csv"),
            format!("build-1-000000000042-{}.csv", id.to_string().to_lowercase()),
        ] {
            assert_eq!(job_id_of(&other), None, "{other}");
        }
        assert!(parse_job_id("not-a-ulid").is_none());
    }
}
