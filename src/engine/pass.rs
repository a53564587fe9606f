//! Owns what happens to one claimed trigger file: `prepare` it (count the attempt, stop what a dead
//! engine left running for it, read, parse, resolve and check every job before any runs), `run_one` job
//! after another, and `settle` each job's [`JobOutcome`] (go on, set the file aside, or leave it claimed);
//! the file is completed when every job succeeded. It never picks which file runs next.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use tracing::{info, warn};

use super::report::{self, FailureReport};
use super::{Engine, FileEnd, Summary};
use crate::cancel::Cancel;
use crate::config::StepScope;
use crate::history::{Event, JobResult};
use crate::layout::Target;
use crate::scope;
use crate::script::{self, Compiled, Job, JobCtx, JobError, Settings, StepEvent};
use crate::supervise;
use crate::trigger::{self, JobSpec, Kind};

/// How one job ended, as the pass acts on it.
#[derive(Debug)]
pub enum JobOutcome {
    /// The command function returned.
    Succeeded,
    /// The script failed; `rolled_back` when it put the previous release back first.
    Failed {
        /// The script said it rolled back (see `script::report`).
        rolled_back: bool,
        /// What failed.
        error: JobError,
    },
    /// `t8k-engine cancel` stopped it: its trigger is set aside.
    Cancelled(String),
    /// The engine is stopping: the trigger stays claimed and runs first at the next start.
    Interrupted(String),
}

impl JobOutcome {
    /// Classifies what the script returned. A result that came back `Ok` stands whatever was asked after
    /// it; a stop of the engine wins over a cancel of the job (the trigger must then stay claimed).
    pub fn classify(result: Result<(), JobError>, engine: &Cancel, job: &Cancel) -> JobOutcome {
        match result {
            Ok(()) => JobOutcome::Succeeded,
            Err(_) if engine.is_cancelled() => {
                JobOutcome::Interrupted(engine.reason().unwrap_or_else(|| "stop requested".into()))
            }
            Err(_) if job.is_cancelled() => {
                JobOutcome::Cancelled(job.reason().unwrap_or_else(|| "cancelled".into()))
            }
            Err(error) => JobOutcome::Failed {
                rolled_back: error.rolled_back(),
                error,
            },
        }
    }

    /// The result the history records.
    pub fn result(&self) -> JobResult {
        match self {
            JobOutcome::Succeeded => JobResult::Succeeded,
            JobOutcome::Failed {
                rolled_back: true, ..
            } => JobResult::RolledBack,
            JobOutcome::Failed { .. } => JobResult::Failed,
            JobOutcome::Cancelled(_) => JobResult::Cancelled,
            JobOutcome::Interrupted(_) => JobResult::Interrupted,
        }
    }

    /// Whether the job decided what stays live: every job that ended by itself did; one cut short by the
    /// engine stopping did not (an engine starting later puts its unverified switches back).
    pub fn decided_releases(&self) -> bool {
        !matches!(self, JobOutcome::Interrupted(_))
    }
}

/// A claimed trigger ready to run: each job with its type's compiled script, and the starts before this one.
struct Prepared {
    jobs: Vec<(Job, Compiled)>,
    attempts_before: u32,
}

/// A job that ran: where it stands in its file, how it ended, its context (steps, failure) and when it
/// started.
struct Ran {
    at: Position,
    outcome: JobOutcome,
    ctx: Arc<JobCtx>,
    started: Instant,
    started_at: String,
}

impl Engine {
    /// Runs one claimed trigger file to its end.
    pub(super) fn process(&self, name: &str, summary: &mut Summary) -> Result<FileEnd> {
        let Some(prepared) = self.prepare(name)? else {
            return Ok(FileEnd::SetAside);
        };
        let total = prepared.jobs.len();
        // Success hooks run once the whole file is done, so that they see the trigger removed.
        let mut succeeded = Vec::new();
        for (i, (job, script)) in prepared.jobs.into_iter().enumerate() {
            let span = tracing::info_span!("job", id = %job.id);
            let _entered = span.enter();
            let at = Position {
                index: i,
                total,
                attempts_before: prepared.attempts_before,
            };
            let ran = self.run_one(name, &job, &script, at)?;
            if let Some(end) = self.settle(name, &job, &script, ran, summary)? {
                return Ok(end);
            }
            succeeded.push((job, script));
        }
        self.queue.complete(name)?;
        info!("{name}: all {total} job(s) succeeded; trigger removed");
        for (job, script) in &succeeded {
            self.after_job(job, script, None);
        }
        Ok(FileEnd::Done)
    }

