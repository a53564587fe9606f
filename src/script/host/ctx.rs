//! Owns one job's context as the host functions share it: its settings, cancel token and deadline, the
//! record of its steps and of the failure that explains it, and the `parallel` branch each script thread
//! runs. It runs nothing itself.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Res;
use crate::cancel::Cancel;
use crate::history::StepRecord;
use crate::script::Settings;

/// The most `parallel` branches a job may run at once, nested ones included: each is a thread, and
/// nesting multiplies them.
pub const MAX_BRANCHES: usize = 16;

/// Told of every step as it starts and ends (the engine records it for `status`, the web page and
/// status.json).
pub type StepHook = Box<dyn Fn(StepEvent<'_>) + Send + Sync>;

/// A step starting or ending, as the step hook is told.
pub enum StepEvent<'a> {
    /// A step started: its name and `parallel` branch.
    Started(&'a str, &'a str),
    /// A step ended, with its record (time, CPU, memory, outcome).
    Ended(&'a StepRecord),
}

/// What explains a failed job: the step that failed and what its process printed last.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The failed step's name, when the failure happened inside a step.
    pub step: Option<String>,
    /// The error's first line.
    pub message: String,
    /// The last lines of output of the failing process.
    pub tail: Vec<String>,
}

/// A failure as noted while the job runs: its step by index into the step records.
#[derive(Debug, Clone)]
struct Noted {
    step: Option<usize>,
    message: String,
    tail: Vec<String>,
}

/// Per-job state shared by every host function and `parallel` branch of one job.
pub struct JobCtx {
    /// Settings from the configuration.
    pub settings: Settings,
    /// Cancelled when the engine stops or the job is cancelled.
    pub cancel: Cancel,
    /// When the job must be over.
    pub deadline: Option<Instant>,
    /// The job's time limit, for messages.
    pub job_timeout: Duration,
    /// Check mode: functions that act refuse to run.
    pub dry: bool,
    started: Instant,
    steps: Mutex<Vec<StepRecord>>,
    failure: Mutex<Option<Noted>>,
    step_hook: Mutex<Option<StepHook>>,
    /// `parallel` branches running now, nested ones included.
    branches: AtomicUsize,
    /// What the job switched, for the release it records (`release::Tracker`).
    pub releases: crate::release::Tracker,
}

/// A wait clamped to what is left of the job's time.
pub(super) struct Limit {
    /// The wait to use.
    pub timeout: Duration,
    /// Whether the job's deadline, not the wait asked for, set it.
    pub by_deadline: bool,
}

impl JobCtx {
    /// A fresh context for one job.
    pub fn new(
        settings: Settings,
        cancel: Cancel,
        job_timeout: Duration,
        dry: bool,
    ) -> Arc<JobCtx> {
        let started = Instant::now();
        Arc::new(JobCtx {
            settings,
            cancel,
            deadline: (!dry).then(|| started + job_timeout),
            job_timeout,
            dry,
            started,
            steps: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            step_hook: Mutex::new(None),
            branches: AtomicUsize::new(0),
            releases: crate::release::Tracker::default(),
        })
    }

    /// Calls `hook` as each step starts and ends.
    pub fn on_step(&self, hook: StepHook) {
        *self.step_hook.lock().unwrap() = Some(hook);
    }

    /// The steps recorded so far.
    pub fn steps(&self) -> Vec<StepRecord> {
        self.steps.lock().unwrap().clone()
    }

    /// The failure recorded for the job, if any, with its step's name.
    pub fn failure(&self) -> Option<Failure> {
        let noted = self.failure.lock().unwrap().clone()?;
        let step = noted
            .step
            .and_then(|i| self.steps.lock().unwrap().get(i).map(|s| s.name.clone()));
        Some(Failure {
            step,
            message: noted.message,
            tail: noted.tail,
        })
    }

    /// Why the script should stop now, if it should (checked between operations).
    pub fn stop_reason(&self) -> Option<String> {
        let cancel = self.current_cancel();
        if cancel.is_cancelled() {
            return Some(cancel.reason().unwrap_or_else(|| "job cancelled".into()));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(self.over_time(""));
        }
        None
    }

    /// The one message for a job out of time, with what it was `doing` (" while …", or nothing).
    pub(super) fn over_time(&self, doing: &str) -> String {
        format!(
            "job exceeded its time limit of {}s{doing}",
            self.job_timeout.as_secs()
        )
    }

    /// `asked`, or what is left of the job's time when that is less (no deadline: checking scripts).
    pub(super) fn limit(&self, asked: Duration) -> Limit {
        let left = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        Limit {
            timeout: left.map_or(asked, |l| l.min(asked)),
            by_deadline: left.is_some_and(|l| l < asked),
        }
    }

    /// How long the job has run.
    pub(super) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Refuses a function that acts while scripts are only being checked.
    pub(super) fn refuse_in_check(&self, f: &str) -> Res<()> {
        if self.dry {
            return Err(format!("{f}() is not allowed while checking scripts (top-level code must only import and define)").into());
        }
        Ok(())
    }

    /// The cancel token of the branch this thread runs (the job's outside `parallel`).
    pub(super) fn current_cancel(&self) -> Cancel {
        BRANCH
            .with(|b| b.borrow().cancel.clone())
            .unwrap_or_else(|| self.cancel.clone())
    }

    /// Where a trigger's job notes its switches (see `release::pending_dir`); `eval` notes none, so an
    /// operator's manual switch is never undone by the next engine start.
    pub(super) fn pending_releases(&self) -> Option<PathBuf> {
        self.settings
            .job_tag
            .as_ref()
            .map(|_| crate::release::pending_dir(&self.settings.releases_dir))
    }

