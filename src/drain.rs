//! Owns one pass over the queue: finish claimed work first, then claim and run inbox triggers in name order,
//! completing or setting aside each file; it neither locks nor watches, so its caller must hold the lock.

use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::layout::Layout;
use crate::queue::{Claim, Place, Queue, Reason};
use crate::script::{self, Job, JobCtx, JobError, Scripts, Settings};
use crate::supervise::Cancel;
use crate::trigger::{self, JobSpec};

/// What a pass did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Jobs that succeeded.
    pub jobs_ok: usize,
    /// Jobs that failed.
    pub jobs_failed: usize,
    /// Trigger files whose jobs all succeeded.
    pub files_done: usize,
    /// Trigger files set aside.
    pub set_aside: usize,
    /// The pass stopped because the engine was asked to stop; the running trigger stays claimed.
    pub interrupted: bool,
}

/// Drains a state directory through the scripts.
pub struct Drainer {
    layout: Layout,
    queue: Queue,
    scripts: Scripts,
    settings: Settings,
    job_timeout: Duration,
    max_attempts: u32,
    stale_after: Duration,
    writer_check: crate::ready::WriterCheck,
    journal: crate::history::Journal,
    job_logs: (std::path::PathBuf, usize, Duration),
    metrics_file: std::path::PathBuf,
    cancel: Cancel,
    /// The running job's own token: `cancel_job` stops that job alone and sets its trigger aside.
    job_cancel: std::sync::Mutex<Option<Cancel>>,
}

/// How one trigger file ended.
enum FileEnd {
    Done,
    SetAside,
    Interrupted,
}

impl Drainer {
    /// Prepares a pass; `cancel` stops it (the running job's processes are killed, its trigger stays claimed).
    /// The caller holds the lock: releases an engine left switched but unverified are put back first.
    pub fn new(config: &Config, layout: &Layout, cancel: Cancel) -> Result<Drainer> {
        let settings = settings(config);
        let pending = crate::release::pending_dir(&settings.releases_dir);
        // Every directory of the engine's own is checked (and made) before anything is claimed: a link,
        // another user's directory or one others can write stops the engine here, with the reason.
        let queue = Queue::open(layout, config.max_trigger_bytes)?;
        crate::owndir::OwnDir::open(&layout.engine_dir.join("history"), 2)?;
        crate::owndir::OwnDir::open(&pending, 3)?;
        for line in crate::release::recover_pending(&pending)? {
            warn!("{line}");
        }
        queue.remove_torn_writes();
        Ok(Drainer {
            queue,
            scripts: Scripts::new(&layout.scripts_dir),
            settings,
            job_timeout: Duration::from_secs(config.job_timeout),
            max_attempts: config.max_attempts,
            stale_after: Duration::from_secs(config.stale_after),
            writer_check: config.writer_check(),
            journal: journal(layout),
            metrics_file: config
                .metrics_file
                .clone()
                .unwrap_or_else(|| layout.root.join("log").join("t8k-engine.prom")),
            job_logs: (
                layout
                    .log_file
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join("jobs"),
                config.keep_job_logs,
                Duration::from_secs(config.keep_job_log_days * 86_400),
            ),
            job_cancel: std::sync::Mutex::new(None),
            layout: layout.clone(),
            cancel,
        })
    }

    /// Runs everything claimed, then everything in the inbox, until the inbox is empty or the pass is cancelled.
    pub fn drain(&self) -> Result<Summary> {
        let mut summary = Summary::default();
        for (_, warning) in self.queue.strays()? {
            warn!("{warning}");
        }
        for name in self.queue.claimed()? {
            if !self.run_claimed(&name, &mut summary)? {
                return Ok(summary);
            }
        }
        loop {
            let (names, bad) = self.queue.pending()?;
            for (name, reason) in &bad {
                error!("set aside {name}: {}", reason.summary);
            }
            summary.set_aside += bad.len();
            if names.is_empty() {
                return Ok(summary);
            }
            for name in names {
                if self.cancel.is_cancelled() {
                    summary.interrupted = true;
                    return Ok(summary);
                }
                self.wait_for_writer(&name);
                if self.claim(&name, &mut summary)? && !self.run_claimed(&name, &mut summary)? {
                    return Ok(summary);
                }
            }
        }
    }

