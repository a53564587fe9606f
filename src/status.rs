//! Owns `t8k-engine status`: a read-only snapshot of the engine, its running job, the queue, the set-aside
//! triggers and each target's live release; it never claims, moves or changes anything.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::config::Config;
use crate::history::Event;
use crate::layout::Layout;
use crate::lock::EngineLock;
use crate::ready::{self, Readiness};
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
    let events = crate::drain::journal(layout).read();
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
        let reason = read_small(&layout.failed, 1, &format!("{name}.reason"))
            .map(|r| r.lines().next().unwrap_or("").to_string())
            .unwrap_or_else(|| "(no reason file)".into());
        SetAside { name, reason }
    })
    .collect();
    let targets = targets(layout, &events, engine.is_some());
    let idle_because = match (&engine, &running, queue.first()) {
        (_, Some(_), _) | (_, _, None) => None,
        (None, None, Some(_)) => Some("no engine is running: start `t8k-engine watch` (or let the path unit start `t8k-engine run`)".into()),
        (Some(_), None, Some(first)) if first.state != "ready" => Some(format!("waiting for {}: {}", first.name, first.state)),
        (Some(_), None, Some(_)) => None,
    };
    let warnings = crate::queue::strays(&layout.state)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, warning)| warning)
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
    })
}

/// A small file in one of the engine's own directories (the last `own` components of `dir`), read without
/// following a link or blocking on a FIFO; `None` when it cannot be read as a regular file.
pub fn read_small(dir: &Path, own: usize, name: &str) -> Option<String> {
    let bytes = crate::owndir::OwnDir::open_to_read(dir, own)
        .ok()??
        .read(name, 16 << 20)
        .ok()??;
    Some(String::from_utf8_lossy(&bytes).into_owned())
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
    let (state, jobs) = match ready::probe(path, config.max_trigger_bytes, config.writer_check()) {
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
    let job = jobs.into_iter().find(|j| j.result == "running")?;
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

fn targets(layout: &Layout, events: &[Event], engine_running: bool) -> Vec<Target> {
    let releases = layout.engine_dir.join("releases");
    let mut out: Vec<Target> = list(&releases, |n| n.ends_with(".json"))
        .into_iter()
        .filter_map(|file| {
            let value: serde_json::Value =
                serde_json::from_str(&read_small(&releases, 2, &file)?).ok()?;
            Some(Target {
                target: value["target"].as_str()?.to_string(),
                live: Some(value),
                last_failure: None,
            })
        })
        .collect();
    let (jobs, _) = crate::history::jobs(events, engine_running);
    for job in jobs.iter().filter(|j| {
        !matches!(
            j.result.as_str(),
            "succeeded" | "running" | "interrupted_rerun"
        )
    }) {
        let failure = (
            job.job_id.clone(),
            job.started_at.clone(),
            job.reason.clone().unwrap_or_else(|| job.result.clone()),
        );
        match out.iter_mut().find(|t| t.target == job.target) {
            Some(t) if t.last_failure.is_none() => t.last_failure = Some(failure),
            Some(_) => {}
            None => out.push(Target {
                target: job.target.clone(),
                live: None,
                last_failure: Some(failure),
            }),
        }
    }
    // Targets the layout has, even before their first release: main, each tenant, each dedicated site.
    let mut known = vec!["main".to_string()];
    known.extend(
        list(&layout.root.join("t8k-go-server").join("config"), |n| {
            !n.starts_with('.')
        })
        .into_iter()
        .map(|t| format!("multi/{t}")),
    );
    known.extend(
        list(&layout.root.join("sites"), |n| !n.starts_with('.'))
            .into_iter()
            .map(|s| format!("dedicated/{s}")),
    );
    for target in known {
        if !out.iter().any(|t| t.target == target) {
            out.push(Target {
                target,
                live: None,
                last_failure: None,
            });
        }
    }
    out.sort_by(|a, b| a.target.cmp(&b.target));
    out
}

/// The one-screen text form.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    match &s.engine {
        Some(e) => line(format!(
            "engine: running (pid {}, since {})",
            e.pid.map_or("?".into(), |p| p.to_string()),
            e.since.as_deref().unwrap_or("?")
        )),
        None => line("engine: not running".into()),
    }
    match &s.running {
        Some(r) => {
            line(format!(
                "running: {} {} ({}), job {}, {}s",
                r.target, r.command, r.trigger, r.job_id, r.elapsed_s
            ));
            if let Some((step, branch, secs)) = &r.step {
                let branch = if branch.is_empty() {
                    String::new()
                } else {
                    format!(" [{branch}]")
                };
                line(format!("  step: {step}{branch}, {secs}s"));
            }
        }
        None => line("running: nothing".into()),
    }
    if let Some(why) = &s.idle_because {
        line(format!("idle: {why}"));
    }
    for w in &s.warnings {
        line(format!("warning: {w}"));
    }
    for c in &s.claimed {
        if s.running
            .as_ref()
            .is_none_or(|r| !r.trigger.starts_with(&format!("{c}:")))
        {
            line(format!(
                "claimed: {c} (left by an engine that stopped; runs first at the next start)"
            ));
        }
    }
    line(format!(
        "queue: {}",
        if s.queue.is_empty() {
            "empty".to_string()
        } else {
            format!("{} trigger(s), in run order", s.queue.len())
        }
    ));
    for q in &s.queue {
        line(format!("  {}: {}", q.name, q.state));
        for j in &q.jobs {
            line(format!("    {j}"));
        }
    }
    line(format!(
        "set aside: {}",
        if s.set_aside.is_empty() {
            "none".to_string()
        } else {
            format!("{} (t8k-engine retry NAME requeues one)", s.set_aside.len())
        }
    ));
    for a in &s.set_aside {
        line(format!("  {}: {}", a.name, a.reason));
    }
    line("targets:".into());
    if s.targets.is_empty() {
        line("  no release recorded yet".into());
    }
    for t in &s.targets {
        match &t.live {
            Some(r) => line(format!(
                "  {}: live backend {} frontend {}, released {} (took {:.1}s)",
                t.target,
                short(&r["backend"]),
                short(&r["frontend"]),
                r["released_at"].as_str().unwrap_or("?"),
                r["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
            )),
            None => line(format!("  {}: no release recorded", t.target)),
        }
        if let Some((job, at, reason)) = &t.last_failure {
            line(format!("    last failure: job {job} at {at}: {reason}"));
        }
    }
    out
}

fn short(commit: &serde_json::Value) -> String {
    commit
        .as_str()
        .map_or("?".into(), |c| c.chars().take(10).collect())
}
