//! Owns the per-job view of the journal: each job's start joined with its end, and the result of a job
//! with no end derived from what came after it; it never writes anything.

use serde::Serialize;

use super::{Event, JobResult, StepRecord};

/// A job as `history` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobView {
    /// Job id.
    pub job_id: String,
    /// Trigger file name.
    pub trigger: String,
    /// Line in the trigger file.
    pub line: usize,
    /// Target name.
    pub target: String,
    /// The script function.
    pub command: String,
    /// Which run of the trigger this was.
    pub attempt: u32,
    /// RFC 3339 start time.
    pub started_at: String,
    /// How it ended, or `running`/`interrupted_rerun` when it has no end.
    pub result: JobResult,
    /// The step that failed.
    pub failed_step: Option<String>,
    /// Why it did not succeed.
    pub reason: Option<String>,
    /// Wall time, when finished.
    pub duration_ms: Option<u64>,
    /// The steps, when finished.
    pub steps: Vec<StepRecord>,
    /// Who asked for its trigger through `serve` (a token's name, `hook:NAME`), when someone did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Who cancelled it through `serve`, when someone did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
}

/// Jobs newest first, and superseded triggers, from a journal's events. A job with no end is
/// `interrupted_rerun` when its trigger ran again later, else `running` or `interrupted`.
pub fn jobs(events: &[Event], engine_running: bool) -> (Vec<JobView>, Vec<Event>) {
    // Each view with its result, `None` while the events have shown no end.
    let mut views: Vec<(JobView, Option<JobResult>)> = Vec::new();
    let mut superseded = Vec::new();
    // Trigger file -> who asked for it, and job -> who cancelled it, from `Requested` records. They live
    // in their own journal (`serve` never writes the engine's), so their order against jobs means nothing.
    let mut asked: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut cancelled: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for event in events {
        if let Event::Requested {
            action,
            by,
            trigger,
            job_id,
            ..
        } = event
        {
            if let Some(trigger) = trigger {
                asked.insert(trigger.as_str(), by.as_str());
            }
            if let (Some(job), "cancel") = (job_id, action.as_str()) {
                cancelled.insert(job.as_str(), by.as_str());
            }
        }
    }
    for event in events {
        match event {
            Event::JobStarted { trigger, .. } => {
                let mut view = started(event);
                view.requested_by = asked.get(trigger.as_str()).map(|by| by.to_string());
                view.cancelled_by = cancelled.get(view.job_id.as_str()).map(|by| by.to_string());
                views.push((view, None));
            }
            Event::JobFinished {
                job_id,
                result,
                failed_step,
                reason,
                duration_ms,
                steps,
                ..
            } => {
                if let Some((v, ended)) = views.iter_mut().rev().find(|(v, _)| &v.job_id == job_id)
                {
                    *ended = Some(result.clone());
                    v.failed_step = failed_step.clone();
                    v.reason = reason.clone();
                    v.duration_ms = Some(*duration_ms);
                    v.steps = steps.clone();
                }
            }
            Event::Superseded { .. } => superseded.push(event.clone()),
            Event::Requested { .. }
            | Event::StepStarted { .. }
            | Event::StepFinished { .. }
            | Event::SetAside { .. } => {}
        }
    }
    let last = views.len().saturating_sub(1);
    let mut out = Vec::with_capacity(views.len());
    for (i, (view, ended)) in views.iter().enumerate() {
        let result = ended.clone().unwrap_or_else(|| {
            let rerun = views[i + 1..]
                .iter()
                .any(|(later, _)| later.trigger == view.trigger && later.line == view.line);
            match (rerun, engine_running && i == last) {
                (true, _) => JobResult::InterruptedRerun,
                (false, true) => JobResult::Running,
                (false, false) => JobResult::Interrupted,
            }
        });
        out.push(JobView {
            result,
            ..view.clone()
        });
    }
    out.reverse();
    (out, superseded)
}

/// The view of a job that has just started.
fn started(event: &Event) -> JobView {
    let Event::JobStarted {
        job_id,
        trigger,
        line,
        target,
        command,
        attempt,
        at,
    } = event
    else {
        unreachable!("called for job_started events only")
    };
    JobView {
        job_id: job_id.clone(),
        trigger: trigger.clone(),
        line: *line,
        target: target.clone(),
        command: command.clone(),
        attempt: *attempt,
        started_at: at.clone(),
        result: JobResult::Running,
        failed_step: None,
        reason: None,
        duration_ms: None,
        steps: Vec::new(),
        requested_by: None,
        cancelled_by: None,
    }
}