    /// A path unit starts `run` the moment a trigger appears, often while its producer is still writing:
    /// wait (up to `stale_after`) until nobody has it open. A missing final newline is tolerated here.
    fn wait_for_writer(&self, name: &str) {
        let path = self.queue.inbox_path(name);
        let until = Instant::now() + self.stale_after;
        let mut told = false;
        while crate::ready::probe(&path, self.queue.max_bytes(), self.writer_check)
            == crate::ready::Readiness::Writing
            && Instant::now() < until
            && !self.cancel.is_cancelled()
        {
            if !told {
                info!("waiting for {name}: a producer still has it open for writing");
                told = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Claims one inbox trigger; returns whether it is now claimed (a duplicate name is set aside).
    pub fn claim(&self, name: &str, summary: &mut Summary) -> Result<bool> {
        match self.queue.claim(name)? {
            Claim::Claimed => Ok(true),
            Claim::Vanished => {
                warn!("{name} disappeared from the inbox before it was claimed");
                Ok(false)
            }
            Claim::Duplicate => {
                let aside = self.queue.set_aside(name, Place::Inbox, |aside| Reason {
                    summary: format!(
                        "{name}: a trigger of the same name is already being processed; drop it again under a new name (t8k-engine trigger does), or `t8k-engine retry {aside}` later"
                    ),
                    details: String::new(),
                })?;
                error!("set aside {name} as {aside}: duplicate of a claimed trigger");
                summary.set_aside += 1;
                Ok(false)
            }
        }
    }

    /// Stops the running job (its process groups are killed) and sets its trigger aside as cancelled;
    /// false when no job runs.
    pub fn cancel_job(&self, reason: &str) -> bool {
        match self.job_cancel.lock().unwrap().as_ref() {
            Some(c) if !c.is_cancelled() => {
                c.cancel(reason);
                true
            }
            _ => false,
        }
    }

    /// The queue this pass works on.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Runs one claimed trigger to its end; returns false when the engine is stopping (it stays claimed).
    pub fn run_claimed(&self, name: &str, summary: &mut Summary) -> Result<bool> {
        match self.process(name, summary)? {
            FileEnd::Done => summary.files_done += 1,
            FileEnd::SetAside => summary.set_aside += 1,
            FileEnd::Interrupted => {
                summary.interrupted = true;
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn set_aside(
        &self,
        name: &str,
        summary: impl Fn(&str) -> String,
        details: String,
    ) -> Result<FileEnd> {
        let aside = self.queue.set_aside(name, Place::Work, |aside| Reason {
            summary: summary(aside),
            details,
        })?;
        error!("set aside {name} as failed/{aside}: {}", summary(&aside));
        Ok(FileEnd::SetAside)
    }

    fn process(&self, name: &str, summary: &mut Summary) -> Result<FileEnd> {
        let before = self.queue.begin_attempt(name)?;
        if before >= self.max_attempts {
            return self.set_aside(
                name,
                |aside| {
                    format!(
                        "{name}: the engine died {before} times while running it; read log/build.log for the job that was running, fix the cause, then `t8k-engine retry {aside}`"
                    )
                },
                format!("attempts: {before} (limit {})", self.max_attempts),
            );
        }
        if before > 0 {
            warn!(
                "resuming {name}: an engine stopped while running it (attempt {} of {})",
                before + 1,
                self.max_attempts
            );
        }
        let tag = self.queue.claimed_path(name).display().to_string();
        if before > 0 {
            let killed = crate::supervise::kill_tagged_groups(
                script::JOB_TAG_VAR,
                &tag,
                self.settings.kill_grace,
            );
            if killed > 0 {
                warn!(
                    "stopped {killed} process group(s) that the engine which died left running for {name}"
                );
            }
        }
        let bytes = match self.queue.read_claimed(name) {
            Ok(bytes) => bytes,
            Err(e) => {
                return self.set_aside(
                    name,
                    |_| {
                        format!("{name}: {e}; triggers must be small regular files, drop a new one")
                    },
                    String::new(),
                );
            }
        };
        let specs = match trigger::parse_with_notes(&bytes) {
            Ok((specs, notes)) => {
                for note in notes {
                    info!("{name} {note}");
                }
                specs
            }
            Err(e) => {
                return self.set_aside(
                    name,
                    |aside| format!("{name} {e}; no job in it ran: fix failed/{aside}, then `t8k-engine retry {aside}`"),
                    format!("content:\n{}", trigger::printable(&bytes)),
                );
            }
        };
        // Resolve and check every job before running any, so a bad line never leaves a file half-done.
        let mut jobs = Vec::new();
        for spec in specs {
            let prepared = self
                .layout
                .target(&spec)
                .map_err(|e| format!("{e:#}"))
                .and_then(|target| {
                    script::check_command(&self.scripts, &self.settings, spec.kind, &spec.command)
                        .map(|()| target)
                        .map_err(|e| e.headline())
                });
            match prepared {
                Ok(target) => jobs.push(self.job(name, spec, target)),
                Err(problem) => {
                    let line = spec.line;
                    return self.set_aside(
                        name,
                        |aside| format!("{name} line {line}: {problem}; no job in it ran: fix it, then `t8k-engine retry {aside}`"),
                        format!("line {line}: {}", spec.to_line()),
                    );
                }
            }
        }
        let total = jobs.len();
        // Success hooks run once the whole file is done, so that they see the trigger removed.
        let mut succeeded = Vec::new();
        for (i, job) in jobs.into_iter().enumerate() {
            let span = tracing::info_span!("job", id = %job.id);
            let _entered = span.enter();
            let settings = Settings {
                job_tag: Some(tag.clone()),
                ..self.settings.clone()
            };
            crate::joblog::prune(
                &self.job_logs.0,
                self.job_logs.1.saturating_sub(1),
                self.job_logs.2,
            );
            let job_cancel = self.cancel.child();
            *self.job_cancel.lock().unwrap() = Some(job_cancel.clone());
            let ctx = JobCtx::new(settings, job_cancel.clone(), self.job_timeout, false);
            let (journal, job_id) = (self.journal.clone(), job.id.clone());
            ctx.on_step(Box::new(move |name, branch| {
                let event = crate::history::Event::StepStarted {
                    job_id: job_id.clone(),
                    name: name.to_string(),
                    branch: branch.to_string(),
                    at: jiff::Timestamp::now().to_string(),
                };
                if let Err(e) = journal.append(&event) {
                    warn!("cannot record step `{name}` in the history: {e:#}");
                }
            }));
            let (journal, job_id) = (self.journal.clone(), job.id.clone());
            ctx.on_step_end(Box::new(move |step| {
                let event = crate::history::Event::StepFinished {
                    job_id: job_id.clone(),
                    step: step.clone(),
                    at: jiff::Timestamp::now().to_string(),
                };
                if let Err(e) = journal.append(&event) {
                    warn!(
                        "cannot record the end of step `{}` in the history: {e:#}",
                        step.name
                    );
                }
            }));
            let started = Instant::now();
            self.record(crate::history::Event::JobStarted {
                job_id: job.id.clone(),
                trigger: name.to_string(),
                line: job.spec.line,
                target: job.spec.target_name(),
                command: job.spec.command.clone(),
                attempt: before + 1,
                at: jiff::Timestamp::now().to_string(),
            });
            crate::fault_point!("job.started");
            let finished = |result: &str, failed_step: Option<String>, reason: Option<String>| {
                crate::history::Event::JobFinished {
                    job_id: job.id.clone(),
                    result: result.into(),
                    failed_step,
                    reason,
                    duration_ms: started.elapsed().as_millis() as u64,
                    steps: ctx.steps(),
                    at: jiff::Timestamp::now().to_string(),
                }
            };
            info!(
                "job {}/{total} started: {} {} ({name} line {}, attempt {})",
                i + 1,
                job.spec.target_name(),
                job.spec.command,
                job.spec.line,
                before + 1
            );
            let outcome = script::run_job(&self.scripts, &ctx, job.clone());
            // A job that ended (not one cut short by the engine stopping) decided what stays live.
            if outcome.is_ok() || !self.cancel.is_cancelled() {
                crate::release::clear_pending(&crate::release::pending_dir(
                    &self.settings.releases_dir,
                ))?;
            }
            match outcome {
                Ok(_) => {
                    crate::fault_point!("job.finished");
                    summary.jobs_ok += 1;
                    self.record(finished("succeeded", None, None));
                    succeeded.push(job.clone());
                    info!(
                        "job succeeded in {:.1}s; steps: {}",
                        started.elapsed().as_secs_f64(),
                        steps_line(&ctx)
                    );
                }
                Err(_) if self.cancel.is_cancelled() => {
                    let why = self
                        .cancel
                        .reason()
                        .unwrap_or_else(|| "stop requested".into());
                    warn!(
                        "job interrupted ({why}); {name} stays claimed and runs first when the engine starts again"
                    );
                    self.record(finished("interrupted", None, Some(why)));
                    self.queue.reset_attempts(name, before)?;
                    return Ok(FileEnd::Interrupted);
                }
                Err(_) if job_cancel.is_cancelled() => {
                    summary.jobs_failed += 1;
                    let why = job_cancel.reason().unwrap_or_else(|| "cancelled".into());
                    let line = job.spec.line;
                    self.record(finished(
                        "cancelled",
                        ctx.failure().and_then(|(s, _)| s),
                        Some(why.clone()),
                    ));
                    let end = self.set_aside(
                        name,
                        |aside| format!("{name} line {line}: cancelled ({why}); `t8k-engine retry {aside}` runs it again"),
                        format!("steps:\n{}", steps_line(&ctx)),
                    )?;
                    self.after_job(
                        &job,
                        Some(failure_map(&job, &ctx, &format!("cancelled ({why})"), &why)),
                    );
                    return Ok(end);
                }
                Err(e) => {
                    summary.jobs_failed += 1;
                    let (summary_line, details) =
                        failure_report(name, &job, &ctx, &e, started.elapsed(), i, total);
                    let result = if e.headline().contains("rolled back:") {
                        "rolled_back"
                    } else {
                        "failed"
                    };
                    let step = ctx.failure().and_then(|(step, _)| step);
                    self.record(finished(
                        result,
                        step,
                        Some(summary_line.replace("{aside}", name)),
                    ));
                    let end = self.set_aside(
                        name,
                        |aside| summary_line.replace("{aside}", aside),
                        details,
                    )?;
                    self.after_job(
                        &job,
                        Some(failure_map(
                            &job,
                            &ctx,
                            &e.headline(),
                            &summary_line.replace("{aside}", name),
                        )),
                    );
                    return Ok(end);
                }
            }
        }
        self.queue.complete(name)?;
        info!("{name}: all {total} job(s) succeeded; trigger removed");
        for job in &succeeded {
            self.after_job(job, None);
        }
        Ok(FileEnd::Done)
    }

    fn job(&self, trigger: &str, spec: JobSpec, target: crate::layout::Target) -> Job {
        Job {
            id: ulid::Ulid::new().to_string(),
            spec,
            trigger: trigger.to_string(),
            root: self.layout.root.display().to_string(),
            target,
        }
    }
}

/// The job history of a state directory.
pub fn journal(layout: &Layout) -> crate::history::Journal {
    // `.t8k-engine/history`: both are the engine's own.
    crate::history::Journal::new(&layout.engine_dir.join("history"), 2, 8 << 20)
}

impl Drainer {
    /// Records a job event; the history must never be why a build fails, so a write error is only logged.
    fn record(&self, event: crate::history::Event) {
        if let Err(e) = self.journal.append(&event) {
            warn!("cannot record the job in the history: {e:#}");
        }
    }

    /// After a job: the script's notification hooks, then the metrics file. Neither can change the
    /// job's result; their failures are logged.
    fn after_job(&self, job: &Job, failure: Option<rhai::Map>) {
        let hook = |name: &str, args: Vec<rhai::Dynamic>| match script::call_hook(
            &self.scripts,
            &self.settings,
            job,
            name,
            args,
        ) {
            Ok(_) => {}
            Err(e) => warn!(
                "notification hook {name} of {}.rhai failed: {}; the job's result stands",
                job.spec.kind,
                e.headline()
            ),
        };
        match failure {
            Some(f) => hook("on_failure", vec![rhai::Dynamic::from_map(f)]),
            None => {
                let release =
                    crate::release::last(&self.settings.releases_dir, &job.spec.target_name())
                        .ok()
                        .flatten()
                        .and_then(|v| rhai::serde::to_dynamic(v).ok())
                        .unwrap_or_else(|| rhai::Dynamic::from_map(rhai::Map::new()));
                hook("on_success", vec![release]);
                let (jobs, _) = crate::history::jobs(&self.journal.read(), false);
                let before = jobs
                    .iter()
                    .filter(|j| j.target == job.spec.target_name() && j.job_id != job.id)
                    .find(|j| {
                        matches!(
                            j.result.as_str(),
                            "succeeded" | "failed" | "rolled_back" | "cancelled"
                        )
                    });
                if before.is_some_and(|j| j.result != "succeeded") {
                    hook("on_recovery", Vec::new());
                }
            }
        }
        let count = |dir: &std::path::Path, f: fn(&str) -> bool| {
            std::fs::read_dir(dir).map_or(0, |rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_str().is_some_and(f))
                    .count()
            })
        };
        let gauges = crate::metrics::Gauges {
            queue_depth: count(&self.layout.state, trigger::is_trigger_name),
            set_aside: count(&self.layout.failed, |n| {
                !n.ends_with(".reason") && !n.starts_with('.')
            }),
        };
        if let Err(e) = crate::metrics::write(&self.metrics_file, &self.journal.read(), &gauges) {
            warn!(
                "cannot write metrics to {}: {e:#}",
                self.metrics_file.display()
            );
        }
    }

    /// The journal this pass records into.
    pub fn journal(&self) -> &crate::history::Journal {
        &self.journal
    }
}

/// What `on_failure(job, failure)` receives. Hooks post it to chat and mail, so its text is redacted.
fn failure_map(job: &Job, ctx: &JobCtx, message: &str, reason: &str) -> rhai::Map {
    use crate::redact::redact;
    let failure = ctx.failure();
    let mut m = rhai::Map::new();
    m.insert("job_id".into(), job.id.clone().into());
    m.insert("trigger".into(), job.trigger.clone().into());
    m.insert(
        "step".into(),
        failure
            .as_ref()
            .and_then(|(s, _)| s.clone())
            .map_or(rhai::Dynamic::UNIT, rhai::Dynamic::from),
    );
    m.insert("message".into(), redact(message).into_owned().into());
    m.insert("reason".into(), redact(reason).into_owned().into());
    let tail: rhai::Array = failure
        .map(|(_, f)| {
            f.tail
                .iter()
                .map(|l| rhai::Dynamic::from(redact(l).into_owned()))
                .collect()
        })
        .unwrap_or_default();
    m.insert("tail".into(), tail.into());
    m
}

/// The host-function settings derived from the configuration.
pub fn settings(config: &Config) -> Settings {
    Settings {
        step_timeout: Duration::from_secs(config.step_timeout),
        kill_grace: Duration::from_secs(config.kill_grace),
        systemctl: config.systemctl.clone(),
        sudo_systemctl: config.sudo_systemctl,
        pm2: config.pm2.clone(),
        http_timeout: Duration::from_secs(config.http_timeout),
        job_tag: None,
        low_priority: config.build_priority == "low",
        releases_dir: crate::layout::Layout::new(config)
            .engine_dir
            .join("releases"),
        keep_releases: config.keep_releases,
        build_limits: config.build_limits.clone(),
        env: config.step_env(),
    }
}

fn steps_line(ctx: &JobCtx) -> String {
    let steps = ctx.steps();
    if steps.is_empty() {
        return "none recorded".into();
    }
    steps
        .iter()
        .map(|s| {
            format!(
                "{} {:.1}s{}",
                s.name,
                s.wall_ms as f64 / 1000.0,
                if s.ok == Some(false) { " FAILED" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The reason of a failed job: a one-line summary (with `{aside}` for the set-aside name) and the details.
fn failure_report(
    name: &str,
    job: &Job,
    ctx: &JobCtx,
    err: &JobError,
    took: Duration,
    index: usize,
    total: usize,
) -> (String, String) {
    let failure = ctx.failure();
    let step = failure.as_ref().and_then(|(step, _)| step.clone());
    let step_part = step
        .as_ref()
        .map(|s| format!("step `{s}` failed: "))
        .unwrap_or_default();
    let summary = format!(
        "{name} line {} ({} {}): {step_part}{}; fix the cause, then `t8k-engine retry {{aside}}`",
        job.spec.line,
        job.spec.target_name(),
        job.spec.command,
        err.headline()
    );
    let mut details = format!(
        "when: {}\ntrigger: {name} line {}: {}\njob: {} ({} of {total}), ran {:.1}s\nfailed step: {}\n",
        jiff::Timestamp::now(),
        job.spec.line,
        job.spec.to_line(),
        job.id,
        index + 1,
        took.as_secs_f64(),
        step.as_deref().unwrap_or("(outside any step)")
    );
    if index > 0 {
        details.push_str(&format!("note: the {index} job(s) before it in this file succeeded and will run again on retry\n"));
    }
    details.push_str(&format!(
        "\nerror:\n  {}\n",
        err.details().replace('\n', "\n  ")
    ));
    // run() errors quote the tail of stderr when it has several lines; then it is not repeated here.
    let detail_text = err.details();
    if let Some((_, f)) = &failure
        && !f.tail.is_empty()
        && !detail_text.contains("output tail:")
    {
        details.push_str(&format!("\noutput tail:\n  {}\n", f.tail.join("\n  ")));
    }
    let steps = ctx.steps();
    if !steps.is_empty() {
        details.push_str("\nsteps:\n");
        for s in steps {
            let state = match s.ok {
                _ if s.cancelled => "cancelled",
                Some(true) => "ok",
                Some(false) => "FAILED",
                None => "unfinished",
            };
            let branch = if s.branch.is_empty() {
                String::new()
            } else {
                format!(" [{}]", s.branch)
            };
            details.push_str(&format!(
                "  {}{branch}: {state}, {:.1}s, cpu {:.1}s, peak rss {} MiB\n",
                s.name,
                s.wall_ms as f64 / 1000.0,
                (s.user_cpu_ms + s.sys_cpu_ms) as f64 / 1000.0,
                s.max_rss_kib / 1024
            ));
        }
    }
    (summary, details)
}
