//! Owns the outbox: trigger files that producers which can only write files (the TractStack backend) drop
//! into a directory, forwarded to the fleet by this host's bridge. A file is claimed under a fresh job id
//! before anything is published, so that a forward retried after a crash re-uses its ids and is dropped as
//! a duplicate; it never runs or drops local triggers. The outbox is the operator's directory (a link to it
//! is followed); `.forwarding/` and `failed/` inside it are the bridge's own, reached only through
//! `fs::OwnDir`, never through a link.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::report::Report;
use crate::fs::OwnDir;
use crate::queue::Reason;
use crate::queue::ready::{Readiness, WriterProbe};

/// How often the outbox is looked at.
const POLL: Duration = Duration::from_millis(250);

/// An outbox and where its files go while forwarded.
pub struct Outbox {
    /// The directory producers write into.
    pub dir: PathBuf,
    /// JetStream.
    pub js: jetstream::Context,
    /// The bridge's report.
    pub report: Arc<Mutex<Report>>,
    /// Largest trigger file accepted.
    pub max_bytes: u64,
    /// How a producer still writing is told apart.
    pub writer_check: WriterProbe,
}

impl Outbox {
    /// `.forwarding/`, the bridge's own: checked and open.
    fn forwarding(&self) -> Result<OwnDir> {
        OwnDir::open(&self.dir.join(".forwarding"), 1)
    }

    /// `failed/`, the bridge's own: checked and open.
    fn failed(&self) -> Result<OwnDir> {
        OwnDir::open(&self.dir.join("failed"), 1)
    }

    /// Forwards files until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        // `.forwarding/` and `failed/` are checked at each pass: one that is a link is refused loudly and
        // retried, and the rest of the bridge goes on.
        info!(
            "fleet: forwarding trigger files dropped into {}",
            self.dir.display()
        );
        let mut told = None::<String>;
        while !*stop.borrow() {
            match self.pass().await {
                Ok(()) => told = None,
                Err(e) => {
                    let line = format!("{e:#}");
                    if told.as_ref() != Some(&line) {
                        warn!("fleet: outbox: {line}; retrying");
                        told = Some(line);
                    }
                }
            }
            tokio::select! { _ = tokio::time::sleep(POLL) => {}, _ = stop.changed() => {} }
        }
        Ok(())
    }

    /// Finishes claimed files, then claims and forwards new ones in name order.
    async fn pass(&self) -> Result<()> {
        let forwarding = self.forwarding()?;
        let mut claimed: Vec<String> = forwarding
            .entries()?
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .filter(|n| !n.starts_with('.') && n.ends_with(".csv"))
            .collect();
        claimed.sort();
        for name in claimed {
            self.forward(&forwarding, &name).await?;
        }
        for name in sorted(&self.dir)? {
            if !crate::trigger::is_trigger_name(&name) {
                continue;
            }
            let path = self.dir.join(&name);
            match crate::queue::ready::probe(&path, self.max_bytes, self.writer_check) {
                Readiness::Ready(_) | Readiness::Invalid => {}
                // A later file never overtakes one still being written.
                Readiness::Writing | Readiness::Incomplete(_) => return Ok(()),
                Readiness::Gone => continue,
            }
            let claimed = format!("{}-{name}", ulid::Ulid::new());
            let outbox = crate::fs::open_base(&self.dir)?;
            forwarding
                .rename_in(outbox.as_fd(), &name, &claimed)
                .with_context(|| format!("cannot claim {}", path.display()))?;
            forwarding.sync()?;
            crate::fs::sync_dir(&self.dir)?;
            self.forward(&forwarding, &claimed).await?;
        }
        Ok(())
    }

    /// Publishes every job of a claimed file (job ids: the claim's id, then +1 per line), then removes it.
    async fn forward(&self, forwarding: &OwnDir, claimed: &str) -> Result<()> {
        let Some(base) = claimed.get(..26).and_then(super::names::parse_job_id) else {
            return self.set_aside(forwarding, claimed, b"", "not a claimed outbox file");
        };
        let original = claimed.get(27..).unwrap_or(claimed);
        let bytes = crate::queue::opened_trigger(forwarding.open_read(claimed), self.max_bytes)
            .and_then(|f| crate::queue::read_capped(f, self.max_bytes));
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => return self.set_aside(forwarding, claimed, b"", &e.to_string()),
        };
        let specs = match crate::trigger::parse(&bytes) {
            Ok(specs) => specs,
            Err(e) => return self.set_aside(forwarding, claimed, &bytes, &e.to_string()),
        };
        let mut routed = Vec::new();
        for spec in &specs {
            match super::producer::route(&self.js, spec, None).await {
                Ok(host) => routed.push(host),
                Err(e) if format!("{e:#}").contains("site map") || spec.site.is_none() => {
                    let why = format!("line {}: {e:#}", spec.line);
                    return self.set_aside(forwarding, claimed, &bytes, &why);
                }
                Err(e) => return Err(e),
            }
        }
        for (i, (spec, host)) in specs.iter().zip(&routed).enumerate() {
            let id = ulid::Ulid(base.0 + i as u128);
            let q = super::producer::publish(&self.js, host, spec, &id, Duration::from_secs(10))
                .await?;
            info!(
                "fleet: outbox {original} line {}: job {id} for host {host} (stream seq {}{})",
                spec.line,
                q.seq,
                if q.duplicate { ", already queued" } else { "" }
            );
        }
        crate::fault_point!("fleet.forwarded");
        forwarding
            .remove(claimed)
            .with_context(|| format!("cannot remove {}", forwarding.join(claimed).display()))?;
        forwarding.sync()?;
        self.report.lock().unwrap().forwarded += 1;
        Ok(())
    }

    fn set_aside(&self, forwarding: &OwnDir, claimed: &str, bytes: &[u8], why: &str) -> Result<()> {
        let original = claimed.get(27..).unwrap_or(claimed).to_string();
        let aside = crate::queue::set_aside_bytes(&self.failed()?, &original, bytes, |aside| {
            Reason {
                summary: format!(
                    "{original}: not forwarded to the fleet: {why}; nothing was published. Fix failed/{aside} and move it back into {}",
                    self.dir.display()
                ),
                details: format!("content:\n{}", crate::trigger::printable(bytes)),
            }
        })?;
        let _ = forwarding.remove(claimed);
        forwarding.sync()?;
        error!("fleet: outbox {original} set aside as failed/{aside}: {why}");
        Ok(())
    }
}

fn sorted(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && n.ends_with(".csv"))
        .collect();
    names.sort();
    Ok(names)
}