    /// Notes a failure of the innermost step this thread has open (or of no step).
    pub(super) fn fail_here(&self, message: String, tail: Vec<String>) {
        let step = BRANCH.with(|b| b.borrow().steps.last().copied());
        self.note_failure(Noted {
            step,
            message,
            tail,
        });
    }

    fn note_failure(&self, failure: Noted) {
        let mut slot = self.failure.lock().unwrap();
        // Keep the innermost failure: an outer step re-raising the same error must not replace it.
        let newer = match (&*slot, failure.step) {
            (None, _) => true,
            (Some(old), Some(new)) => old.step.is_none_or(|o| new > o),
            (Some(_), None) => false,
        };
        if newer {
            *slot = Some(failure);
        }
    }

    /// Records a step starting on this thread's branch and tells the step hook; returns its index.
    pub(super) fn open_step(&self, name: &str) -> usize {
        let branch = branch_label();
        let idx = {
            let mut steps = self.steps.lock().unwrap();
            steps.push(StepRecord::started(
                name,
                &branch,
                self.started.elapsed().as_millis() as u64,
            ));
            steps.len() - 1
        };
        if let Some(hook) = self.step_hook.lock().unwrap().as_ref() {
            hook(StepEvent::Started(name, &branch));
        }
        idx
    }

    /// Records how step `idx` ended; returns its record.
    pub(super) fn close_step(
        &self,
        idx: usize,
        wall: Duration,
        ok: bool,
        cancelled: bool,
    ) -> StepRecord {
        let record = {
            let mut steps = self.steps.lock().unwrap();
            let s = &mut steps[idx];
            s.wall_ms = wall.as_millis() as u64;
            s.ok = Some(ok);
            s.cancelled = cancelled;
            s.clone()
        };
        if let Some(hook) = self.step_hook.lock().unwrap().as_ref() {
            hook(StepEvent::Ended(&record));
        }
        record
    }

    /// A step that succeeded: a failure caught inside it no longer explains anything.
    pub(super) fn forget_failures_from(&self, idx: usize) {
        let mut slot = self.failure.lock().unwrap();
        if slot
            .as_ref()
            .is_some_and(|f| f.step.is_some_and(|s| s >= idx))
        {
            *slot = None;
        }
    }

    /// A step that failed on its own (not cancelled): its error explains the job unless an inner one does.
    pub(super) fn fail_step(&self, idx: usize, message: String) {
        self.note_failure(Noted {
            step: Some(idx),
            message,
            tail: Vec::new(),
        });
    }

    /// Adds a process's CPU time, peak memory and disk I/O to every step this thread has open.
    pub(super) fn charge_open_steps(&self, out: &crate::supervise::Outcome) {
        let open_steps = BRANCH.with(|b| b.borrow().steps.clone());
        let mut steps = self.steps.lock().unwrap();
        for i in open_steps {
            if let Some(s) = steps.get_mut(i) {
                s.user_cpu_ms += out.user_cpu.as_millis() as u64;
                s.sys_cpu_ms += out.sys_cpu.as_millis() as u64;
                s.max_rss_kib = s.max_rss_kib.max(out.max_rss_kib);
                s.read_bytes += out.read_bytes;
                s.written_bytes += out.written_bytes;
            }
        }
    }

    /// Counts `n` more branches running, refused past [`MAX_BRANCHES`]; released when the slots drop.
    pub(super) fn reserve_branches(&self, n: usize) -> Result<BranchSlots<'_>, String> {
        let running = self.branches.fetch_add(n, SeqCst) + n;
        let slots = BranchSlots(&self.branches, n);
        if running > MAX_BRANCHES {
            return Err(format!(
                "parallel(): {n} more branch(es) would make {running} run at once, over the limit of {MAX_BRANCHES} for a job; run fewer at a time (for example in groups, one parallel() after another)"
            ));
        }
        Ok(slots)
    }
}

/// Branches counted as running until dropped, however the `parallel` call ends.
pub(super) struct BranchSlots<'a>(&'a AtomicUsize, usize);

impl Drop for BranchSlots<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, SeqCst);
    }
}

/// The `parallel` branch the current thread runs: its label, cancel scope and open steps. Log lines
/// carry the label through the `branch` span the branch runs in, not through this.
#[derive(Default, Clone)]
pub(super) struct Branch {
    /// `name`, or `outer/name` for a nested branch; empty outside `parallel`.
    pub label: String,
    /// Cancelled when a sibling branch fails.
    pub cancel: Option<Cancel>,
    /// Indexes of the steps open on this thread, innermost last.
    pub steps: Vec<usize>,
}

thread_local! {
    static BRANCH: RefCell<Branch> = RefCell::new(Branch::default());
}

/// The branch this thread runs.
pub(super) fn current_branch() -> Branch {
    BRANCH.with(|b| b.borrow().clone())
}

/// Makes this thread run `branch`.
pub(super) fn enter_branch(branch: Branch) {
    BRANCH.with(|b| *b.borrow_mut() = branch);
}

fn branch_label() -> String {
    BRANCH.with(|b| b.borrow().label.clone())
}

/// Marks step `idx` open on this thread until the guard drops, however the step ends.
pub(super) fn step_open(idx: usize) -> StepGuard {
    BRANCH.with(|b| b.borrow_mut().steps.push(idx));
    StepGuard
}

/// Pops the step index when a step ends.
pub(super) struct StepGuard;

impl Drop for StepGuard {
    fn drop(&mut self) {
        BRANCH.with(|b| {
            b.borrow_mut().steps.pop();
        });
    }
}
