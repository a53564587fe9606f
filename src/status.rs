//! Owns `t8k-engine status`: a read-only snapshot of the engine, its running job, the queue, the set-aside
//! triggers and each target's live release; and the status document (`status_doc`) made from the same
//! snapshot for `GET /api/status`. It never claims, moves or changes anything.

use std::collections::HashMap;

use anyhow::Result;
use serde::Serialize;

use crate::config::Config;
use crate::history::{Event, JobResult, JobView, Kept, Views};
use crate::layout::Layout;
use crate::lock::EngineLock;
use crate::status_doc::{
    self, EngineDoc, EngineState, QueuedDoc, SHOWN, SetAsideDoc, StatusDoc, TargetDoc,
};

/// Everything `status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The engine holding the lock, if any.
    pub engine: Option<Engine>,
    /// The job running now, if any.
    pub running: Option<Running>,
    /// Triggers claimed but not finished (running, or left by an engine that stopped).
    pub claimed: Vec<String>,
    /// The inbox in the order it will run.
    pub queue: Vec<Queued>,
    /// Triggers set aside, with the first line of their reason.
    pub set_aside: Vec<SetAside>,
    /// Each target's live release and last failure.
    pub targets: Vec<Target>,
    /// Why nothing runs although triggers wait, when that is the case.
    pub idle_because: Option<String>,
    /// What needs the operator although nothing failed: `*.csv` files no engine runs, leftovers of
    /// t8k-concierge.sh, script copies the built-in ones moved past, build caches with no lasting place.
    pub warnings: Vec<String>,
    /// Disk used per target and by the shared caches: measured (by walking them) only when asked for
    /// ([`with_disk`]), since the fleet's status reports do not need it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<crate::usage::Disk>,
}

/// The snapshot with the disk report (`t8k-engine status`).
pub fn with_disk(config: &Config, layout: &Layout) -> Result<Status> {
    let mut status = collect(config, layout)?;
    status.disk = Some(crate::usage::collect(config, layout));
    Ok(status)
}

/// The engine process.
#[derive(Debug, Serialize)]
pub struct Engine {
    /// Its pid.
    pub pid: Option<u32>,
    /// When it took the lock.
    pub since: Option<String>,
}

/// The running job.
#[derive(Debug, Serialize)]
pub struct Running {
    /// Job id.
    pub job_id: String,
    /// Trigger file and line.
    pub trigger: String,
    /// Target name.
    pub target: String,
    /// Script function.
    pub command: String,
    /// Seconds since the job started.
    pub elapsed_s: u64,
    /// The step it is in, with its branch, and seconds in it.
    pub step: Option<(String, String, u64)>,
}

/// One waiting trigger.
#[derive(Debug, Serialize)]
pub struct Queued {
    /// File name.
    pub name: String,
    /// `ready`, or why not.
    pub state: String,
    /// Its job lines, when it parses.
    pub jobs: Vec<String>,
}

/// One set-aside trigger.
#[derive(Debug, Serialize)]
pub struct SetAside {
    /// Name in `state/failed/`.
    pub name: String,
    /// First line of its reason.
    pub reason: String,
}

/// One target's state.
#[derive(Debug, Serialize)]
pub struct Target {
    /// `main`, `multi/TENANT` or `dedicated/SITE`.
    pub target: String,
    /// The live release's record.
    pub live: Option<serde_json::Value>,
    /// The last job that did not succeed: (job id, time, reason).
    pub last_failure: Option<(String, String, String)>,
}

fn seconds_since(at: &str) -> u64 {
    at.parse::<jiff::Timestamp>().map_or(0, |t| {
        jiff::Timestamp::now().duration_since(t).as_secs().max(0) as u64
    })
}

/// Looks at everything without changing anything.
pub fn collect(config: &Config, layout: &Layout) -> Result<Status> {
    let mut kept = Kept::new(false, false);
    kept.catch_up(layout);
    collect_from(config, layout, &kept)
}

/// A snapshot from a history kept between snapshots (`serve`, the fleet bridge: each takes one at every
/// change), which the caller has brought up to date.
pub fn collect_from(config: &Config, layout: &Layout, kept: &Kept) -> Result<Status> {
    Ok(gather(config, layout, kept)?.status)
}

