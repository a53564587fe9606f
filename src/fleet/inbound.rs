//! Owns the bridge's inbound half: pulls this host's jobs one at a time, hands each to the engine as an
//! ordinary trigger file (exactly once per job id), then acknowledges it; a job it cannot accept or that
//! reached its last delivery is set aside like a bad trigger (`queue::set_aside_bytes`) and removed from the
//! stream. It never runs a job, claims a trigger or holds the engine's lock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures_util::StreamExt;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::ledger::{self, Dropped, LastChance, Ledger};
use super::names::{self, JOBS_STREAM};
use super::report::Report;
use crate::fs::OwnDir;
use crate::layout::Layout;
use crate::queue::Reason;

/// How long one pull waits for a job before asking again.
const PULL_WAIT: Duration = Duration::from_secs(5);

/// The inbound half of one host's bridge.
pub struct Inbound {
    /// The engine's directories.
    pub layout: Layout,
    /// This host's name.
    pub host: String,
    /// The bridge's own directory, checked and open.
    pub dir: Arc<OwnDir>,
    /// Ids already handed to the engine.
    pub ledger: Ledger,
    /// The connection.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: jetstream::Context,
    /// What the status report says about the bridge.
    pub report: Arc<Mutex<Report>>,
    /// The site map, once opened.
    pub sites: Option<async_nats::jetstream::kv::Store>,
}

/// A job as it came off the stream.
struct Delivery {
    msg: jetstream::Message,
    seq: u64,
    delivered: i64,
    secs: i64,
    id: Option<ulid::Ulid>,
    raw_id: String,
}

/// What to do with a delivered job.
enum Verdict {
    /// Its trigger is already in the engine's hands: acknowledge only.
    Known,
    /// Hand it to the engine as this trigger.
    Drop(String),
    /// Set it aside with this reason and acknowledge it.
    Reject(String),
}

