//! Owns the fleet-wide view: every host's last status report with its age and its jobs waiting in the
//! stream (`fleet status`, and the document the web page shows), and the jobs of every host read back from
//! the events stream (`fleet history`); it only reads.

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

use super::names::{EVENTS_STREAM, JOBS_STREAM, STATUS_BUCKET};
use crate::history::{Event, JobView};

/// A report older than this is flagged stale (bridges report every 15 s by default).
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// One host as the fleet sees it.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    /// Its name.
    pub host: String,
    /// Seconds since its last report reached the server; None when it never reported.
    pub report_age_s: Option<u64>,
    /// The report is older than `STALE_AFTER`, or missing.
    pub stale: bool,
    /// Its last report: `engine` (as `t8k-engine status --json`) and `bridge`.
    pub report: Option<Value>,
    /// Jobs waiting for it in the stream (not yet handed over), when this user may see its consumer.
    pub waiting_in_stream: Option<u64>,
    /// A job handed out and not yet acknowledged.
    pub in_flight: Option<u64>,
}

/// Every host that reported or has a consumer, sorted by name.
pub async fn hosts(js: &jetstream::Context) -> Result<Vec<HostView>> {
    let store = js.get_key_value(STATUS_BUCKET).await.with_context(|| {
        format!("cannot open the status bucket {STATUS_BUCKET}: has `t8k-engine fleet init` run, and may this user read it?")
    })?;
    let mut names: Vec<String> = Vec::new();
    let prefix = format!("$KV.{STATUS_BUCKET}.");
    let stream = js.get_stream_no_info(format!("KV_{STATUS_BUCKET}")).await?;
    let mut subjects = stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .context("cannot list the hosts' reports")?;
    while let Some(s) = subjects.next().await {
        let (subject, _) = s.context("cannot list the hosts' reports")?;
        if let Some(host) = subject.strip_prefix(&prefix) {
            names.push(host.to_string());
        }
    }
    let jobs = js.get_stream_no_info(JOBS_STREAM).await?;
    let mut consumers = jobs.consumer_names();
    while let Some(Ok(name)) = consumers.next().await {
        names.push(name);
    }
    names.sort();
    names.dedup();
    let now = jiff::Timestamp::now().as_second();
    let mut views = Vec::new();
    for host in names {
        let entry = store.entry(host.clone()).await.ok().flatten();
        let (report, report_age_s) = match entry {
            Some(e) if e.operation == jetstream::kv::Operation::Put => (
                serde_json::from_slice(&e.value).ok(),
                Some((now - e.created.unix_timestamp()).max(0) as u64),
            ),
            _ => (None, None),
        };
        let info = jobs.consumer_info(&host).await.ok();
        views.push(HostView {
            stale: report_age_s.is_none_or(|age| age > STALE_AFTER.as_secs()),
            waiting_in_stream: info.as_ref().map(|i| i.num_pending),
            in_flight: info.as_ref().map(|i| i.num_ack_pending as u64),
            host,
            report,
            report_age_s,
        });
    }
    Ok(views)
}

/// The fleet status as one JSON document (what `fleet status --json` prints and the web page shows).
pub fn status_document(config: &crate::config::Config) -> Result<Value> {
    let fleet = super::config::FleetConfig::of(config)?;
    super::connect::runtime()?.block_on(async {
        let client = super::connect::connect(&fleet, false).await?;
        let js = jetstream::new(client);
        let hosts = hosts(&js).await?;
        Ok(serde_json::json!({
            "generated_at": jiff::Timestamp::now().to_string(),
            "hosts": hosts,
        }))
    })
}

/// Renders hosts for a terminal.
pub fn render(hosts: &[HostView]) -> String {
    let mut out = String::new();
    if hosts.is_empty() {
        out.push_str("no host has reported yet and no host consumer exists: `t8k-engine fleet init --host NAME`\n");
    }
    for h in hosts {
        render_host(&mut out, h);
    }
    out
}

/// One host: how old its report is, whether its engine and bridge are up, then what its engine runs,
/// holds and last failed, and what troubles its bridge.
fn render_host(out: &mut String, h: &HostView) {
    use std::fmt::Write;
    let age = match h.report_age_s {
        Some(s) => format!("reported {s}s ago{}", if h.stale { " (STALE)" } else { "" }),
        None => "never reported (is its bridge running?)".into(),
    };
    let part = |name: &str| {
        h.report
            .as_ref()
            .map(|r| r[name].clone())
            .unwrap_or(Value::Null)
    };
    let (engine, bridge) = (&part("engine"), &part("bridge"));
    let up = match engine["engine"]["pid"].as_u64() {
        Some(pid) => format!("engine up (pid {pid})"),
        None if engine.is_null() => "engine unknown".into(),
        None => "ENGINE DOWN".into(),
    };
    let _ = writeln!(
        out,
        "{}: {age}; {up}; bridge {}, {} job(s) handed over",
        h.host,
        if bridge["pulling"].as_bool() == Some(true) {
            "pulling"
        } else {
            "NOT PULLING"
        },
        bridge["jobs"].as_u64().unwrap_or(0)
    );
    render_engine(out, engine, h.waiting_in_stream);
    render_bridge(out, bridge);
}

