//! Owns the status document: the typed, versioned JSON that `GET /api/status` serves and that the engine
//! is to write to `log/status.json` (engine state, the running job and its steps, the queue, each target's
//! live release and last result). It is built from what `status` collects and the journal; it only reads.
//!
//! The document is a stable interface (README "Status document"): fields are only ever added within a
//! version; a change that removes or retypes a field raises [`VERSION`].

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::history::StepRecord;
use crate::history::{Event, JobView};
use crate::layout::Layout;

/// The schema version of [`StatusDoc`].
pub const VERSION: u32 = 1;

/// Everything a status page or a CMS needs to tell "building" from "broken".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusDoc {
    /// Always [`VERSION`] for this layout.
    pub version: u32,
    /// When the document was made (RFC 3339).
    pub generated_at: String,
    /// The engine process.
    pub engine: EngineDoc,
    /// The job running now.
    pub running: Option<RunningDoc>,
    /// Waiting triggers in run order.
    pub queue: Vec<QueuedDoc>,
    /// Triggers claimed and not finished that no job is running (left by an engine that stopped).
    pub claimed: Vec<String>,
    /// Triggers set aside in `state/failed/`, with the first line of their reason.
    pub set_aside: Vec<SetAsideDoc>,
    /// Every known target: its live release, last job and last failure.
    pub targets: Vec<TargetDoc>,
    /// Why nothing runs although triggers wait, when that is the case.
    pub idle_because: Option<String>,
    /// What needs the operator although nothing failed.
    pub warnings: Vec<String>,
}

/// `stopped`: no engine holds the lock; `idle`: one does and runs no job; `running`: it runs a job.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EngineState {
    /// No engine holds the lock: triggers wait.
    Stopped,
    /// An engine holds the lock and runs no job.
    Idle,
    /// An engine runs a job.
    Running,
}

/// The engine process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EngineDoc {
    /// What it is doing.
    pub state: EngineState,
    /// Its pid, when it runs and the pid is known.
    pub pid: Option<u32>,
    /// When it took the lock (RFC 3339).
    pub since: Option<String>,
}

/// The running job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunningDoc {
    /// Job id (a ULID).
    pub job_id: String,
    /// Trigger file name.
    pub trigger: String,
    /// Line of the trigger file.
    pub line: usize,
    /// `main`, `multi/TENANT` or `dedicated/SITE`.
    pub target: String,
    /// The script function.
    pub command: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Seconds since it started.
    pub elapsed_s: u64,
    /// The step that started last and has not ended.
    pub step: Option<StepNow>,
    /// Its steps so far in start order: ended ones with their figures (`ok` set), running ones with
    /// `ok: null` and their wall time so far.
    pub steps: Vec<StepRecord>,
    /// Who asked for its trigger through `serve`, when someone did.
    pub requested_by: Option<String>,
}

/// The step running now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepNow {
    /// Its name.
    pub name: String,
    /// Its `parallel` branch, empty on the main line.
    pub branch: String,
    /// Seconds since it started.
    pub elapsed_s: u64,
}

/// One waiting trigger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueuedDoc {
    /// File name in the inbox.
    pub name: String,
    /// Whether it can be claimed now.
    pub ready: bool,
    /// `ready`, or why not (being written, incomplete, invalid).
    pub state: String,
    /// Its job lines, when it parses.
    pub jobs: Vec<String>,
}

/// One set-aside trigger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetAsideDoc {
    /// Its name in `state/failed/`.
    pub name: String,
    /// The first line of its reason.
    pub reason: String,
}

/// One target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetDoc {
    /// `main`, `multi/TENANT` or `dedicated/SITE`.
    pub target: String,
    /// The release live now, when one was recorded.
    pub live: Option<ReleaseDoc>,
    /// Its last job that ended (or the running one).
    pub last_job: Option<JobDoc>,
    /// Its last job that did not succeed.
    pub last_failure: Option<JobDoc>,
}

/// A release as recorded by `record_release()`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseDoc {
    /// The release's id: the id of the job that released it.
    pub id: String,
    /// When it was released (RFC 3339).
    pub released_at: Option<String>,
    /// Backend commit.
    pub backend: Option<String>,
    /// Frontend commit.
    pub frontend: Option<String>,
    /// How long its job took to release it.
    pub duration_ms: Option<u64>,
    /// The trigger it came from.
    pub trigger: Option<String>,
    /// The whole record, with the facts the script gave (lockfile, what was built, steps).
    pub record: serde_json::Value,
}

/// A job, in short.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobDoc {
    /// Job id.
    pub job_id: String,
    /// The script function.
    pub command: String,
    /// `succeeded`, `failed`, `rolled_back`, `interrupted`, `interrupted_rerun`, `cancelled` or `running`.
    pub result: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Its wall time, once ended.
    pub duration_ms: Option<u64>,
    /// Why it did not succeed.
    pub reason: Option<String>,
}

impl ReleaseDoc {
    /// Reads the well-known fields of a release record; `None` for a record without a job id.
    pub fn from_record(record: serde_json::Value) -> Option<ReleaseDoc> {
        let text = |k: &str| record[k].as_str().map(str::to_string);
        Some(ReleaseDoc {
            id: text("job_id")?,
            released_at: text("released_at"),
            backend: text("backend"),
            frontend: text("frontend"),
            duration_ms: record["duration_ms"].as_u64(),
            trigger: text("trigger"),
            record,
        })
    }
}

impl JobDoc {
    fn of(job: &JobView) -> JobDoc {
        JobDoc {
            job_id: job.job_id.clone(),
            command: job.command.clone(),
            result: job.result.as_str().to_string(),
            started_at: job.started_at.clone(),
            duration_ms: job.duration_ms,
            reason: job.reason.clone(),
        }
    }
}

