//! Owns putting jobs into the fleet: choosing the host (the site map for dedicated sites, the caller for the
//! others) and publishing a job with its id as `Nats-Msg-Id`, retried until the server confirms, so that a
//! retried publish is dropped as a duplicate; it never writes the local inbox.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use serde::Serialize;

use super::names;
use crate::trigger::JobSpec;

/// A job the jobs stream holds.
#[derive(Debug, Clone, Serialize)]
pub struct Queued {
    /// The job id.
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// The subject it was published on.
    pub subject: String,
    /// Its stream sequence.
    pub seq: u64,
    /// The server already had this id: this publish was dropped as a duplicate.
    pub duplicate: bool,
}

/// The host a job runs on: the site map's for a dedicated site, else `host`.
pub async fn route(js: &jetstream::Context, spec: &JobSpec, host: Option<&str>) -> Result<String> {
    match (&spec.site, host) {
        (Some(site), given) => {
            let mapped = super::sites::lookup(js, site).await?;
            match (mapped, given) {
                (Some(m), Some(g)) if m != g => bail!(
                    "site `{site}` is served by host `{m}` in the site map, not `{g}`: leave out --host, or move the site with `t8k-engine fleet sites set {site} {g}`"
                ),
                (Some(m), _) => Ok(m),
                (None, _) => bail!(
                    "site `{site}` is not in the fleet's site map: add it with `t8k-engine fleet sites set {site} HOST`"
                ),
            }
        }
        (None, Some(h)) => {
            super::config::check_name("--host", h)?;
            Ok(h.to_string())
        }
        (None, None) => bail!(
            "a {} job names no site, so the site map cannot place it: say which host builds it with --host HOST",
            spec.kind
        ),
    }
}

/// Publishes one job and waits for the server's confirmation, retrying with the same id until `patience`
/// is spent (a server restarting, a leader moving, a full stream draining).
pub async fn publish(
    js: &jetstream::Context,
    host: &str,
    spec: &JobSpec,
    id: &ulid::Ulid,
    patience: Duration,
) -> Result<Queued> {
    let subject = names::job_subject(host, spec)?;
    let body = format!("{}\n", spec.to_line());
    let deadline = Instant::now() + patience;
    let mut delay = Duration::from_millis(100);
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(names::MSG_ID, id.to_string().as_str());
        let attempt = async {
            js.publish_with_headers(subject.clone(), headers, body.clone().into())
                .await
                .map_err(anyhow::Error::new)?
                .await
                .map_err(anyhow::Error::new)
        };
        let result = attempt.await;
        if let Some(refused) = super::connect::take_violation().filter(|v| v.contains(&subject)) {
            bail!(
                "the NATS server refused job {id} ({refused}): this user may not queue jobs; producers need the producer role (`t8k-engine fleet server-config --producer NAME`)"
            );
        }
        match result {
            Ok(ack) => {
                return Ok(Queued {
                    id: id.to_string(),
                    host: host.to_string(),
                    subject,
                    seq: ack.sequence,
                    duplicate: ack.duplicate,
                });
            }
            Err(e) if Instant::now() + delay < deadline => {
                tracing::warn!(
                    "fleet: publishing job {id} failed ({e:#}); retrying with the same id"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                let full = format!("{e:#}");
                let hint = if full.contains("maximum messages") || full.contains("maximum bytes") {
                    "the fleet's jobs stream is full: a host is not taking its jobs (see `t8k-engine fleet status`)"
                } else {
                    "check that the NATS server runs and that this user may publish jobs"
                };
                return Err(e).context(format!(
                    "job {id} for host `{host}` was not confirmed within {}s; {hint}; publishing again with `--id {id}` cannot run it twice",
                    patience.as_secs()
                ));
            }
        }
    }
}
