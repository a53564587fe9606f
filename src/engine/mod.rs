//! Owns running the queue: which trigger goes next (`schedule`), what happens to one claimed trigger file
//! (`pass`: prepare, run each job, settle), how a failure reads (`report`) and what follows a job
//! (`after_job`: hooks, metrics). `run` drains with it once; `watch` asks it one trigger at a time. It
//! neither locks nor watches: its caller holds the lock.

mod after_job;
mod doc;
mod pass;
mod report;
mod rollback;
pub mod schedule;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::{error, info, warn};

use crate::cancel::Cancel;
use crate::config::Config;
use crate::fs::OwnDir;
use crate::history::{Event, Journal};
use crate::layout::Layout;
use crate::queue::ready::WriterProbe;
use crate::queue::{Claim, Place, Queue, Reason};
use crate::script::{Scripts, Settings};
use crate::status_doc::StatusFile;

pub use pass::JobOutcome;
use schedule::{Next, Policy, Scheduler};

/// What a pass (or a daemon since its start) did.
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

impl Summary {
    /// Adds what another pass did (the daemon sums its jobs').
    pub fn add(&mut self, other: &Summary) {
        self.jobs_ok += other.jobs_ok;
        self.jobs_failed += other.jobs_failed;
        self.files_done += other.files_done;
        self.set_aside += other.set_aside;
    }
}

/// Which per-job logs are kept.
struct JobLogs {
    dir: std::path::PathBuf,
    keep: usize,
    max_age: Duration,
}

/// The limits a job runs under, from the configuration.
struct Limits {
    job_timeout: Duration,
    max_attempts: u32,
}

/// Runs the triggers of one state directory through the scripts.
pub struct Engine {
    layout: Layout,
    queue: Queue,
    scripts: Scripts,
    settings: Settings,
    limits: Limits,
    policy: Policy,
    journal: Journal,
    job_logs: JobLogs,
    cancel: Cancel,
    /// The running job's own token: `cancel_job` stops that job alone and sets its trigger aside.
    job_cancel: Mutex<Option<Cancel>>,
    /// `status.json`, kept current as jobs and steps start and end.
    status: Arc<StatusFile>,
    /// What `after_job` has read of the journal and what it adds up to.
    since: Mutex<after_job::Since>,
}

/// How one trigger file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileEnd {
    /// Every job succeeded; the file is removed.
    Done,
    /// Moved to `failed/` with its reason.
    SetAside,
    /// The engine is stopping; the file stays claimed and runs first at the next start.
    Interrupted,
}

impl Engine {
    /// Prepares to run; `cancel` stops it (the running job's processes are killed, its trigger stays
    /// claimed). The caller holds the lock: releases an engine left switched but unverified are put back
    /// first, and what a crash left of durable writes is removed.
    pub fn new(config: &Config, layout: &Layout, cancel: Cancel) -> Result<Engine> {
        let settings = Settings::from_config(config, layout);
        let pending = crate::release::pending_dir(&settings.releases_dir);
        // Every directory of the engine's own is checked (and made) before anything is claimed: a link,
        // another user's directory or one others can write stops the engine here, with the reason.
        let queue = Queue::open(layout, config.max_trigger_bytes)?;
        OwnDir::open(&layout.journal_dir, 2)?;
        OwnDir::open(&layout.requests_dir, 2)?;
        OwnDir::open(&pending, 3)?;
        for line in crate::release::recover_pending(&pending)? {
            warn!("{line}");
        }
        queue.remove_torn_writes();
        let journal = Journal::open(layout);
        let (since, jobs) = after_job::Since::start(&journal);
        let status = Arc::new(doc::start(config, layout, &jobs));
        Ok(Engine {
            queue,
            scripts: Scripts::new(&layout.scripts_dir),
            settings,
            limits: Limits {
                job_timeout: config.job_timeout(),
                max_attempts: config.max_attempts,
            },
            policy: Policy {
                stale_after: config.stale_after(),
                writer: WriterProbe::from_config(config),
                coalesce: config.coalesce,
                ..Policy::pass()
            },
            journal,
            job_logs: JobLogs {
                dir: layout.jobs_dir.clone(),
                keep: config.keep_job_logs,
                max_age: config.keep_job_log_age(),
            },
            job_cancel: Mutex::new(None),
            layout: layout.clone(),
            cancel,
            status,
            since: Mutex::new(since),
        })
    }

    /// A scheduler for `watch`, which sets incomplete files aside and coalesces (see [`schedule`]).
    pub fn watch_scheduler(&self) -> Result<Scheduler> {
        Ok(Scheduler::new(
            Policy::watch(&self.policy),
            self.queue.claimed()?,
        ))
    }

    /// Runs everything claimed, then everything in the inbox, until the inbox is empty or the pass is
    /// cancelled (`t8k-engine run`).
    pub fn drain(&self) -> Result<Summary> {
        let mut summary = Summary::default();
        let mut schedule = Scheduler::new(
            Policy {
                coalesce: false,
                ..self.policy
            },
            self.queue.claimed()?,
        );
        loop {
            if self.cancel.is_cancelled() {
                summary.interrupted = true;
                return Ok(summary);
            }
            let ran = match schedule.next(&self.queue, &self.journal, &mut summary)? {
                Next::Claimed(name) => self.run_claimed(&name, &mut summary)?,
                Next::Inbox(name) => {
                    !self.claim(&name, &mut summary)? || self.run_claimed(&name, &mut summary)?
                }
                Next::Wait(until) => {
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    true
                }
                Next::Idle => {
                    self.round_over();
                    return Ok(summary);
                }
            };
            if !ran {
                return Ok(summary);
            }
        }
    }

    /// The queue is empty: the jobs run back to back since it last was are a round, and what their scripts
    /// remembered for each other (`remember`) is forgotten, so that the next round looks again.
    pub fn round_over(&self) {
        let forgotten = self.settings.memo.clear();
        if forgotten > 0 {
            info!("queue empty: forgot {forgotten} value(s) the scripts remembered this round");
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

    /// Runs one claimed trigger to its end; returns false when the engine is stopping (it stays claimed).
    pub fn run_claimed(&self, name: &str, summary: &mut Summary) -> Result<bool> {
        let end = self.process(name, summary);
        self.status.refresh(&self.layout, None);
        match end? {
            FileEnd::Done => summary.files_done += 1,
            FileEnd::SetAside => summary.set_aside += 1,
            FileEnd::Interrupted => {
                summary.interrupted = true;
                return Ok(false);
            }
        }
        Ok(true)
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

    /// The queue this engine works on.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The journal this engine records into.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// `status.json`: the daemon tells it of queue changes and of stopping.
    pub fn status(&self) -> &StatusFile {
        &self.status
    }

    /// Reads the queue into `status.json` again (the daemon calls this when the inbox changed).
    pub fn refresh_status_queue(&self, running: Option<&str>) {
        self.status.refresh(&self.layout, running);
    }

    /// Records a job event; the history must never be why a build fails, so a write error is only logged.
    fn record(&self, event: Event) {
        if let Err(e) = self.journal.append(&event) {
            warn!("cannot record the job in the history: {e:#}");
        }
    }

    /// Sets a claimed trigger aside; `summary` is told the set-aside name, to say how to retry it.
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
        // Followers elsewhere (`trigger --fleet --wait`) learn of it only from the journal.
        self.record(Event::SetAside {
            trigger: name.to_string(),
            reason: summary(&aside),
            set_aside_as: aside,
            at: jiff::Timestamp::now().to_string(),
        });
        Ok(FileEnd::SetAside)
    }
}
