//! Owns the text of `t8k-engine history` and `status`: one line per job with its steps' figures under it,
//! and the one-screen status; it only formats what it is given.

use std::path::Path;

use crate::history::{Event, JobResult, JobView, StepRecord};
use crate::status::Status;

/// `history`: the jobs given (newest first), each with its reason and steps, then the last superseded
/// triggers; `journal_dir` is named when there are none.
pub fn history(jobs: &[JobView], superseded: &[Event], journal_dir: &Path) -> String {
    let mut out = String::new();
    if jobs.is_empty() {
        out.push_str(&format!("no jobs recorded in {}\n", journal_dir.display()));
    }
    for j in jobs {
        out.push_str(&job_line(j));
        out.push('\n');
        if let Some(reason) = &j.reason
            && j.result != JobResult::Succeeded
        {
            out.push_str(&format!("    {reason}\n"));
        }
        if !j.steps.is_empty() {
            let steps: Vec<String> = j.steps.iter().map(step_figures).collect();
            out.push_str(&format!("    steps: {}\n", steps.join(", ")));
        }
    }
    for s in superseded.iter().rev().take(5) {
        if let Event::Superseded { trigger, by, at } = s {
            out.push_str(&format!("superseded: {trigger} by {by} at {at}\n"));
        }
    }
    out
}

/// `ID  TIME  TARGET COMMAND RESULT TOOK  TRIGGER:LINE (attempt N)`.
fn job_line(j: &JobView) -> String {
    let result = match (&j.result, &j.failed_step) {
        (JobResult::Failed, Some(step)) => format!("failed at step `{step}`"),
        (JobResult::RolledBack, Some(step)) => format!("rolled back (step `{step}`)"),
        (JobResult::RolledBack, None) => "rolled back".to_string(),
        (JobResult::InterruptedRerun, _) => "interrupted, re-run".to_string(),
        (other, _) => other.to_string(),
    };
    let took = j
        .duration_ms
        .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
    let attempt = if j.attempt > 1 {
        format!(" (attempt {})", j.attempt)
    } else {
        String::new()
    };
    format!(
        "{}  {}  {:<16} {:<8} {:<28} {:>7}  {}:{}{attempt}",
        j.job_id,
        j.started_at
            .get(..19)
            .unwrap_or(&j.started_at)
            .replace('T', " "),
        j.target,
        j.command,
        result,
        took,
        j.trigger,
        j.line,
    )
}

/// `name 1.2s (cpu 0.8s, 42 MiB)` and how it ended when not well.
fn step_figures(s: &StepRecord) -> String {
    let state = if s.cancelled {
        " cancelled"
    } else if s.ok == Some(false) {
        " FAILED"
    } else {
        ""
    };
    format!(
        "{} {:.1}s (cpu {:.1}s, {} MiB){state}",
        s.name,
        s.wall_secs(),
        s.cpu_secs(),
        s.rss_mib()
    )
}

/// `status`: the one-screen text form of the snapshot.
pub fn status(s: &Status) -> String {
    let mut lines = engine_lines(s);
    lines.extend(queue_lines(s));
    lines.extend(target_lines(s));
    lines.into_iter().map(|l| l + "\n").collect()
}

/// The engine, its running job and step, why it idles, what needs the operator, what stays claimed.
fn engine_lines(s: &Status) -> Vec<String> {
    let mut lines = vec![match &s.engine {
        Some(e) => format!(
            "engine: running (pid {}, since {})",
            e.pid.map_or("?".into(), |p| p.to_string()),
            e.since.as_deref().unwrap_or("?")
        ),
        None => "engine: not running".into(),
    }];
    match &s.running {
        Some(r) => {
            lines.push(format!(
                "running: {} {} ({}), job {}, {}s",
                r.target, r.command, r.trigger, r.job_id, r.elapsed_s
            ));
            if let Some((step, branch, secs)) = &r.step {
                lines.push(format!(
                    "  step: {step}{}, {secs}s",
                    super::branch_suffix(branch)
                ));
            }
        }
        None => lines.push("running: nothing".into()),
    }
    lines.extend(s.idle_because.iter().map(|why| format!("idle: {why}")));
    lines.extend(s.warnings.iter().map(|w| format!("warning: {w}")));
    let running = |c: &str| {
        s.running
            .as_ref()
            .is_some_and(|r| r.trigger.starts_with(&format!("{c}:")))
    };
    lines.extend(s.claimed.iter().filter(|c| !running(c)).map(|c| {
        format!("claimed: {c} (left by an engine that stopped; runs first at the next start)")
    }));
    lines
}

/// The inbox in run order with each trigger's jobs, and the set-aside triggers.
fn queue_lines(s: &Status) -> Vec<String> {
    let mut lines = vec![format!(
        "queue: {}",
        if s.queue.is_empty() {
            "empty".to_string()
        } else {
            format!("{} trigger(s), in run order", s.queue.len())
        }
    )];
    for q in &s.queue {
        lines.push(format!("  {}: {}", q.name, q.state));
        lines.extend(q.jobs.iter().map(|j| format!("    {j}")));
    }
    lines.push(format!(
        "set aside: {}",
        if s.set_aside.is_empty() {
            "none".to_string()
        } else {
            format!("{} (t8k-engine retry NAME requeues one)", s.set_aside.len())
        }
    ));
    lines.extend(
        s.set_aside
            .iter()
            .map(|a| format!("  {}: {}", a.name, a.reason)),
    );
    lines
}

/// Each target's live release and last failure.
fn target_lines(s: &Status) -> Vec<String> {
    let mut lines = vec!["targets:".to_string()];
    if s.targets.is_empty() {
        lines.push("  no release recorded yet".into());
    }
    for t in &s.targets {
        lines.push(match &t.live {
            Some(r) => format!(
                "  {}: live backend {} frontend {}, released {} (took {:.1}s)",
                t.target,
                short(&r["backend"]),
                short(&r["frontend"]),
                r["released_at"].as_str().unwrap_or("?"),
                r["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
            ),
            None => format!("  {}: no release recorded", t.target),
        });
        if let Some((job, at, reason)) = &t.last_failure {
            lines.push(format!("    last failure: job {job} at {at}: {reason}"));
        }
    }
    lines
}

fn short(commit: &serde_json::Value) -> String {
    commit
        .as_str()
        .map_or("?".into(), |c| c.chars().take(10).collect())
}
