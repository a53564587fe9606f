//! Owns `t8k-engine status`: a read-only snapshot of the engine, its running job, the queue, the set-aside
//! triggers and each target's live release; it never claims, moves or changes anything.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::config::Config;
use crate::history::{Event, JobResult};
use crate::layout::Layout;
use crate::lock::EngineLock;
use crate::queue::ready::{self, Readiness, WriterProbe};
use crate::trigger;

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
    /// t8k-concierge.sh, script copies the built-in ones moved past.
    pub warnings: Vec<String>,
    /// The targets as `status.json` gives them (see [`Status::to_doc`]).
    #[serde(skip)]
    pub doc_targets: std::collections::BTreeMap<String, crate::status_doc::TargetDoc>,
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
    let engine = EngineLock::probe(&layout.engine_dir)?.map(|h| Engine {
        pid: h.pid,
        since: h.since,
    });
    let events = crate::history::Journal::open(layout).read();
    let running = engine.as_ref().and_then(|_| running(&events));
    let claimed = list(&layout.work, trigger::is_trigger_name);
    let queue: Vec<Queued> = list(&layout.state, trigger::is_trigger_name)
        .into_iter()
        .filter_map(|name| queued(&layout.state.join(&name), name, config))
        .collect();
    let set_aside = list(&layout.failed, |n| {
        !n.ends_with(".reason") && !n.starts_with('.')
    })
    .into_iter()
    .map(|name| {
        let reason = crate::fs::read_small(&layout.failed, 1, &format!("{name}.reason"))
            .map(|r| r.lines().next().unwrap_or("").to_string())
            .unwrap_or_else(|| "(no reason file)".into());
        SetAside { name, reason }
    })
    .collect();
    let (jobs, _) = crate::history::jobs(&events, engine.is_some());
    let states = crate::status_doc::target_states(layout, &jobs);
    let doc_targets = crate::status_doc::targets_doc(&states);
    let targets = states
        .into_iter()
        .map(|t| Target {
            target: t.target,
            live: t.live.map(|r| r.to_json()),
            last_failure: t.last_failure.map(|f| (f.job, f.at, f.reason)),
        })
        .collect();
    let idle_because = match (&engine, &running, queue.first()) {
        (_, Some(_), _) | (_, _, None) => None,
        (None, None, Some(_)) => Some("no engine is running: start `t8k-engine watch` (or let the path unit start `t8k-engine run`)".into()),
        (Some(_), None, Some(first)) if first.state != "ready" => Some(format!("waiting for {}: {}", first.name, first.state)),
        (Some(_), None, Some(_)) => None,
    };
    let warnings = crate::queue::strays(&layout.state)
        .unwrap_or_default()
        .into_iter()
        .map(|stray| stray.warning)
        .chain(crate::preflight::concierge_leftovers(config, layout))
        .chain(crate::script::copies::warnings(
            &crate::script::Scripts::new(&layout.scripts_dir),
        ))
        .collect();
    Ok(Status {
        engine,
        running,
        claimed,
        queue,
        set_aside,
        targets,
        idle_because,
        warnings,
        doc_targets,
    })
}

fn list(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
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

fn queued(path: &Path, name: String, config: &Config) -> Option<Queued> {
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
    Some(Queued { name, state, jobs })
}

fn running(events: &[Event]) -> Option<Running> {
    let (jobs, _) = crate::history::jobs(events, true);
    let job = jobs.into_iter().find(|j| j.result == JobResult::Running)?;
    let step = events.iter().rev().find_map(|e| match e {
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

impl Status {
    /// The status document (`status.json`, `GET /api/status`) of this snapshot.
    pub fn to_doc(&self) -> crate::status_doc::StatusDoc {
        use crate::status_doc::{
            EngineDoc, EngineState, QUEUE_SHOWN, QueuedDoc, RunningDoc, StatusDoc, VERSION,
        };
        let running = self.running.as_ref().map(|r| {
            let ago = |s: u64| {
                jiff::Timestamp::now()
                    .checked_sub(jiff::SignedDuration::from_secs(s as i64))
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            };
            RunningDoc {
                job: r.job_id.clone(),
                trigger: r.trigger.clone(),
                target: r.target.clone(),
                command: r.command.clone(),
                step: r.step.as_ref().map(|(n, _, _)| n.clone()),
                branch: r.step.as_ref().map(|(_, b, _)| b.clone()),
                step_started: r.step.as_ref().map(|(_, _, s)| ago(*s)),
                started: ago(r.elapsed_s),
                elapsed: r.elapsed_s,
            }
        });
        let state = match (&self.engine, &running) {
            (None, _) => EngineState::Stopped,
            (Some(_), Some(_)) => EngineState::Running,
            (Some(_), None) => EngineState::Idle,
        };
        let queue: Vec<QueuedDoc> = self
            .claimed
            .iter()
            .filter(|c| {
                self.running
                    .as_ref()
                    .is_none_or(|r| !r.trigger.starts_with(&format!("{c}:")))
            })
            .map(|name| QueuedDoc {
                name: name.clone(),
                jobs: Vec::new(),
            })
            .chain(self.queue.iter().map(|q| QueuedDoc {
                name: q.name.clone(),
                jobs: q.jobs.clone(),
            }))
            .collect();
        StatusDoc {
            version: VERSION,
            engine: EngineDoc {
                state,
                pid: self.engine.as_ref().and_then(|e| e.pid),
                since: self.engine.as_ref().and_then(|e| e.since.clone()),
            },
            running,
            queue_total: queue.len(),
            queue: queue.into_iter().take(QUEUE_SHOWN).collect(),
            targets: self.doc_targets.clone(),
            updated_at: jiff::Timestamp::now().to_string(),
        }
    }
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
}