    /// Counts the attempt, stops what a dead engine left running, reads, parses, resolves and checks every
    /// job before any runs, so a bad line never leaves a file half-done. `None`: the file was set aside.
    fn prepare(&self, name: &str) -> Result<Option<Prepared>> {
        let before = self.queue.begin_attempt(name)?;
        let max = self.limits.max_attempts;
        if before >= max {
            self.set_aside(
                name,
                |aside| format!("{name}: the engine died {before} times while running it; read log/build.log for the job that was running, fix the cause, then `t8k-engine retry {aside}`"),
                format!("attempts: {before} (limit {max})"),
            )?;
            return Ok(None);
        }
        if before > 0 {
            warn!(
                "resuming {name}: an engine stopped while running it (attempt {} of {max})",
                before + 1
            );
            let killed =
                supervise::kill_job(&self.queue.claimed_path(name), self.settings.kill_grace);
            if killed > 0 {
                warn!(
                    "stopped {killed} process group(s) that the engine which died left running for {name}"
                );
            }
            let tag = supervise::job_tag(&self.queue.claimed_path(name));
            let s = &self.settings;
            if s.step_scope != StepScope::Off
                && scope::available(s.scope_manager)
                && scope::stop_job_scopes(&tag, s.scope_manager, &s.systemctl, s.kill_grace)
            {
                warn!("stopped the step scopes that the engine which died left for {name}");
            }
        }
        let Some(specs) = self.read_and_parse(name)? else {
            return Ok(None);
        };
        let mut scripts: Vec<(Kind, Compiled)> = Vec::new();
        let mut jobs = Vec::new();
        for spec in specs {
            match self.resolve(&spec, &mut scripts) {
                Ok((target, script)) => jobs.push((self.job(name, spec, target), script)),
                Err(problem) => {
                    let line = spec.line;
                    self.set_aside(
                        name,
                        |aside| format!("{name} line {line}: {problem}; no job in it ran: fix it, then `t8k-engine retry {aside}`"),
                        format!("line {line}: {}", spec.to_line()),
                    )?;
                    return Ok(None);
                }
            }
        }
        Ok(Some(Prepared {
            jobs,
            attempts_before: before,
        }))
    }

