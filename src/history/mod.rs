//! Owns the job history: the events a job and a trigger go through and their JSON form (here), the
//! append-only journal that keeps them (`journal`), reading it on from a cursor (`tail`), the per-job
//! view built from it (`view`) and the history kept up to date by a process that reads it often (`kept`);
//! it never runs jobs and never decides a result, it records the one it is
//! given.

mod journal;
mod kept;
mod tail;
#[cfg(test)]
pub(crate) mod testing;
mod view;

use serde::{Deserialize, Serialize};

pub use journal::Journal;
pub use kept::Kept;
pub use tail::{Cursor, Line, Lines, digest};
pub use view::{JobView, Views, jobs};

/// One thing that happened to a job or a trigger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A job began.
    JobStarted {
        /// Job id.
        job_id: String,
        /// Trigger file name.
        trigger: String,
        /// Line in the trigger file.
        line: usize,
        /// `main`, `multi/TENANT` or `dedicated/SITE`.
        target: String,
        /// The script function.
        command: String,
        /// 1 for the first run of this trigger, more after an engine died.
        attempt: u32,
        /// RFC 3339 time.
        at: String,
    },
    /// A job ended.
    JobFinished {
        /// Job id.
        job_id: String,
        /// How it ended (never `running` or `interrupted_rerun`: those are derived by the view).
        result: JobResult,
        /// The step that failed, if any.
        failed_step: Option<String>,
        /// The one-line reason when it did not succeed.
        reason: Option<String>,
        /// Wall time of the job.
        duration_ms: u64,
        /// Every step with its time, CPU and memory.
        steps: Vec<StepRecord>,
        /// RFC 3339 time.
        at: String,
    },
    /// A named step of a running job began.
    StepStarted {
        /// Job id.
        job_id: String,
        /// The step's name.
        name: String,
        /// Its `parallel` branch, empty on the main line.
        branch: String,
        /// RFC 3339 time.
        at: String,
    },
    /// A named step of a running job ended (a journal from before this kind has only the job's end).
    StepFinished {
        /// Job id.
        job_id: String,
        /// The step with its time, CPU, memory and outcome.
        step: StepRecord,
        /// RFC 3339 time.
        at: String,
    },
    /// Someone asked for something through `t8k-engine serve`: an action with a token, or a git webhook.
    Requested {
        /// `trigger`, `cancel` or `rollback`.
        action: String,
        /// Who asked: the token's name, or `hook:NAME` for a webhook.
        by: String,
        /// What was asked, e.g. the trigger line or the job cancelled.
        detail: String,
        /// The trigger file dropped for it, when one was.
        trigger: Option<String>,
        /// The job it concerns (a cancel), when there is one.
        job_id: Option<String>,
        /// The webhook delivery it came from (the forge's delivery id), so that a replay is known after
        /// `serve` restarts; left out of the JSON when none (older records read the same).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivery: Option<String>,
        /// RFC 3339 time.
        at: String,
    },
    /// A pending trigger was dropped because a newer one asks for the same jobs.
    Superseded {
        /// The dropped trigger.
        trigger: String,
        /// The newer trigger that runs its jobs.
        by: String,
        /// RFC 3339 time.
        at: String,
    },
    /// A claimed trigger was set aside into `failed/`, with or without a job of it having run (a bad line,
    /// a script without its command, a failed job whose trigger is kept for `retry`).
    SetAside {
        /// The trigger.
        trigger: String,
        /// Its name in `failed/`.
        set_aside_as: String,
        /// The first line of its reason.
        reason: String,
        /// RFC 3339 time.
        at: String,
    },
}

/// One named step of a job, as recorded for the log, failure reports and history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The name given to `step()`.
    pub name: String,
    /// The `parallel` branch it ran in (`backend`, `a/b`), empty on the main line.
    pub branch: String,
    /// Milliseconds from the job's start to the step's start.
    pub start_ms: u64,
    /// Wall time in milliseconds (so far, while running).
    pub wall_ms: u64,
    /// User CPU of the processes the step ran, in milliseconds.
    pub user_cpu_ms: u64,
    /// System CPU of the processes the step ran, in milliseconds.
    pub sys_cpu_ms: u64,
    /// Largest resident set of any process the step ran, in KiB.
    pub max_rss_kib: u64,
    /// Bytes its processes read from storage (page-cache hits excluded); left out of the JSON when 0, so
    /// that records of engines that did not count it read and write back the same.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub read_bytes: u64,
    /// Bytes its processes wrote to storage; left out when 0, as `read_bytes`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub written_bytes: u64,
    /// `None` while running.
    pub ok: Option<bool>,
    /// Stopped by a cancel (a failing sibling branch, the engine stopping), not failed by itself.
    #[serde(default)]
    pub cancelled: bool,
}