impl Inbound {
    /// Pulls and hands over jobs until `stop` turns true; a job being handed over is finished first.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        ledger::remove_torn_drops(&self.layout.state);
        let added = self.ledger.reconcile(&self.layout)?;
        if added > 0 {
            warn!(
                "fleet: {added} job(s) were in the engine's hands but not in the ledger (a bridge stopped between a drop and its record); recorded, so they are not handed over again"
            );
        }
        let mut backoff = Backoff::default();
        while !*stop.borrow() {
            if let Err(e) = self.finish_last_chance().await {
                self.failed(&e);
                tokio::select! { _ = backoff.wait() => continue, _ = stop.changed() => break }
            }
            let consumer = match self.consumer().await {
                Ok(c) => c,
                Err(e) => {
                    self.failed(&e);
                    tokio::select! { _ = backoff.wait() => continue, _ = stop.changed() => break }
                }
            };
            let limits = Limits {
                max_deliver: consumer.cached_info().config.max_deliver,
                ack_wait: consumer.cached_info().config.ack_wait,
            };
            backoff = Backoff::default();
            self.report.lock().unwrap().pulling = true;
            loop {
                let batch = tokio::select! {
                    b = consumer.batch().max_messages(1).expires(PULL_WAIT).messages() => b,
                    _ = stop.changed() => break,
                };
                let mut batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        self.failed(&anyhow::anyhow!("cannot ask for the next job: {e}"));
                        break;
                    }
                };
                let mut broken = false;
                while let Some(msg) = batch.next().await {
                    match msg {
                        Ok(msg) => self.handle(msg, limits, &stop).await?,
                        Err(e) => {
                            self.failed(&anyhow::anyhow!("pulling a job failed: {e}"));
                            broken = true;
                        }
                    }
                }
                if broken || *stop.borrow() {
                    break;
                }
            }
            self.report.lock().unwrap().pulling = false;
            if !*stop.borrow() {
                tokio::select! { _ = backoff.wait() => {}, _ = stop.changed() => {} }
            }
        }
        Ok(())
    }

    async fn consumer(&self) -> Result<PullConsumer> {
        self.js
            .get_consumer_from_stream(&self.host, JOBS_STREAM)
            .await
            .with_context(|| {
                format!(
                    "cannot reach this host's consumer `{}` on stream {JOBS_STREAM}: is the host added (`t8k-engine fleet init --host {}` with admin credentials) and may user `{}` read it?",
                    self.host, self.host, self.host
                )
            })
    }

    fn failed(&self, e: &anyhow::Error) {
        let line = format!("{e:#}");
        let mut report = self.report.lock().unwrap();
        if report.last_error.as_ref().map(|(_, l)| l) != Some(&line) {
            error!("fleet: {line}");
        }
        report.last_error = Some((jiff::Timestamp::now().to_string(), line));
    }

    /// Handles one delivered job; returns an error only for what must stop the bridge (its ledger).
    async fn handle(
        &mut self,
        msg: jetstream::Message,
        limits: Limits,
        stop: &watch::Receiver<bool>,
    ) -> Result<()> {
        let Some(d) = delivery(msg) else {
            return Ok(());
        };
        let last = limits.max_deliver > 0 && d.delivered >= limits.max_deliver;
        let verdict = self.judge(&d).await;
        let name = match &verdict {
            Verdict::Drop(name) => name.clone(),
            _ => self.aside_name(&d),
        };
        if last && !matches!(verdict, Verdict::Known) {
            // If the bridge dies once more on this job the server will not deliver it again: keep it here.
            self.keep_last_chance(&d, &name)?;
        }
        crate::fault_point!("fleet.received");
        match verdict {
            Verdict::Known => {
                info!(
                    "fleet: job {} (stream seq {}, delivery {}) is already in the engine's hands; acknowledging it again",
                    d.raw_id, d.seq, d.delivered
                );
                self.report.lock().unwrap().redeliveries += 1;
            }
            Verdict::Drop(name) => self.hand_over(&d, name, limits, stop).await?,
            Verdict::Reject(why) => {
                self.set_aside_until_done(&d, &name, &why, limits.ack_wait, stop)
                    .await?;
            }
        }
        self.acknowledge(&d.msg, d.seq).await;
        crate::fault_point!("fleet.acked");
        if last {
            LastChance::clear(&self.dir)?;
            self.report.lock().unwrap().last_chances.push(d.seq);
        }
        Ok(())
    }

    /// Keeps a copy of a job at its last delivery, from which the next bridge sets it aside.
    fn keep_last_chance(&self, d: &Delivery, name: &str) -> Result<()> {
        LastChance {
            id: d.raw_id.clone(),
            seq: d.seq,
            name: name.to_string(),
            subject: d.msg.subject.to_string(),
            body: String::from_utf8_lossy(&d.msg.payload).into_owned(),
            delivered: d.delivered,
            reply: d
                .msg
                .reply
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_default(),
        }
        .save(&self.dir)
    }

    /// Writes a job into the inbox as trigger `name` and records it in the ledger and the report; a job
    /// whose name something else holds in the inbox is set aside instead.
    async fn hand_over(
        &mut self,
        d: &Delivery,
        name: String,
        limits: Limits,
        stop: &watch::Receiver<bool>,
    ) -> Result<()> {
        let dropped = self
            .drop_until_done(d, &name, limits.ack_wait, stop)
            .await?;
        if let Dropped::Taken(what) = dropped {
            let why = format!(
                "the inbox already holds {what} named {name}, which is not this job's trigger: nothing was written (someone who can write the inbox put it there; look at it before you retry)"
            );
            return self
                .set_aside_until_done(d, &name, &why, limits.ack_wait, stop)
                .await;
        }
        if let Some(id) = d.id {
            self.ledger.record(id, &format!("{} {name}", d.seq))?;
        }
        crate::fault_point!("fleet.dropped");
        info!(
            "fleet: job {} (stream seq {}, delivery {}) -> {name}",
            d.raw_id, d.seq, d.delivered
        );
        let mut report = self.report.lock().unwrap();
        report.jobs += 1;
        report.last_job = Some(super::report::LastJob {
            id: d.raw_id.clone(),
            trigger: name,
            at: jiff::Timestamp::now().to_string(),
        });
        Ok(())
    }

    /// Looks at a job before anything is written.
    async fn judge(&mut self, d: &Delivery) -> Verdict {
        let Some(id) = d.id else {
            return Verdict::Reject(format!(
                "its {} header `{}` is not a job id (a ULID); producers publish with `t8k-engine trigger --fleet`",
                names::MSG_ID,
                d.raw_id.escape_debug()
            ));
        };
        if self.ledger.contains(&id) {
            return Verdict::Known;
        }
        let spec = match crate::trigger::parse_line(&String::from_utf8_lossy(&d.msg.payload), 1) {
            Ok(spec) if !d.msg.payload.contains(&b'\r') => spec,
            Ok(_) => return Verdict::Reject("its body has a carriage return".into()),
            Err(e) => return Verdict::Reject(format!("its body is not one trigger line: {e}")),
        };
        let routed = names::job_subject(&self.host, &spec).ok();
        if routed.as_deref() != Some(d.msg.subject.as_str()) {
            return Verdict::Reject(format!(
                "its subject `{}` does not match its body `{}` (expected `{}`)",
                d.msg.subject,
                spec.to_line(),
                routed.unwrap_or_default()
            ));
        }
        if let Some(site) = &spec.site {
            if self.sites.is_none() {
                self.sites = super::sites::open(&self.js).await.ok();
            }
            let owner = match &self.sites {
                Some(store) => super::sites::lookup_in(store, site).await,
                None => super::sites::lookup(&self.js, site).await,
            };
            match owner {
                Ok(Some(owner)) if owner != self.host => {
                    return Verdict::Reject(format!(
                        "site `{site}` is now served by host `{owner}` in the site map, not by `{}`: the site moved after the job was queued; if it should still build here, `t8k-engine retry` it",
                        self.host
                    ));
                }
                Ok(_) => {}
                Err(e) => warn!(
                    "fleet: cannot check the site map for `{site}` ({e:#}); handing job {} over as addressed",
                    d.raw_id
                ),
            }
        }
        Verdict::Drop(names::trigger_name(d.secs, d.seq, &id))
    }

    fn aside_name(&self, d: &Delivery) -> String {
        match d.id {
            Some(id) => names::trigger_name(d.secs, d.seq, &id),
            None => format!("build-{}-{:012}-invalid.csv", d.secs.max(0), d.seq),
        }
    }

    /// Writes the trigger, retrying a failing disk for as long as it fails: the job is kept (in-progress
    /// acknowledgements) rather than redelivered, since no other job could be written either. `Taken` when
    /// something else holds the trigger's name in the inbox (nothing was written).
    async fn drop_until_done(
        &self,
        d: &Delivery,
        name: &str,
        ack_wait: Duration,
        stop: &watch::Receiver<bool>,
    ) -> Result<Dropped> {
        let body = canonical(&d.msg.payload);
        let mut backoff = Backoff::default();
        loop {
            match ledger::drop_trigger(&self.layout.state, name, &body) {
                Ok(Dropped::AlreadyThere) => {
                    info!("fleet: {name} is already in the inbox");
                    return Ok(Dropped::AlreadyThere);
                }
                Ok(done) => return Ok(done),
                Err(e) => {
                    let e = e.context(format!(
                        "cannot hand job {} to the engine; retrying (fix the inbox, e.g. free disk space)",
                        d.raw_id
                    ));
                    hold(d, &e, &mut backoff, ack_wait, stop, self).await?;
                }
            }
        }
    }

    /// Sets a delivered job aside (see [`Inbound::reject`]), retrying the write for as long as it fails (a
    /// full disk, a `failed/` that is a link until the operator moves it aside), holding the job meanwhile.
    async fn set_aside_until_done(
        &mut self,
        d: &Delivery,
        name: &str,
        why: &str,
        ack_wait: Duration,
        stop: &watch::Receiver<bool>,
    ) -> Result<()> {
        let aside = Aside {
            raw_id: &d.raw_id,
            seq: d.seq,
            id: d.id,
            name,
            body: &d.msg.payload,
            subject: d.msg.subject.as_str(),
            why,
        };
        let mut backoff = Backoff::default();
        let named = loop {
            match self.write_aside(&aside) {
                Ok(named) => break named,
                Err(e) => {
                    let e = e.context(format!("cannot set job {} aside; retrying", d.raw_id));
                    hold(d, &e, &mut backoff, ack_wait, stop, self).await?;
                }
            }
        };
        self.record_aside(&aside, &named, "rejected").await
    }

    /// Acknowledges a job and waits for the server to confirm; a job whose acknowledgement is lost comes
    /// back and is recognised by the ledger.
    async fn acknowledge(&self, msg: &jetstream::Message, seq: u64) {
        if let Err(e) = msg.double_ack().await {
            warn!(
                "fleet: the acknowledgement of stream seq {seq} was not confirmed ({e}); the job will come back and be recognised"
            );
        }
    }

    /// Sets a job aside in `failed/`, records it, tells the fleet; the caller acknowledges it.
    async fn reject(&mut self, aside: &Aside<'_>, kind: &str) -> Result<()> {
        let named = self.write_aside(aside)?;
        self.record_aside(aside, &named, kind).await
    }

    /// Writes a job into `failed/` with its reason, through the checked directory (a `failed/` that is a
    /// link or another user's is refused); returns the name it got there.
    fn write_aside(&self, a: &Aside<'_>) -> Result<String> {
        let details = format!(
            "subject: {}\nbody:\n{}",
            a.subject,
            crate::trigger::printable(a.body)
        );
        let failed = crate::queue::failed_dir(&self.layout)?;
        crate::queue::set_aside_bytes(&failed, a.name, a.body, |named| Reason {
            summary: format!(
                "{}: fleet job {} (stream seq {}) was set aside: {}; no job ran. Fix the cause, then `t8k-engine retry {named}` runs it here, or publish it again",
                a.name, a.raw_id, a.seq, a.why
            ),
            details: details.clone(),
        })
    }

    /// Records a job set aside as `named` in the ledger (an error here stops the bridge) and the report, and
    /// tells the events stream (`kind`: rejected or poison).
    async fn record_aside(&mut self, a: &Aside<'_>, named: &str, kind: &str) -> Result<()> {
        let (raw_id, seq, why) = (a.raw_id, a.seq, a.why);
        if let Some(id) = a.id {
            self.ledger
                .record(id, &format!("{seq} set aside as {named}"))?;
        }
        error!("fleet: set aside job {raw_id} (stream seq {seq}) as failed/{named}: {why}");
        self.report.lock().unwrap().set_aside += 1;
        let event = serde_json::json!({
            "event": kind, "host": self.host, "job_id": raw_id, "stream_seq": seq,
            "subject": a.subject, "set_aside_as": named, "reason": why,
            "at": jiff::Timestamp::now().to_string(),
        });
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            names::MSG_ID,
            format!("{}.{kind}.{seq}", self.host).as_str(),
        );
        let published = self
            .js
            .publish_with_headers(
                names::bridge_subject(&self.host, kind),
                headers,
                event.to_string().into(),
            )
            .await;
        if let Err(e) = match published {
            Ok(ack) => ack.await.map(|_| ()).map_err(anyhow::Error::new),
            Err(e) => Err(anyhow::Error::new(e)),
        } {
            warn!("fleet: cannot report the set-aside job {raw_id} to the events stream: {e}");
        }
        Ok(())
    }

    /// Finishes a job a bridge left on its final delivery: it was handed over (then only acknowledged) or
    /// the bridge died on it every time, and it is set aside.
    async fn finish_last_chance(&mut self) -> Result<()> {
        let Some(lc) = LastChance::load(&self.dir)? else {
            return Ok(());
        };
        let id = names::parse_job_id(&lc.id);
        if !id.is_some_and(|id| self.ledger.contains(&id)) {
            let why = format!(
                "the bridge stopped (crashed, was killed or hung) on each of its {} deliveries, the server's limit (max_deliver)",
                lc.delivered
            );
            let aside = Aside {
                raw_id: &lc.id,
                seq: lc.seq,
                id,
                name: &lc.name,
                body: lc.body.as_bytes(),
                subject: &lc.subject,
                why: &why,
            };
            self.reject(&aside, "poison").await?;
        }
        if !lc.reply.is_empty() {
            // A late acknowledgement still removes the job from the work queue.
            self.client
                .request(lc.reply.clone(), "+ACK".into())
                .await
                .context("cannot remove the set-aside job from the stream; retrying")?;
        }
        LastChance::clear(&self.dir)?;
        self.report.lock().unwrap().last_chances.push(lc.seq);
        info!(
            "fleet: job {} (stream seq {}) from the last-chance record is finished and removed from the stream",
            lc.id, lc.seq
        );
        Ok(())
    }
}