    /// Reads and parses a claimed trigger, setting it aside when it cannot be (`None`). A trigger is parsed
    /// here although the readiness probe parsed it before the claim: the claimed file is what runs (a
    /// producer could rewrite an unclaimed file in place), claimed files left by a crash had no probe, and
    /// only this parse keeps its notes.
    fn read_and_parse(&self, name: &str) -> Result<Option<Vec<JobSpec>>> {
        let bytes = match self.queue.read_claimed(name) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.set_aside(
                    name,
                    |_| {
                        format!("{name}: {e}; triggers must be small regular files, drop a new one")
                    },
                    String::new(),
                )?;
                return Ok(None);
            }
        };
        match trigger::parse_with_notes(&bytes) {
            Ok((specs, notes)) => {
                for note in notes {
                    info!("{name} {note}");
                }
                Ok(Some(specs))
            }
            Err(e) => {
                self.set_aside(
                    name,
                    |aside| format!("{name} {e}; no job in it ran: fix failed/{aside}, then `t8k-engine retry {aside}`"),
                    format!("content:\n{}", trigger::printable(&bytes)),
                )?;
                Ok(None)
            }
        }
    }

    /// A job's target and its type's script (compiled once per type for the file), checked to define the
    /// job's command; the problem as one line otherwise.
    fn resolve(
        &self,
        spec: &JobSpec,
        scripts: &mut Vec<(Kind, Compiled)>,
    ) -> std::result::Result<(Target, Compiled), String> {
        let target = self.layout.target(spec).map_err(|e| format!("{e:#}"))?;
        let script = match scripts.iter().find(|(k, _)| *k == spec.kind) {
            Some((_, s)) => s.clone(),
            None => {
                let s = Compiled::new(&self.scripts, &self.settings, spec.kind)
                    .map_err(|e| e.headline())?;
                scripts.push((spec.kind, s.clone()));
                s
            }
        };
        script
            .check_command(&spec.command)
            .map_err(|e| e.headline())?;
        Ok((target, script))
    }

    fn job(&self, trigger: &str, spec: JobSpec, target: Target) -> Job {
        Job {
            id: ulid::Ulid::new().to_string(),
            spec,
            trigger: trigger.to_string(),
            root: self.layout.root.display().to_string(),
            target,
        }
    }

    /// Records each step's start and end in the history (`step_started`, `step_finished` with its
    /// figures) and tells status.json.
    fn step_hook(&self, job: &Job) -> crate::script::StepHook {
        let (journal, job_id, status) = (self.journal.clone(), job.id.clone(), self.status.clone());
        Box::new(move |step| {
            let at = jiff::Timestamp::now().to_string();
            let (event, name) = match &step {
                StepEvent::Started(name, branch) => (
                    Event::StepStarted {
                        job_id: job_id.clone(),
                        name: name.to_string(),
                        branch: branch.to_string(),
                        at,
                    },
                    *name,
                ),
                StepEvent::Ended(record) => (
                    Event::StepFinished {
                        job_id: job_id.clone(),
                        step: (*record).clone(),
                        at,
                    },
                    record.name.as_str(),
                ),
            };
            if let Err(e) = journal.append(&event) {
                warn!("cannot record step `{name}` in the history: {e:#}");
            }
            Engine::doc_step(&status, &step);
        })
    }

    /// Runs one job: its context (tagged for the crash sweep, with its own cancel token and deadline), its
    /// start in the history, the script; the switches it noted are forgotten once it decided them.
    fn run_one(&self, name: &str, job: &Job, script: &Compiled, at: Position) -> Result<Ran> {
        let settings = Settings {
            job_tag: Some(supervise::job_tag(&self.queue.claimed_path(name))),
            ..self.settings.clone()
        };
        let logs = &self.job_logs;
        crate::joblog::prune(&logs.dir, logs.keep.saturating_sub(1), logs.max_age);
        let job_cancel = self.cancel.child();
        *self.job_cancel.lock().unwrap() = Some(job_cancel.clone());
        let ctx = JobCtx::new(settings, job_cancel.clone(), self.limits.job_timeout, false);
        ctx.releases
            .set_parts(crate::release::Parts::of(&job.target));
        ctx.on_step(self.step_hook(job));
        let started = Instant::now();
        let started_at = jiff::Timestamp::now().to_string();
        self.record(Event::JobStarted {
            job_id: job.id.clone(),
            trigger: name.to_string(),
            line: job.spec.line,
            target: job.spec.target_name(),
            command: job.spec.command.clone(),
            attempt: at.attempts_before + 1,
            at: started_at.clone(),
        });
        crate::fault_point!("job.started");
        // This first line of the job's log creates it: before status.json says the job runs, so that a
        // reader told of the job finds its log.
        info!(
            "job {}/{} started: {} {} ({name} line {}, attempt {})",
            at.index + 1,
            at.total,
            job.spec.target_name(),
            job.spec.command,
            job.spec.line,
            at.attempts_before + 1
        );
        self.doc_job_started(name, job, &started_at);
        let result = if job.spec.command == crate::trigger::ROLLBACK {
            self.run_rollback(job, script, &ctx)
        } else {
            script::run_job(&self.scripts, &ctx, script, job.clone())
        };
        let outcome = JobOutcome::classify(result, &self.cancel, &job_cancel);
        if outcome.decided_releases() {
            crate::release::clear_pending(&crate::release::pending_dir(
                &self.settings.releases_dir,
            ))?;
            self.prune_releases(job);
        }
        Ok(Ran {
            at,
            outcome,
            ctx,
            started,
            started_at,
        })
    }

    /// Acts on how a job ended: records it, and for anything but success ends the file (set aside, or
    /// left claimed when the engine stops). `None`: go on with the file's next job.
    fn settle(
        &self,
        name: &str,
        job: &Job,
        script: &Compiled,
        ran: Ran,
        summary: &mut Summary,
    ) -> Result<Option<FileEnd>> {
        let Ran {
            at,
            outcome,
            ctx,
            started,
            started_at,
        } = ran;
        // Recorded in the history, then told to status.json as recorded.
        let finished = |failed_step: Option<String>, reason: Option<String>| {
            let event = Event::JobFinished {
                job_id: job.id.clone(),
                result: outcome.result(),
                failed_step,
                reason,
                duration_ms: started.elapsed().as_millis() as u64,
                steps: ctx.steps(),
                at: jiff::Timestamp::now().to_string(),
            };
            self.record(event.clone());
            self.doc_job_finished(name, job, &event, &started_at);
        };
        let failed_step = || ctx.failure().and_then(|f| f.step);
        match &outcome {
            JobOutcome::Succeeded => {
                crate::fault_point!("job.finished");
                summary.jobs_ok += 1;
                finished(None, None);
                info!(
                    "job succeeded in {:.1}s; steps: {}",
                    started.elapsed().as_secs_f64(),
                    report::steps_line(&ctx.steps())
                );
                Ok(None)
            }
            JobOutcome::Interrupted(why) => {
                warn!(
                    "job interrupted ({why}); {name} stays claimed and runs first when the engine starts again"
                );
                finished(None, Some(why.clone()));
                self.queue.reset_attempts(name, at.attempts_before)?;
                Ok(Some(FileEnd::Interrupted))
            }
            JobOutcome::Cancelled(why) => {
                summary.jobs_failed += 1;
                finished(failed_step(), Some(why.clone()));
                let line = job.spec.line;
                let end = self.set_aside(
                    name,
                    |aside| format!("{name} line {line}: cancelled ({why}); `t8k-engine retry {aside}` runs it again"),
                    format!("steps:\n{}", report::steps_line(&ctx.steps())),
                )?;
                let failure = report::failure_map(job, &ctx, &format!("cancelled ({why})"), why);
                self.after_job(job, script, Some(failure));
                Ok(Some(end))
            }
            JobOutcome::Failed { error, .. } => {
                summary.jobs_failed += 1;
                let report = FailureReport::new(name, job, &ctx, error, started.elapsed(), at);
                finished(failed_step(), Some(report.summary(name)));
                let end =
                    self.set_aside(name, |aside| report.summary(aside), report.details.clone())?;
                let failure =
                    report::failure_map(job, &ctx, &error.headline(), &report.summary(name));
                self.after_job(job, script, Some(failure));
                Ok(Some(end))
            }
        }
    }
}

