//! Owns the per-job view of the journal: each job's start joined with its end, and the result of a job
//! with no end derived from what came after it; it never writes anything.

use std::collections::HashMap;

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
    let mut views = Views::default();
    for event in events {
        views.note_request(event);
    }
    for event in events {
        views.add(event);
    }
    views.finish(engine_running)
}

/// The views of jobs built one event at a time, so that a reader can stream the journal through it
/// instead of holding every event (a full journal is 32 MiB of records, several times that parsed).
#[derive(Debug, Default)]
pub struct Views {
    /// Each view with its result, `None` while the events have shown no end.
    views: Vec<(JobView, Option<JobResult>)>,
    /// Where each job id's (latest) view is in `views`.
    by_id: HashMap<String, usize>,
    superseded: Vec<Event>,
    /// Trigger file -> who asked for it, and job -> who cancelled it, from `Requested` records. They live
    /// in their own journal (`serve` never writes the engine's), so their order against jobs means nothing:
    /// a reading of both notes them first, and one that keeps its views applies them to those it has.
    asked: HashMap<String, String>,
    cancelled: HashMap<String, String>,
    /// Views made by [`Views::summaries`]: no steps, no superseded triggers.
    summaries: bool,
}

impl Views {
    /// Views that keep no steps and no superseded triggers, for status snapshots (which show neither):
    /// a full journal's steps are most of what its views would hold in memory.
    pub fn summaries() -> Views {
        Views {
            summaries: true,
            ..Views::default()
        }
    }

    /// Notes who asked for what, from a `Requested` record (other kinds are ignored here).
    pub fn note_request(&mut self, event: &Event) {
        if let Event::Requested {
            action,
            by,
            trigger,
            job_id,
            ..
        } = event
        {
            // A reader that keeps its views notes requests as they come, after jobs they concern may
            // have started: those are updated as if the request had been noted first.
            if let Some(trigger) = trigger {
                self.asked.insert(trigger.clone(), by.clone());
                for (view, _) in self.views.iter_mut().filter(|(v, _)| v.trigger == *trigger) {
                    view.requested_by = Some(by.clone());
                }
            }
            if let (Some(job), "cancel") = (job_id, action.as_str()) {
                self.cancelled.insert(job.clone(), by.clone());
                if let Some(&i) = self.by_id.get(job) {
                    self.views[i].0.cancelled_by = Some(by.clone());
                }
            }
        }
    }

    /// Adds the next event of the journal (steps and requests change no view).
    pub fn add(&mut self, event: &Event) {
        match event {
            Event::JobStarted { trigger, .. } => {
                let mut view = started(event);
                view.requested_by = self.asked.get(trigger).cloned();
                view.cancelled_by = self.cancelled.get(&view.job_id).cloned();
                self.by_id.insert(view.job_id.clone(), self.views.len());
                self.views.push((view, None));
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
                if let Some(&i) = self.by_id.get(job_id) {
                    let (v, ended) = &mut self.views[i];
                    *ended = Some(result.clone());
                    v.failed_step = failed_step.clone();
                    v.reason = reason.clone();
                    v.duration_ms = Some(*duration_ms);
                    if !self.summaries {
                        v.steps = steps.clone();
                    }
                }
            }
            Event::Superseded { .. } if !self.summaries => self.superseded.push(event.clone()),
            Event::Superseded { .. } => {}
            Event::Requested { .. }
            | Event::StepStarted { .. }
            | Event::StepFinished { .. }
            | Event::SetAside { .. } => {}
        }
    }

    /// The jobs newest first, and the superseded triggers.
    pub fn finish(self, engine_running: bool) -> (Vec<JobView>, Vec<Event>) {
        let results = self.results(engine_running);
        // Moved, not cloned: a full journal's views are megabytes.
        let out = self
            .views
            .into_iter()
            .zip(results)
            .map(|((view, _), result)| JobView { result, ..view })
            .rev()
            .collect();
        (out, self.superseded)
    }

    /// The superseded triggers, oldest first (none in [`Views::summaries`]).
    pub fn superseded(&self) -> &[Event] {
        &self.superseded
    }

    /// Each job newest first with its result, for a reader that keeps the views and picks a few.
    pub fn newest_first(
        &self,
        engine_running: bool,
    ) -> impl Iterator<Item = (&JobView, JobResult)> + '_ {
        let results = self.results(engine_running);
        self.views.iter().map(|(view, _)| view).zip(results).rev()
    }

    /// The jobs `history` and `GET /api/history` list: newest first, only `target`'s when given, only
    /// those that neither succeeded nor run when `failed`, at most `limit`.
    pub fn listed(
        &self,
        engine_running: bool,
        target: Option<&str>,
        failed: bool,
        limit: usize,
    ) -> Vec<JobView> {
        self.newest_first(engine_running)
            .filter(|(j, _)| target.is_none_or(|t| j.target == t))
            .filter(|(_, r)| !failed || !matches!(r, JobResult::Succeeded | JobResult::Running))
            .take(limit)
            .map(|(j, result)| JobView {
                result,
                ..j.clone()
            })
            .collect()
    }

    /// Each job's result, oldest first: its end, or for a job with no end, `interrupted_rerun` when its
    /// trigger ran again later, else `running` (the last job while an engine runs) or `interrupted`.
    fn results(&self, engine_running: bool) -> Vec<JobResult> {
        let views = &self.views;
        let last = views.len().saturating_sub(1);
        views
            .iter()
            .enumerate()
            .map(|(i, (view, ended))| {
                ended.clone().unwrap_or_else(|| {
                    let rerun = views[i + 1..]
                        .iter()
                        .any(|(later, _)| later.trigger == view.trigger && later.line == view.line);
                    match (rerun, engine_running && i == last) {
                        (true, _) => JobResult::InterruptedRerun,
                        (false, true) => JobResult::Running,
                        (false, false) => JobResult::Interrupted,
                    }
                })
            })
            .collect()
    }
}

impl super::Journal {
    /// [`jobs`] of the whole journal, streamed through [`Views`] instead of read into memory first (who
    /// asked through `serve` is not read).
    pub fn jobs(&self, engine_running: bool) -> (Vec<JobView>, Vec<Event>) {
        let mut views = Views::default();
        self.for_each(|event| views.add(&event));
        views.finish(engine_running)
    }

    /// How job `id` ended, when its end is among the records after `cursor` (which moves on past what was
    /// read): for commands that wait for a job they saw running.
    pub fn ended_after(&self, cursor: &mut Option<super::Cursor>, id: &str) -> Option<JobResult> {
        let events = self.events_after(cursor).ok()?;
        events.into_iter().find_map(|event| match event {
            Event::JobFinished { job_id, result, .. } if job_id == id => Some(result),
            _ => None,
        })
    }
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