fn delivery(msg: jetstream::Message) -> Option<Delivery> {
    let (seq, delivered, secs) = match msg.info() {
        Ok(info) => (
            info.stream_sequence,
            info.delivered,
            info.published.unix_timestamp(),
        ),
        Err(e) => {
            error!(
                "fleet: a message on {} has no JetStream metadata ({e}); ignored",
                msg.subject
            );
            return None;
        }
    };
    let raw_id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(names::MSG_ID))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    Some(Delivery {
        id: names::parse_job_id(&raw_id),
        raw_id,
        msg,
        seq,
        delivered,
        secs,
    })
}

/// The trigger file's bytes: the line with exactly one final newline.
fn canonical(payload: &[u8]) -> Vec<u8> {
    let mut body = payload.strip_suffix(b"\n").unwrap_or(payload).to_vec();
    body.push(b'\n');
    body
}

/// A job being set aside: what identifies it, what it was, and why.
struct Aside<'a> {
    raw_id: &'a str,
    seq: u64,
    id: Option<ulid::Ulid>,
    /// The name it gets in `failed/` (or the first free one after it).
    name: &'a str,
    body: &'a [u8],
    subject: &'a str,
    why: &'a str,
}

/// What the host's consumer allows a delivered job.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_deliver: i64,
    ack_wait: Duration,
}