/// Which job of its file a job is, and which start of the file this is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Position {
    /// From 0.
    pub index: usize,
    /// Jobs in the file.
    pub total: usize,
    /// Starts of the file before this one (engine deaths).
    pub attempts_before: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::Rendered;

    fn runtime(headline: &str, rolled_back: bool) -> JobError {
        JobError::Runtime(Rendered {
            headline: headline.into(),
            details: headline.into(),
            terminated: false,
            rolled_back,
        })
    }

    #[test]
    fn an_outcome_is_classified_by_what_stopped_the_job_first() {
        let (engine, job) = (Cancel::new(), Cancel::new());
        let ok = JobOutcome::classify(Ok(()), &engine, &job);
        assert_eq!(ok.result(), JobResult::Succeeded);
        let failed = JobOutcome::classify(Err(runtime("x: boom", false)), &engine, &job);
        assert_eq!(failed.result(), JobResult::Failed);
        let rolled = JobOutcome::classify(Err(runtime("x: rolled back: 500", true)), &engine, &job);
        assert_eq!(rolled.result(), JobResult::RolledBack);
        job.cancel("cancelled by `t8k-engine cancel`");
        let cancelled = JobOutcome::classify(Err(runtime("x: stopped", false)), &engine, &job);
        assert!(
            matches!(&cancelled, JobOutcome::Cancelled(why) if why == "cancelled by `t8k-engine cancel`")
        );
        assert_eq!(cancelled.result(), JobResult::Cancelled);
        assert!(cancelled.decided_releases());
        // A job token is the engine's child: a stop of the engine cancels it too, and wins.
        let engine = Cancel::new();
        let job = engine.child();
        engine.cancel("engine stopping (SIGTERM)");
        let stopped = JobOutcome::classify(Err(runtime("x: stopped", false)), &engine, &job);
        assert!(
            matches!(&stopped, JobOutcome::Interrupted(why) if why == "engine stopping (SIGTERM)")
        );
        assert_eq!(stopped.result(), JobResult::Interrupted);
        assert!(
            !stopped.decided_releases(),
            "an engine that starts later decides"
        );
        // A script that finished before the stop arrived succeeded.
        let late = JobOutcome::classify(Ok(()), &engine, &job);
        assert_eq!(late.result(), JobResult::Succeeded);
    }
}