/// The jobs a snapshot shows, newest first: each target's newest job and its newest one that did not
/// succeed (all that a snapshot reads of the history), with their results as of now.
fn shown_jobs(views: &Views, engine_running: bool) -> Vec<JobView> {
    // Per target: whether its newest failure has been taken.
    let mut targets: HashMap<&str, bool> = HashMap::new();
    let mut out = Vec::new();
    for (view, result) in views.newest_first(engine_running) {
        let failure = result.is_failure();
        let keep = match targets.get_mut(view.target.as_str()) {
            None => {
                targets.insert(&view.target, failure);
                true
            }
            Some(taken) if failure && !*taken => {
                *taken = true;
                true
            }
            Some(_) => false,
        };
        if keep {
            out.push(JobView {
                result,
                ..view.clone()
            });
        }
    }
    out
}

/// A snapshot with what the document needs besides: the queue and targets in its form, the jobs, and the
/// records of the newest job.
struct Gathered {
    status: Status,
    queue: Vec<QueuedDoc>,
    targets: Vec<TargetDoc>,
    jobs: Vec<JobView>,
    newest: Vec<Event>,
}

fn gather(config: &Config, layout: &Layout, kept: &Kept) -> Result<Gathered> {
    let engine = EngineLock::probe(&layout.engine_dir)?.map(|h| Engine {
        pid: h.pid,
        since: h.since,
    });
    let jobs = shown_jobs(kept.views(), engine.is_some());
    let newest = kept.newest().to_vec();
    let running = engine.as_ref().and_then(|_| running(&jobs, &newest));
    let queue: Vec<QueuedDoc> = status_doc::inbox(layout)
        .into_iter()
        .filter_map(|name| status_doc::queued(&layout.state.join(&name), name, config))
        .collect();
    let (set_aside, _) = status_doc::set_aside(layout, usize::MAX);
    let states = status_doc::target_states(layout, &jobs);
    let targets = states
        .iter()
        .map(|t| Target {
            target: t.target.clone(),
            live: t.live.as_ref().map(|r| r.to_json()),
            last_failure: t.last_failure.as_ref().map(|f| {
                let reason = f.reason.clone().unwrap_or_else(|| f.result.clone());
                (f.job_id.clone(), f.started_at.clone(), reason)
            }),
        })
        .collect();
    let idle_because = status_doc::idle_because(engine.is_some(), running.is_some(), queue.first());
    let status = Status {
        engine,
        running,
        claimed: status_doc::claimed(layout),
        queue: queue
            .iter()
            .map(|q| Queued {
                name: q.name.clone(),
                state: q.state.clone(),
                jobs: q.jobs.clone(),
            })
            .collect(),
        set_aside: set_aside
            .into_iter()
            .map(|a| SetAside {
                name: a.name,
                reason: a.reason,
            })
            .collect(),
        targets,
        idle_because,
        warnings: crate::preflight::standing_warnings(config, layout),
        disk: None,
    };
    Ok(Gathered {
        status,
        queue,
        targets: states.iter().map(|t| t.doc()).collect(),
        jobs,
        newest,
    })
}

/// The status document of the state on disk (what `GET /api/status` serves; the engine keeps the same
/// document in `log/status.json` as things happen). The waiting and set-aside triggers are the first
/// [`SHOWN`] of each.
pub fn document(config: &Config, layout: &Layout) -> Result<StatusDoc> {
    let mut kept = Kept::new(false, true);
    kept.catch_up(layout);
    document_from(config, layout, &kept)
}

/// [`document`] from a history kept between documents, which the caller has brought up to date.
pub fn document_from(config: &Config, layout: &Layout, kept: &Kept) -> Result<StatusDoc> {
    let Gathered {
        status,
        queue,
        targets,
        jobs,
        newest,
    } = gather(config, layout, kept)?;
    let running = jobs
        .iter()
        .find(|j| j.result == JobResult::Running)
        .filter(|_| status.running.is_some())
        .map(|job| status_doc::running_doc(job, &newest));
    let engine = EngineDoc {
        state: match (&status.engine, &running) {
            (None, _) => EngineState::Stopped,
            (Some(_), None) => EngineState::Idle,
            (Some(_), Some(_)) => EngineState::Running,
        },
        pid: status.engine.as_ref().and_then(|e| e.pid),
        since: status.engine.as_ref().and_then(|e| e.since.clone()),
    };
    let claimed = status
        .claimed
        .into_iter()
        .filter(|c| running.as_ref().is_none_or(|r| r.trigger != *c))
        .collect();
    let (queue_total, set_aside_total) = (queue.len(), status.set_aside.len());
    Ok(StatusDoc {
        version: status_doc::VERSION,
        generated_at: jiff::Timestamp::now().to_string(),
        engine,
        running,
        queue: queue.into_iter().take(SHOWN).collect(),
        queue_total,
        claimed,
        set_aside: status
            .set_aside
            .into_iter()
            .take(SHOWN)
            .map(|a| SetAsideDoc {
                name: a.name,
                reason: a.reason,
            })
            .collect(),
        set_aside_total,
        targets,
        idle_because: status.idle_because,
        warnings: status.warnings,
    })
}

