//! Owns following one fleet job to its end from the events stream (`trigger --fleet --wait`): its trigger on
//! its host (found by the job id in the trigger's name), a newer trigger that superseded it, its job's start,
//! steps and end, and a set-aside by the host's engine or by its bridge. It only reads the stream.

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

use super::names::{self, EVENTS_STREAM};
use crate::history::{Event, JobResult};

/// How far before its id's time a job's records are looked for: the id is the producer's clock, the stream's
/// times are the server's.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// A job being followed on its host.
pub struct Follower {
    messages: consumer::pull::Ordered,
    host: String,
    id: ulid::Ulid,
    target: String,
    /// The trigger that runs the job, once known (the newer one after a supersede).
    trigger: Option<String>,
    /// The engine's job id of the current run, once started.
    running: Option<String>,
}

/// How the followed job ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Its job ended with this result.
    Ran(JobResult),
    /// It was set aside without a result (by the host's engine or bridge).
    SetAside,
}

impl Follower {
    /// Opens `host`'s events from a little before job `id`'s time. Called before the job is published, so
    /// that nothing of it is missed, and so that a user who may not read the events stream is told before
    /// anything is queued.
    pub async fn open(
        js: &jetstream::Context,
        host: &str,
        id: ulid::Ulid,
        target: String,
    ) -> Result<Follower> {
        let refused = || {
            format!(
                "--wait reads host {host}'s records from the events stream, which this user may not; nothing was queued. Queue it without --wait and follow it with `t8k-engine fleet history --host {host}` as the viewer, or use a user with the viewer role as well (one name given as both --producer and --viewer when `t8k-engine fleet server-config` wrote the server's configuration)"
            )
        };
        let stream = js
            .get_stream_no_info(EVENTS_STREAM)
            .await
            .map_err(anyhow::Error::new)
            .map_err(super::connect::with_violation)
            .with_context(refused)?;
        let from_ms = (id.timestamp_ms() as i128 - CLOCK_SKEW.as_millis() as i128).max(0);
        let start = async_nats::datetime::from_nanos(from_ms * 1_000_000)
            .unwrap_or_else(|_| async_nats::datetime::now());
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("t8k.events.{host}.>"),
                deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: start },
                ..Default::default()
            })
            .await
            .map_err(anyhow::Error::new)
            .map_err(super::connect::with_violation)
            .with_context(refused)?;
        Ok(Follower {
            messages: consumer
                .messages()
                .await
                .context("cannot read the events stream")?,
            host: host.to_string(),
            id,
            target,
            trigger: None,
            running: None,
        })
    }

    /// Reads the host's records until the job ended, printing its progress.
    pub async fn follow(mut self) -> Result<End> {
        println!("waiting for host {} to run job {}", self.host, self.id);
        while let Some(msg) = self.messages.next().await {
            let msg = msg.context("reading the events stream failed")?;
            let bridge = msg.subject.split('.').nth(3) == Some("bridge");
            let end = if bridge {
                self.bridge_record(&msg.payload)
            } else {
                match serde_json::from_slice::<Event>(&msg.payload) {
                    Ok(event) => self.journal_record(event),
                    // A record of a newer engine's kind: not one this follower needs.
                    Err(_) => None,
                }
            };
            if let Some(end) = end {
                return Ok(end);
            }
        }
        anyhow::bail!(
            "the events stream ended before job {} did: see `t8k-engine fleet history`",
            self.id
        )
    }

    /// Whether a trigger is the one running the job.
    fn ours(&self, trigger: &str) -> bool {
        self.trigger.as_deref() == Some(trigger) || names::job_id_of(trigger) == Some(self.id)
    }

    fn journal_record(&mut self, event: Event) -> Option<End> {
        match event {
            Event::JobStarted {
                job_id,
                trigger,
                target,
                command,
                ..
            } if target == self.target && self.ours(&trigger) => {
                println!("job {job_id} started on {}: {target} {command}", self.host);
                self.trigger = Some(trigger);
                self.running = Some(job_id);
            }
            Event::StepStarted { job_id, name, .. } if self.running.as_ref() == Some(&job_id) => {
                println!("  step {name}");
            }
            Event::JobFinished {
                job_id,
                result,
                reason,
                duration_ms,
                ..
            } if self.running.as_ref() == Some(&job_id) => {
                println!(
                    "job {job_id} {result} in {:.1}s",
                    duration_ms as f64 / 1000.0
                );
                if let Some(reason) = reason.filter(|_| result != JobResult::Succeeded) {
                    println!("  {reason}");
                }
                if result == JobResult::Interrupted {
                    // Its trigger stays claimed and runs again when the host's engine is back.
                    println!(
                        "  the engine of host {} stopped; waiting for the job to run again",
                        self.host
                    );
                    self.running = None;
                    return None;
                }
                return Some(End::Ran(result));
            }
            Event::Superseded { trigger, by, .. } if self.ours(&trigger) => {
                println!(
                    "{trigger} was superseded by {by} on host {}: following it",
                    self.host
                );
                self.trigger = Some(by);
            }
            Event::SetAside {
                trigger,
                set_aside_as,
                reason,
                ..
            } if self.running.is_none() && self.ours(&trigger) => {
                println!(
                    "{trigger} was set aside on host {} as failed/{set_aside_as}: {reason}",
                    self.host
                );
                return Some(End::SetAside);
            }
            _ => {}
        }
        None
    }

    /// A job the bridge set aside (`rejected`, `poison`) before the engine had it.
    fn bridge_record(&self, payload: &[u8]) -> Option<End> {
        let record: serde_json::Value = serde_json::from_slice(payload).ok()?;
        if record["job_id"].as_str() != Some(self.id.to_string().as_str()) {
            return None;
        }
        println!(
            "job {} was set aside by the bridge of host {} as failed/{}: {}",
            self.id,
            self.host,
            record["set_aside_as"].as_str().unwrap_or("?"),
            record["reason"].as_str().unwrap_or("?")
        );
        Some(End::SetAside)
    }
}
