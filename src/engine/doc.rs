//! Owns what the engine tells `status.json` (`status_doc`): the document it starts from (the journal read
//! once, the release records, the queue), each job's start and steps, and what a job's end changed for
//! its targets. It only reports; the document never changes what the engine does.

use tracing::warn;

use super::Engine;
use crate::config::Config;
use crate::history::{Event, JobView, Journal};
use crate::layout::Layout;
use crate::lock::EngineLock;
use crate::release::Store;
use crate::script::{Job, StepEvent};
use crate::status_doc::{self, EngineDoc, EngineState, JobDoc, ReleaseDoc, RunningDoc, StatusFile};

/// The writer of an engine that just started (and holds the lock): its pid and start as the lock's pid
/// file says, the targets from the journal and the release records, the queue.
pub(super) fn start(config: &Config, layout: &Layout, jobs: &[JobView]) -> StatusFile {
    let targets = status_doc::target_states(layout, jobs)
        .iter()
        .map(|t| t.doc())
        .collect();
    let holder = EngineLock::probe(&layout.engine_dir).ok().flatten();
    let engine = EngineDoc {
        state: EngineState::Idle,
        pid: holder
            .as_ref()
            .and_then(|h| h.pid)
            .or(Some(std::process::id())),
        since: holder.and_then(|h| h.since),
    };
    let file = StatusFile::start(&layout.status_file, config, engine, targets);
    file.refresh(layout, None);
    file
}

/// Who asked for a trigger through `serve`: the newest request that dropped it (the history's rule).
fn requested_by(layout: &Layout, trigger: &str) -> Option<String> {
    Journal::requests(layout)
        .read()
        .into_iter()
        .rev()
        .find_map(|e| match e {
            Event::Requested {
                by,
                trigger: Some(t),
                ..
            } if t == trigger => Some(by),
            _ => None,
        })
}

impl Engine {
    /// A job starts (`started_at` as the journal has it): it is the running job, its trigger leaves
    /// the queue, and its steps are reported as they start and end.
    pub(super) fn doc_job_started(&self, name: &str, job: &Job, started_at: &str) {
        self.status.job_started(RunningDoc {
            job_id: job.id.clone(),
            trigger: name.to_string(),
            line: job.spec.line,
            target: job.spec.target_name(),
            command: job.spec.command.clone(),
            started_at: started_at.to_string(),
            elapsed_s: 0,
            step: None,
            steps: Vec::new(),
            requested_by: requested_by(&self.layout, name),
        });
        self.status.refresh(&self.layout, Some(name));
    }

    /// Tells `status.json` of a step event (the step hook calls this besides recording it).
    pub(super) fn doc_step(status: &StatusFile, event: &StepEvent<'_>) {
        match event {
            StepEvent::Started(name, branch) => status.step_started(name, branch),
            StepEvent::Ended(record) => status.step_ended(record),
        }
    }

    /// A job ended as `finished` (its `job_finished` record) says: no job runs, every target of its
    /// install shows the live release now, and its own target shows it as its last job (and last failure
    /// unless it succeeded).
    pub(super) fn doc_job_finished(
        &self,
        name: &str,
        job: &Job,
        finished: &Event,
        started_at: &str,
    ) {
        let Event::JobFinished {
            result,
            reason,
            duration_ms,
            ..
        } = finished
        else {
            return;
        };
        let install = job.install();
        let live = match Store::load(&self.layout.releases_dir, &install) {
            Ok(store) => store.live().map(ReleaseDoc::of),
            Err(e) => {
                warn!("cannot read the releases of {install} for status.json: {e:#}");
                None
            }
        };
        let last = JobDoc {
            job_id: job.id.clone(),
            command: job.spec.command.clone(),
            result: result.as_str().to_string(),
            started_at: started_at.to_string(),
            duration_ms: Some(*duration_ms),
            reason: reason.clone(),
        };
        let same_install =
            |t: &str| crate::release::install_of_target(t).as_deref() == Some(install.as_str());
        self.status
            .job_finished(&job.spec.target_name(), last, same_install, live);
        // The trigger is still claimed until its file is settled (then `run_claimed` reads the queue again).
        self.status.refresh(&self.layout, Some(name));
    }
}
