//! Owns the server-side objects of a fleet: the jobs and events streams, the site-map and status buckets and
//! each host's consumer, created idempotently with admin credentials; it never reads or writes jobs.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer, stream};

use super::names::{
    EVENTS_STREAM, EVENTS_SUBJECTS, JOBS_STREAM, JOBS_SUBJECTS, SITES_BUCKET, STATUS_BUCKET,
    host_filter,
};

/// The knobs of `fleet init`.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Hosts whose consumers are created.
    pub hosts: Vec<String>,
    /// How long a delivered job may stay unacknowledged before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries of one job before it is given up (then set aside by its host's bridge).
    pub max_deliver: i64,
    /// How long a repeated `Nats-Msg-Id` is recognised by the server.
    pub duplicate_window: Duration,
    /// Jobs the stream holds at most; publishing more is refused, never silently dropped.
    pub max_jobs: i64,
    /// How long events are kept.
    pub events_max_age: Duration,
    /// Bytes of events kept at most (the oldest go first).
    pub events_max_bytes: i64,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            hosts: Vec::new(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            duplicate_window: Duration::from_secs(600),
            max_jobs: 100_000,
            events_max_age: Duration::from_secs(30 * 86_400),
            events_max_bytes: 1 << 30,
        }
    }
}

/// The jobs stream: a work queue (a job leaves it when its host acknowledges it), bounded with back-pressure.
pub fn jobs_stream(plan: &Plan) -> stream::Config {
    stream::Config {
        name: JOBS_STREAM.into(),
        subjects: vec![JOBS_SUBJECTS.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        max_messages: plan.max_jobs,
        max_bytes: 256 << 20,
        max_message_size: 8 << 10,
        duplicate_window: plan.duplicate_window,
        description: Some("t8k-engine jobs, one filtered consumer per host".into()),
        ..Default::default()
    }
}

/// The events stream: every host's journal records and bridge events, kept by age and size.
pub fn events_stream(plan: &Plan) -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.into(),
        subjects: vec![EVENTS_SUBJECTS.into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_age: plan.events_max_age,
        max_bytes: plan.events_max_bytes,
        max_message_size: 1 << 20,
        duplicate_window: plan.duplicate_window,
        allow_direct: true,
        description: Some("t8k-engine journal records and bridge events of every host".into()),
        ..Default::default()
    }
}

/// A KV bucket's stream, made directly: the client's `create_key_value` asks for account fields that
/// nats-server 2.9 does not send, and fails there.
pub fn bucket_stream(bucket: &str, history: i64, description: &str) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        max_messages_per_subject: history,
        max_message_size: 256 << 10,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        duplicate_window: Duration::from_secs(120),
        description: Some(description.into()),
        ..Default::default()
    }
}

/// A host's consumer: durable, filtered on its own subjects, one job in flight so that a redelivered job
/// comes before anything newer (with more, it came after newer ones).
pub fn host_consumer(host: &str, plan: &Plan) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(host.to_string()),
        description: Some(format!("t8k-engine bridge of host {host}")),
        filter_subject: host_filter(host),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: plan.ack_wait,
        max_deliver: plan.max_deliver,
        max_ack_pending: 1,
        ..Default::default()
    }
}

/// Creates or updates every stream, bucket and listed host consumer; returns one line per object.
pub async fn init(js: &jetstream::Context, plan: &Plan) -> Result<Vec<String>> {
    if plan.max_deliver < 2 {
        bail!(
            "--max-deliver must be at least 2: one delivery lost to a crash must not set a job aside"
        );
    }
    let mut done = Vec::new();
    for config in [
        jobs_stream(plan),
        events_stream(plan),
        bucket_stream(SITES_BUCKET, 5, "t8k-engine site map: site -> host"),
        bucket_stream(STATUS_BUCKET, 1, "t8k-engine host status reports"),
    ] {
        done.push(ensure_stream(js, config).await?);
    }
    let jobs = js.get_stream(JOBS_STREAM).await?;
    for host in &plan.hosts {
        super::config::check_name("host", host)?;
        jobs.create_consumer(host_consumer(host, plan))
            .await
            .with_context(|| format!("cannot create or update the consumer of host `{host}`"))?;
        done.push(format!(
            "consumer {host}: filter {}, ack wait {}s, max deliver {}, one job in flight",
            host_filter(host),
            plan.ack_wait.as_secs(),
            plan.max_deliver
        ));
    }
    Ok(done)
}

async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<String> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(_) => {
            js.update_stream(&config)
                .await
                .with_context(|| format!("cannot update stream {name}"))?;
            Ok(format!("stream {name}: updated"))
        }
        Err(e) if not_found(&e) => {
            js.create_stream(config)
                .await
                .with_context(|| format!("cannot create stream {name}"))?;
            Ok(format!("stream {name}: created"))
        }
        Err(e) => Err(e).with_context(|| format!("cannot look up stream {name}")),
    }
}

/// Whether `host` has a consumer, i.e. is part of the fleet.
pub async fn host_exists(js: &jetstream::Context, host: &str) -> Result<bool> {
    let stream = js
        .get_stream_no_info(JOBS_STREAM)
        .await
        .context("cannot reach the jobs stream: run `t8k-engine fleet init` first")?;
    match stream.consumer_info(host).await {
        Ok(_) => Ok(true),
        Err(e) if not_found(&e) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot look up host `{host}`")),
    }
}

/// Whether a JetStream error says the stream or consumer does not exist (codes 10059 and 10014).
pub fn not_found(e: &dyn std::fmt::Display) -> bool {
    e.to_string().contains("not found")
}