/// After a failed attempt at a delivered job: reports `e`, then waits out the back-off telling the server,
/// well within each ack wait, that the job is still being worked on, so it is neither redelivered nor
/// counted. An error when the bridge is stopping: the job will be delivered again.
async fn hold(
    d: &Delivery,
    e: &anyhow::Error,
    backoff: &mut Backoff,
    ack_wait: Duration,
    stop: &watch::Receiver<bool>,
    inbound: &Inbound,
) -> Result<()> {
    inbound.failed(e);
    if *stop.borrow() {
        anyhow::bail!(
            "stopping with job {} not handed over; it will be delivered again",
            d.raw_id
        );
    }
    let until = tokio::time::Instant::now() + backoff.next_delay();
    let step = (ack_wait / 3).max(Duration::from_millis(100));
    while tokio::time::Instant::now() < until {
        let _ = d.msg.ack_with(jetstream::AckKind::Progress).await;
        tokio::time::sleep(step.min(until - tokio::time::Instant::now())).await;
    }
    Ok(())
}

/// Waits 0.5 s, then twice as long each time, up to 30 s.
#[derive(Default)]
pub struct Backoff(u32);

impl Backoff {
    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ms = (500u64 << self.0.min(6)).min(30_000);
        self.0 += 1;
        Duration::from_millis(ms)
    }

    /// Sleeps for the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}
