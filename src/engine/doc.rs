//! Owns what the engine tells `status.json` (`status_doc`): the targets it starts from (the journal read
//! once, the release records), each job's start and steps, and what a job's end changed for its targets.
//! It only reports; the document never changes what the engine does.

use tracing::warn;

use super::Engine;
use super::pass::JobOutcome;
use crate::config::Config;
use crate::history::Journal;
use crate::layout::Layout;
use crate::release::Store;
use crate::script::{Job, StepEvent};
use crate::status_doc::{self, FailureDoc, ReleaseDoc, RunningDoc, StatusFile};

/// The writer of an engine that just started: targets from the journal and the release records, the queue.
pub(super) fn start(config: &Config, layout: &Layout, journal: &Journal) -> StatusFile {
    let (jobs, _) = crate::history::jobs(&journal.read(), false);
    let states = status_doc::target_states(layout, &jobs);
    let file = StatusFile::start(
        &layout.status_file,
        config.max_trigger_bytes,
        status_doc::targets_doc(&states),
    );
    file.refresh_queue(layout, None);
    file
}

impl Engine {
    /// A job starts: it is the running job, its trigger leaves the queue, and its steps are reported as
    /// they start and end.
    pub(super) fn doc_job_started(&self, name: &str, job: &Job) {
        self.status.job_started(RunningDoc {
            job: job.id.clone(),
            trigger: format!("{name}:{}", job.spec.line),
            target: job.spec.target_name(),
            command: job.spec.command.clone(),
            step: None,
            branch: None,
            step_started: None,
            started: jiff::Timestamp::now().to_string(),
            elapsed: 0,
        });
        self.status.refresh_queue(&self.layout, Some(name));
    }

    /// Tells `status.json` of a step event (the step hook calls this besides recording the start).
    pub(super) fn doc_step(status: &StatusFile, event: &StepEvent<'_>) {
        match event {
            StepEvent::Started(name, branch) => status.step(name, branch, false),
            StepEvent::Ended(record) => status.step(&record.name, &record.branch, true),
        }
    }

    /// A job ended: no job runs, and every target of its install shows the live release now; its own
    /// target shows it as the last failure unless it succeeded.
    pub(super) fn doc_job_finished(
        &self,
        name: &str,
        job: &Job,
        outcome: &JobOutcome,
        reason: Option<String>,
        started_at: &str,
    ) {
        let install = job.install();
        let live = match Store::load(&self.layout.releases_dir, &install) {
            Ok(store) => store.live().map(ReleaseDoc::of),
            Err(e) => {
                warn!("cannot read the releases of {install} for status.json: {e:#}");
                None
            }
        };
        let target = job.spec.target_name();
        let failure = (!matches!(outcome, JobOutcome::Succeeded)).then(|| FailureDoc {
            job: job.id.clone(),
            at: started_at.to_string(),
            result: outcome.result().to_string(),
            reason: reason.unwrap_or_else(|| outcome.result().to_string()),
        });
        let same_install =
            |t: &str| crate::release::install_of_target(t).as_deref() == Some(install.as_str());
        self.status
            .job_finished(&target, same_install, live, failure);
        // The trigger is still claimed until its file is settled (then `run_claimed` reads the queue again).
        self.status.refresh_queue(&self.layout, Some(name));
    }
}
