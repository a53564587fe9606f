//! Owns the bridge's outbound half: every journal record goes to the events stream (de-duplicated by its
//! content), and the host's status (the engine's `status` plus the bridge's report) goes to the status
//! bucket; it reads the engine's state and never changes it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream;
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{error, warn};

use super::journal_tail::Tail;
use super::names;
use super::report::Report;
use crate::config::Config;
use crate::layout::Layout;

/// How often the journal is looked at.
const POLL: Duration = Duration::from_millis(200);
/// Records sent per cursor update.
const BATCH: usize = 256;
/// Entries of each list a status report keeps.
const LIST_CAP: usize = 20;

/// The outbound half of one host's bridge.
pub struct Outbound {
    /// The engine's settings (for its status).
    pub config: Config,
    /// The engine's directories.
    pub layout: Layout,
    /// This host's name.
    pub host: String,
    /// JetStream.
    pub js: jetstream::Context,
    /// The bridge's report.
    pub report: Arc<Mutex<Report>>,
    /// How often the status is reported when nothing happens.
    pub status_every: Duration,
    /// The bridge's own directory (where the events cursor is kept).
    pub dir: Arc<crate::fs::OwnDir>,
    /// What status reports need of the journal, kept between them (a report follows every job start and end).
    pub history: Arc<Mutex<crate::history::Kept>>,
}

impl Outbound {
    /// Sends records and reports until `stop` turns true, then sends what is left once more.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let mut tail = Tail::open(
            crate::history::Journal::open(&self.layout),
            self.dir.clone(),
        );
        let mut next_status = Instant::now();
        let mut told = None::<String>;
        loop {
            let stopping = *stop.borrow();
            match self.send_records(&mut tail).await {
                Ok(jobs_moved) => {
                    told = None;
                    if jobs_moved {
                        // A job started or ended: report soon, but not more than once a second.
                        next_status = next_status.min(Instant::now() + Duration::from_secs(1));
                    }
                }
                Err(e) => {
                    let line = format!("{e:#}");
                    if told.as_ref() != Some(&line) {
                        warn!("fleet: events wait in the journal: {line}");
                        told = Some(line);
                    }
                }
            }
            if Instant::now() >= next_status || stopping {
                if let Err(e) = self.send_status().await {
                    warn!("fleet: cannot report this host's status: {e:#}");
                }
                next_status = Instant::now() + self.status_every;
            }
            if stopping {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Sends the records after the cursor; true when a job started or ended among them.
    async fn send_records(&self, tail: &mut Tail) -> Result<bool> {
        let mut moved = false;
        loop {
            let read = tail.read(BATCH)?;
            if read.lost {
                error!(
                    "fleet: the journal rotated past records not yet sent (the bridge was stopped for long): the events stream misses them; sending from the oldest journal file"
                );
            }
            let Some(last) = read.records.last().map(|r| r.after.clone()) else {
                return Ok(moved);
            };
            // Publish all, then wait for the acknowledgements in order: one round trip per batch.
            let mut acks = Vec::with_capacity(read.records.len());
            for r in &read.records {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    names::MSG_ID,
                    format!("{}.{}", self.host, r.digest).as_str(),
                );
                headers.insert("T8k-Host", self.host.as_str());
                let ack = self
                    .js
                    .publish_with_headers(
                        names::journal_subject(&self.host, &r.event),
                        headers,
                        r.line.clone().into(),
                    )
                    .await
                    .context("cannot publish to the events stream")?;
                acks.push(ack);
                moved |= matches!(r.event.as_str(), "job_started" | "job_finished");
            }
            for ack in acks {
                ack.await
                    .context("the events stream did not confirm a record")?;
            }
            crate::fault_point!("fleet.events_sent");
            self.report.lock().unwrap().events += read.records.len() as u64;
            tail.commit(last)?;
        }
    }

    /// Puts this host's status document into the status bucket.
    async fn send_status(&self) -> Result<()> {
        let (config, layout) = (self.config.clone(), self.layout.clone());
        let history = self.history.clone();
        let engine = tokio::task::spawn_blocking(move || {
            let mut kept = history.lock().unwrap_or_else(|p| p.into_inner());
            kept.catch_up(&layout);
            crate::status::collect_from(&config, &layout, &kept)
        })
        .await
        .context("the status collector stopped")??;
        let mut engine = serde_json::to_value(&engine)?;
        cap_lists(&mut engine);
        let bridge = self.report.lock().unwrap().clone();
        let doc = json!({
            "host": self.host,
            "reported_at": jiff::Timestamp::now().to_string(),
            "engine": engine,
            "bridge": bridge,
        });
        self.js
            .publish(names::status_subject(&self.host), doc.to_string().into())
            .await
            .context("cannot publish the status")?
            .await
            .context("the status bucket did not confirm the report")?;
        Ok(())
    }
}

/// Keeps a report small whatever the queue holds: each long list keeps its first entries and says how many
/// there were.
fn cap_lists(status: &mut Value) {
    let Value::Object(map) = status else { return };
    for key in ["queue", "set_aside", "claimed"] {
        if let Some(Value::Array(items)) = map.get_mut(key) {
            let total = items.len();
            items.truncate(LIST_CAP);
            map.insert(format!("{key}_total"), json!(total));
        }
    }
}