/// A host's engine: the running job and step, the queue, what it set aside and each target's last failure.
fn render_engine(out: &mut String, engine: &Value, waiting_in_stream: Option<u64>) {
    use std::fmt::Write;
    if let Some(run) = engine["running"].as_object() {
        let step = run
            .get("step")
            .and_then(|s| s[0].as_str())
            .map(|s| format!(", step `{s}`"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  running: job {} {} {} for {}s{step}",
            run["job_id"].as_str().unwrap_or("?"),
            run["target"].as_str().unwrap_or("?"),
            run["command"].as_str().unwrap_or("?"),
            run["elapsed_s"].as_u64().unwrap_or(0)
        );
    }
    let queued = engine["queue_total"].as_u64().unwrap_or(0);
    let waiting = waiting_in_stream.map_or("?".into(), |n| n.to_string());
    let _ = writeln!(
        out,
        "  queue: {queued} in the inbox, {waiting} waiting in the fleet stream"
    );
    if let Some(aside) = engine["set_aside"].as_array().filter(|a| !a.is_empty()) {
        let _ = writeln!(
            out,
            "  set aside: {} (newest: {})",
            engine["set_aside_total"]
                .as_u64()
                .unwrap_or(aside.len() as u64),
            aside
                .last()
                .and_then(|a| a["reason"].as_str())
                .unwrap_or("")
        );
    }
    for t in engine["targets"].as_array().into_iter().flatten() {
        if let Some(f) = t["last_failure"].as_array() {
            let _ = writeln!(
                out,
                "  last failure of {}: {} {}",
                t["target"].as_str().unwrap_or("?"),
                f.get(1).and_then(Value::as_str).unwrap_or(""),
                f.get(2).and_then(Value::as_str).unwrap_or("")
            );
        }
    }
}

/// A host's bridge: its last error and the jobs stuck in the stream.
fn render_bridge(out: &mut String, bridge: &Value) {
    use std::fmt::Write;
    if let Some(e) = bridge["last_error"].as_array() {
        let _ = writeln!(
            out,
            "  bridge's last error ({}): {}",
            e.first().and_then(Value::as_str).unwrap_or(""),
            e.get(1).and_then(Value::as_str).unwrap_or("")
        );
    }
    if let Some(stuck) = bridge["stuck"].as_array().filter(|s| !s.is_empty()) {
        let _ = writeln!(
            out,
            "  STUCK in the stream after max deliveries: seq {stuck:?}"
        );
    }
}

/// One host's job as the events stream tells it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetJob {
    /// The host it ran on.
    pub host: String,
    /// The job.
    #[serde(flatten)]
    pub job: JobView,
}

/// Journal records of the events stream published since `since` ago, per host, oldest first.
pub async fn records(
    js: &jetstream::Context,
    host: Option<&str>,
    since: Duration,
) -> Result<Vec<(String, String)>> {
    let stream = js
        .get_stream_no_info(EVENTS_STREAM)
        .await
        .context("cannot reach the events stream")?;
    let start = time_ago(since);
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("t8k.events.{}.journal.>", host.unwrap_or("*")),
            deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await
        .context("cannot read the events stream (does this user have the viewer role?)")?;
    let mut left = consumer.info().await?.num_pending;
    let mut out = Vec::new();
    if left == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await?;
    while let Some(msg) = messages.next().await {
        let msg = msg.context("reading the events stream failed")?;
        let host = msg.subject.split('.').nth(2).unwrap_or("?").to_string();
        out.push((host, String::from_utf8_lossy(&msg.payload).into_owned()));
        left = msg.info().map(|i| i.pending).unwrap_or(0);
        if left == 0 {
            break;
        }
    }
    Ok(out)
}

fn time_ago(since: Duration) -> async_nats::datetime::DateTime {
    let nanos = (jiff::Timestamp::now().as_second() - since.as_secs() as i64).max(0) as i128
        * 1_000_000_000;
    async_nats::datetime::from_nanos(nanos).unwrap_or_else(|_| async_nats::datetime::now())
}

/// Every host's jobs from its records, newest first.
pub fn jobs(records: &[(String, String)]) -> Vec<FleetJob> {
    let mut by_host: std::collections::BTreeMap<&str, Vec<Event>> = Default::default();
    for (host, line) in records {
        if let Ok(event) = serde_json::from_str::<Event>(line) {
            by_host.entry(host).or_default().push(event);
        }
    }
    let mut all: Vec<FleetJob> = by_host
        .into_iter()
        .flat_map(|(host, events)| {
            crate::history::jobs(&events, true)
                .0
                .into_iter()
                .map(|job| FleetJob {
                    host: host.to_string(),
                    job,
                })
        })
        .collect();
    all.sort_by(|a, b| b.job.started_at.cmp(&a.job.started_at));
    all
}
