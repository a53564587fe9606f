//! Owns the status document: the typed, versioned JSON that the engine keeps in `log/status.json` and that
//! `GET /api/status` serves (engine state, the running job and its steps, the queue, each target's live
//! release, last job and last failure); the pieces both makers of it share (the queue, claimed and
//! set-aside triggers, the targets, why nothing runs, the running job from the journal); and the
//! engine's writer (`writer`). It decides nothing and only reads, but for the file the writer owns.
//!
//! The document is a stable interface (README "Status document"): fields are only ever added within a
//! version; a change that removes or retypes a field raises [`VERSION`].

mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use writer::StatusFile;

use crate::config::Config;
use crate::history::{Event, JobView, StepRecord};
use crate::layout::Layout;
use crate::queue::ready::{self, Readiness, WriterProbe};
use crate::release::{self, Release, Store};
use crate::trigger;

/// The schema version of [`StatusDoc`].
pub const VERSION: u32 = 1;
/// How many waiting and set-aside triggers the document lists (`queue_total`, `set_aside_total` count all).
pub const SHOWN: usize = 100;

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
    /// Waiting triggers in run order, the first [`SHOWN`].
    pub queue: Vec<QueuedDoc>,
    /// How many triggers wait in all.
    #[serde(default)]
    pub queue_total: usize,
    /// Triggers claimed and not finished that no job is running (left by an engine that stopped).
    pub claimed: Vec<String>,
    /// Triggers set aside in `state/failed/`, with the first line of their reason, the first [`SHOWN`].
    pub set_aside: Vec<SetAsideDoc>,
    /// How many triggers are set aside in all.
    #[serde(default)]
    pub set_aside_total: usize,
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
    /// The script function (`build`, `rollback`, ...).
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
    /// File name in the inbox (or in the claimed directory).
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
    /// The release of its install live now, when one was recorded (main and every `multi/TENANT` share
    /// one install).
    pub live: Option<ReleaseDoc>,
    /// Its last job that ended (or the running one).
    pub last_job: Option<JobDoc>,
    /// Its last job that did not succeed.
    pub last_failure: Option<JobDoc>,
}

/// A release as the engine records it (`t8k-engine releases`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseDoc {
    /// Its number within its install, as `t8k-engine releases` and `rollback --to` name it.
    pub id: u64,
    /// The job that released it.
    pub job_id: String,
    /// The target of that job.
    pub target: String,
    /// When it was released (RFC 3339).
    pub released_at: Option<String>,
    /// Backend commit.
    pub backend: Option<String>,
    /// Frontend commit.
    pub frontend: Option<String>,
    /// How long its job had run when it was released.
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
    /// The document's form of a release record.
    pub fn of(r: &Release) -> ReleaseDoc {
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        ReleaseDoc {
            id: r.id,
            job_id: r.job_id.clone(),
            target: r.target.clone(),
            released_at: text(&r.released_at),
            backend: r.fact("backend").map(str::to_string),
            frontend: r.fact("frontend").map(str::to_string),
            duration_ms: Some(r.duration_ms),
            trigger: text(&r.trigger),
            record: r.to_json(),
        }
    }
}

impl JobDoc {
    /// A job of the history, in short.
    pub fn of(job: &JobView) -> JobDoc {
        JobDoc {
            job_id: job.job_id.clone(),
            command: job.command.clone(),
            result: job.result.as_str().to_string(),
            started_at: job.started_at.clone(),
            duration_ms: job.duration_ms,
            reason: job.reason.clone(),
        }
    }