fn seconds_since(at: &str) -> u64 {
    at.parse::<jiff::Timestamp>().map_or(0, |t| {
        jiff::Timestamp::now().duration_since(t).as_secs().max(0) as u64
    })
}

fn millis_between(from: &str, to: jiff::Timestamp) -> u64 {
    from.parse::<jiff::Timestamp>()
        .map_or(0, |t| to.duration_since(t).as_millis().max(0) as u64)
}

/// Builds the document from the state on disk, changing nothing.
pub fn build(config: &Config, layout: &Layout) -> Result<StatusDoc> {
    let status = crate::status::collect(config, layout)?;
    let events = crate::history::read_with_requests(layout);
    let (jobs, _) = crate::history::jobs(&events, status.engine.is_some());
    let running = jobs
        .iter()
        .find(|j| j.result == crate::history::JobResult::Running)
        .filter(|_| status.running.is_some())
        .map(|job| running_doc(job, &events));
    let engine = EngineDoc {
        state: match (&status.engine, &running) {
            (None, _) => EngineState::Stopped,
            (Some(_), None) => EngineState::Idle,
            (Some(_), Some(_)) => EngineState::Running,
        },
        pid: status.engine.as_ref().and_then(|e| e.pid),
        since: status.engine.as_ref().and_then(|e| e.since.clone()),
    };
    let targets = status
        .targets
        .into_iter()
        .map(|t| {
            let of_target = |failed_only: bool| {
                jobs.iter()
                    .filter(|j| j.target == t.target)
                    .find(|j| {
                        !failed_only
                            || !matches!(
                                j.result.as_str(),
                                "succeeded" | "running" | "interrupted_rerun"
                            )
                    })
                    .map(JobDoc::of)
            };
            TargetDoc {
                live: t.live.and_then(ReleaseDoc::from_record),
                last_job: of_target(false),
                last_failure: of_target(true),
                target: t.target,
            }
        })
        .collect();
    let claimed = status
        .claimed
        .into_iter()
        .filter(|c| running.as_ref().is_none_or(|r| r.trigger != *c))
        .collect();
    Ok(StatusDoc {
        version: VERSION,
        generated_at: jiff::Timestamp::now().to_string(),
        engine,
        running,
        queue: status
            .queue
            .into_iter()
            .map(|q| QueuedDoc {
                ready: q.state == "ready",
                name: q.name,
                state: q.state,
                jobs: q.jobs,
            })
            .collect(),
        claimed,
        set_aside: status
            .set_aside
            .into_iter()
            .map(|a| SetAsideDoc {
                name: a.name,
                reason: a.reason,
            })
            .collect(),
        targets,
        idle_because: status.idle_because,
        warnings: status.warnings,
    })
}

/// The running job with its steps from the journal: `step_started` opens a step, `step_finished` closes
/// the oldest open one of the same name and branch.
pub fn running_doc(job: &JobView, events: &[Event]) -> RunningDoc {
    let now = jiff::Timestamp::now();
    let mut steps: Vec<StepRecord> = Vec::new();
    for event in events {
        match event {
            Event::StepStarted {
                job_id,
                name,
                branch,
                at,
            } if *job_id == job.job_id => steps.push(StepRecord {
                name: name.clone(),
                branch: branch.clone(),
                start_ms: millis_between(&job.started_at, at.parse().unwrap_or(now)),
                wall_ms: millis_between(at, now),
                user_cpu_ms: 0,
                sys_cpu_ms: 0,
                max_rss_kib: 0,
                ok: None,
                cancelled: false,
            }),
            Event::StepFinished { job_id, step, .. } if *job_id == job.job_id => {
                match steps
                    .iter_mut()
                    .find(|s| s.ok.is_none() && s.name == step.name && s.branch == step.branch)
                {
                    Some(open) => *open = step.clone(),
                    None => steps.push(step.clone()),
                }
            }
            _ => {}
        }
    }
    let step = steps
        .iter()
        .rev()
        .find(|s| s.ok.is_none())
        .map(|s| StepNow {
            name: s.name.clone(),
            branch: s.branch.clone(),
            elapsed_s: s.wall_ms / 1000,
        });
    RunningDoc {
        job_id: job.job_id.clone(),
        trigger: job.trigger.clone(),
        line: job.line,
        target: job.target.clone(),
        command: job.command.clone(),
        started_at: job.started_at.clone(),
        elapsed_s: seconds_since(&job.started_at),
        step,
        steps,
        requested_by: job.requested_by.clone(),
    }
}

/// Writes the document atomically (for the engine's `log/status.json`).
pub fn write(path: &Path, doc: &StatusDoc) -> Result<()> {
    let mut text = serde_json::to_string_pretty(doc)?;
    text.push('\n');
    crate::fs::write_durably(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_round_trips_and_names_its_version() {
        let doc = StatusDoc {
            version: VERSION,
            generated_at: "2026-12-05T00:00:00Z".into(),
            engine: EngineDoc {
                state: EngineState::Idle,
                pid: Some(7),
                since: None,
            },
            running: None,
            queue: Vec::new(),
            claimed: Vec::new(),
            set_aside: Vec::new(),
            targets: Vec::new(),
            idle_because: None,
            warnings: Vec::new(),
        };
        let value = serde_json::to_value(&doc).unwrap();
        assert_eq!(value["version"], 1);
        assert_eq!(value["engine"]["state"], "idle");
        let back: StatusDoc = serde_json::from_value(value).unwrap();
        assert_eq!(back, doc);
    }
}