impl StepRecord {
    /// A step that has just started `start_ms` into its job: no figures yet, `ok` unset.
    pub fn started(name: &str, branch: &str, start_ms: u64) -> StepRecord {
        StepRecord {
            name: name.to_string(),
            branch: branch.to_string(),
            start_ms,
            wall_ms: 0,
            user_cpu_ms: 0,
            sys_cpu_ms: 0,
            max_rss_kib: 0,
            read_bytes: 0,
            written_bytes: 0,
            ok: None,
            cancelled: false,
        }
    }

    /// Wall time in seconds.
    pub fn wall_secs(&self) -> f64 {
        self.wall_ms as f64 / 1000.0
    }

    /// User and system CPU of its processes, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        (self.user_cpu_ms + self.sys_cpu_ms) as f64 / 1000.0
    }

    /// The largest resident set of its processes, in MiB.
    pub fn rss_mib(&self) -> u64 {
        self.max_rss_kib / 1024
    }

    /// What the step cost, as logs and failure reports give it: `1.2s, cpu 0.8s, peak rss 42 MiB`, then
    /// `, disk read 1.0 MiB, written 61 MiB` when its processes read or wrote storage.
    pub fn figures(&self) -> String {
        let mut text = format!(
            "{:.1}s, cpu {:.1}s, peak rss {} MiB",
            self.wall_secs(),
            self.cpu_secs(),
            self.rss_mib()
        );
        if self.read_bytes + self.written_bytes > 0 {
            text.push_str(&format!(
                ", disk read {}, written {}",
                mib(self.read_bytes),
                mib(self.written_bytes)
            ));
        }
        text
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// How a job ended, or where it stands. The journal holds the first five, as their snake_case names; the
/// view derives the two others for jobs that have no end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult {
    /// Every step and check passed.
    Succeeded,
    /// The script failed; nothing it switched in stayed live unless it said so.
    Failed,
    /// The script put the previous release back and failed.
    RolledBack,
    /// Stopped by `t8k-engine cancel`; its trigger is set aside.
    Cancelled,
    /// Stopped because the engine stopped; its trigger stays claimed and runs again first.
    Interrupted,
    /// Derived: a job with no end whose trigger ran again later.
    InterruptedRerun,
    /// Derived: the last job with no end while an engine runs.
    Running,
    /// A result this engine does not know (a newer engine's), kept as written.
    #[serde(untagged)]
    Other(String),
}

impl JobResult {
    /// The name as the journal and `history --json` spell it.
    pub fn as_str(&self) -> &str {
        match self {
            JobResult::Succeeded => "succeeded",
            JobResult::Failed => "failed",
            JobResult::RolledBack => "rolled_back",
            JobResult::Cancelled => "cancelled",
            JobResult::Interrupted => "interrupted",
            JobResult::InterruptedRerun => "interrupted_rerun",
            JobResult::Running => "running",
            JobResult::Other(name) => name,
        }
    }

    /// A job that did not succeed, as a target's last failure counts it: every result but `succeeded`,
    /// `running` and `interrupted_rerun` (its trigger ran again). `JobDoc::failed` reads its name so.
    pub fn is_failure(&self) -> bool {
        !matches!(
            self,
            JobResult::Succeeded | JobResult::Running | JobResult::InterruptedRerun
        )
    }

    /// A job that ran to a verdict of its own: not stopped by the engine, not still running.
    pub fn is_verdict(&self) -> bool {
        matches!(
            self,
            JobResult::Succeeded | JobResult::Failed | JobResult::RolledBack | JobResult::Cancelled
        )
    }
}

impl std::fmt::Display for JobResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