/// The running job (of `jobs`, viewed with an engine running) and its current step, from the records of
/// the newest job.
fn running(jobs: &[JobView], newest: &[Event]) -> Option<Running> {
    let job = jobs
        .iter()
        .find(|j| j.result == JobResult::Running)?
        .clone();
    let step = newest.iter().rev().find_map(|e| match e {
        Event::StepStarted {
            job_id,
            name,
            branch,
            at,
        } if *job_id == job.job_id => Some((name.clone(), branch.clone(), seconds_since(at))),
        _ => None,
    });
    Some(Running {
        elapsed_s: seconds_since(&job.started_at),
        trigger: format!("{}:{}", job.trigger, job.line),
        job_id: job.job_id,
        target: job.target,
        command: job.command,
        step,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_names_what_waits_why_and_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            root: dir.path().to_path_buf(),
            ..Config::default()
        };
        let layout = Layout::new(&config);
        let queue = crate::queue::Queue::open(&layout, 4096).unwrap();
        std::fs::write(layout.state.join("build-1.csv"), "type=main,command=build").unwrap();
        std::fs::write(layout.state.join("build-2.csv"), "type=main,bogus=1\n").unwrap();
        std::fs::write(
            layout.state.join("build-3.csv"),
            "type=multi,tenant=a,command=build\n",
        )
        .unwrap();
        std::fs::write(
            layout.state.join("build-9.csv"),
            "type=main,command=build\n",
        )
        .unwrap();
        queue.claim("build-9.csv").unwrap();
        queue
            .set_aside("build-9.csv", crate::queue::Place::Work, |_| {
                crate::queue::Reason {
                    summary: "build-9.csv line 1: it broke".into(),
                    details: String::new(),
                }
            })
            .unwrap();
        let s = collect(&config, &layout).unwrap();
        assert!(s.engine.is_none() && s.running.is_none() && s.claimed.is_empty());
        let states: Vec<(&str, &str)> = s
            .queue
            .iter()
            .map(|q| (q.name.as_str(), q.state.as_str()))
            .collect();
        assert_eq!(
            states[0],
            ("build-1.csv", "incomplete: the last line has no newline")
        );
        assert!(
            states[1]
                .1
                .starts_with("invalid, will be set aside: line 1"),
            "{states:?}"
        );
        assert_eq!(states[2], ("build-3.csv", "ready"));
        assert_eq!(s.queue[2].jobs, ["type=multi,tenant=a,command=build"]);
        assert!(
            s.idle_because
                .as_deref()
                .is_some_and(|w| w.starts_with("no engine is running")),
            "{:?}",
            s.idle_because
        );
        assert_eq!(s.set_aside.len(), 1);
        assert_eq!(s.set_aside[0].reason, "build-9.csv line 1: it broke");
        let targets: Vec<&str> = s.targets.iter().map(|t| t.target.as_str()).collect();
        assert_eq!(
            targets,
            ["main"],
            "the layout's targets, even before a release"
        );
    }

    #[test]
    fn a_snapshot_shows_each_targets_last_job_and_failure_as_the_whole_history_has_them() {
        for seed in [3, 11] {
            let mut kept = Kept::new(false, true);
            crate::history::testing::generated_history(seed, |layout, k| {
                kept.catch_up(layout);
                let events = crate::history::testing::read_with_requests(layout);
                let docs = |jobs: &[JobView]| -> Vec<serde_json::Value> {
                    status_doc::target_states(layout, jobs)
                        .iter()
                        .map(|t| serde_json::to_value(t.doc()).unwrap())
                        .collect()
                };
                for running in [false, true] {
                    let context = format!("seed {seed}, job {k}, engine running {running}");
                    let (whole, _) = crate::history::jobs(&events, running);
                    let shown = shown_jobs(kept.views(), running);
                    assert_eq!(docs(&shown), docs(&whole), "{context}");
                    // The running job, if any, is the newest: it is shown.
                    let first = |jobs: &[JobView]| {
                        jobs.first().map(|j| (j.job_id.clone(), j.result.clone()))
                    };
                    assert_eq!(first(&shown), first(&whole), "{context}");
                    // At most two jobs per target: four targets.
                    assert!(shown.len() <= 8, "{context}: {}", shown.len());
                }
            });
        }
    }
}