    /// Whether the job did not succeed (and is not running, or ran again).
    pub fn failed(&self) -> bool {
        !matches!(
            self.result.as_str(),
            "succeeded" | "running" | "interrupted_rerun"
        )
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

/// The names in `dir` that `keep` accepts, sorted.
pub fn names_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| keep(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Triggers claimed and not finished (`.t8k-engine/work`), in name order.
pub fn claimed(layout: &Layout) -> Vec<String> {
    names_in(&layout.work, trigger::is_trigger_name)
}

/// The inbox's triggers in run order.
pub fn inbox(layout: &Layout) -> Vec<String> {
    names_in(&layout.state, trigger::is_trigger_name)
}

/// One waiting trigger as it stands: ready with its jobs, or why not; `None` once it is gone.
pub fn queued(path: &Path, name: String, config: &Config) -> Option<QueuedDoc> {
    let (state, jobs) = match ready::probe(
        path,
        config.max_trigger_bytes,
        WriterProbe::from_config(config),
    ) {
        Readiness::Gone => return None,
        Readiness::Ready(specs) => (
            "ready".to_string(),
            specs.iter().map(|s| s.to_line()).collect(),
        ),
        Readiness::Writing => (
            "being written (a producer has it open)".to_string(),
            Vec::new(),
        ),
        Readiness::Incomplete(what) => (format!("incomplete: {what}"), Vec::new()),
        Readiness::Invalid => {
            let why = match crate::queue::open_trigger(path, config.max_trigger_bytes)
                .and_then(|f| crate::queue::read_capped(f, config.max_trigger_bytes))
            {
                Err(e) => e.to_string(),
                Ok(bytes) => trigger::parse(&bytes)
                    .err()
                    .map_or_else(|| "unreadable".into(), |e| e.to_string()),
            };
            (format!("invalid, will be set aside: {why}"), Vec::new())
        }
    };
    Some(QueuedDoc {
        ready: state == "ready",
        name,
        state,
        jobs,
    })
}

/// The set-aside triggers (`state/failed/`) with the first line of their reasons: the first `limit`
/// in name order, and how many there are.
pub fn set_aside(layout: &Layout, limit: usize) -> (Vec<SetAsideDoc>, usize) {
    let names = names_in(&layout.failed, |n| {
        !n.ends_with(".reason") && !n.starts_with('.')
    });
    let total = names.len();
    let shown = names
        .into_iter()
        .take(limit)
        .map(|name| {
            let reason = crate::fs::read_small(&layout.failed, 1, &format!("{name}.reason"))
                .map(|r| r.lines().next().unwrap_or("").to_string())
                .unwrap_or_else(|| "(no reason file)".into());
            SetAsideDoc { name, reason }
        })
        .collect();
    (shown, total)
}

/// Why nothing runs although triggers wait, when that is the case.
pub fn idle_because(engine_up: bool, running: bool, first: Option<&QueuedDoc>) -> Option<String> {
    match (engine_up, running, first) {
        (_, true, _) | (_, _, None) => None,
        (false, false, Some(_)) => Some("no engine is running: start `t8k-engine watch` (or let the path unit start `t8k-engine run`)".into()),
        (true, false, Some(first)) if !first.ready => {
            Some(format!("waiting for {}: {}", first.name, first.state))
        }
        (true, false, Some(_)) => None,
    }
}

/// One target's live release (its install's), last job and last failure.
pub struct TargetState {
    /// `main`, `multi/TENANT` or `dedicated/SITE`.
    pub target: String,
    /// The release serving the target's install.
    pub live: Option<Release>,
    /// Its newest job.
    pub last_job: Option<JobDoc>,
    /// Its newest job that did not succeed.
    pub last_failure: Option<JobDoc>,
}

impl TargetState {
    /// The document's form.
    pub fn doc(&self) -> TargetDoc {
        TargetDoc {
            target: self.target.clone(),
            live: self.live.as_ref().map(ReleaseDoc::of),
            last_job: self.last_job.clone(),
            last_failure: self.last_failure.clone(),
        }
    }
}

/// Every target the engine knows (the layout's, those with jobs, those with releases), sorted, each with
/// its install's live release, its last job and its last failure; `jobs` newest first.
pub fn target_states(layout: &Layout, jobs: &[JobView]) -> Vec<TargetState> {
    let dirs = |dir: PathBuf| names_in(&dir, |n| !n.starts_with('.') && dir.join(n).is_dir());
    let mut names: Vec<String> = vec!["main".to_string()];
    // config/t8k is the backend's tenant registry, no tenant.
    names.extend(
        dirs(layout.root.join("t8k-go-server").join("config"))
            .into_iter()
            .filter(|t| t != "t8k")
            .map(|t| format!("multi/{t}")),
    );
    names.extend(
        dirs(layout.root.join("sites"))
            .into_iter()
            .map(|s| format!("dedicated/{s}")),
    );
    names.extend(jobs.iter().map(|j| j.target.clone()));
    let mut stores: HashMap<String, Option<Store>> = HashMap::new();
    for install in release::installs(&layout.releases_dir) {
        let store = Store::load(&layout.releases_dir, &install).ok();
        if let Some(s) = &store {
            names.extend(s.releases.iter().map(|r| r.target.clone()));
        }
        stores.insert(install, store);
    }
    names.retain(|n| release::install_of_target(n).is_some());
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|target| {
            let install = release::install_of_target(&target).unwrap_or_default();
            let live = stores
                .get(&install)
                .and_then(|s| s.as_ref())
                .and_then(|s| s.live().cloned());
            let mut of_target = jobs.iter().filter(|j| j.target == target).map(JobDoc::of);
            let last_job = of_target.next();
            let last_failure = last_job
                .clone()
                .into_iter()
                .chain(of_target)
                .find(JobDoc::failed);
            TargetState {
                target,
                live,
                last_job,
                last_failure,
            }
        })
        .collect()
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
                wall_ms: millis_between(at, now),
                ..StepRecord::started(
                    name,
                    branch,
                    millis_between(&job.started_at, at.parse().unwrap_or(now)),
                )
            }),
            Event::StepFinished { job_id, step, .. } if *job_id == job.job_id => {
                close_step(&mut steps, step);
            }
            _ => {}
        }
    }
    RunningDoc {
        job_id: job.job_id.clone(),
        trigger: job.trigger.clone(),
        line: job.line,
        target: job.target.clone(),
        command: job.command.clone(),
        started_at: job.started_at.clone(),
        elapsed_s: seconds_since(&job.started_at),
        step: step_now(&steps),
        steps,
        requested_by: job.requested_by.clone(),
    }
}

/// Puts an ended step in place of the oldest open one of its name and branch (or after the others).
fn close_step(steps: &mut Vec<StepRecord>, ended: &StepRecord) {
    match steps
        .iter_mut()
        .find(|s| s.ok.is_none() && s.name == ended.name && s.branch == ended.branch)
    {
        Some(open) => *open = ended.clone(),
        None => steps.push(ended.clone()),
    }
}

/// The step that started last of those still open.
fn step_now(steps: &[StepRecord]) -> Option<StepNow> {
    steps
        .iter()
        .rev()
        .find(|s| s.ok.is_none())
        .map(|s| StepNow {
            name: s.name.clone(),
            branch: s.branch.clone(),
            elapsed_s: s.wall_ms / 1000,
        })
}

#[cfg(test)]
mod tests;
