//! Owns the job history: an append-only journal of job events as JSON lines (each record fsynced, rotated
//! by size, a torn last line ignored on read) and the per-job view built from it; it never runs jobs.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::owndir::OwnDir;
use crate::script::StepRecord;

/// Journal files kept after rotation (`journal.1.jsonl` is the newest rotated one).
const ROTATED: usize = 3;

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
        /// `succeeded`, `failed`, `rolled_back` or `interrupted`.
        result: String,
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
}

/// The journal under the engine's directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    /// How many trailing components of `dir` are the engine's own (never followed through a link).
    own: usize,
    max_bytes: u64,
}

const CURRENT: &str = "journal.jsonl";

fn rotated(n: usize) -> String {
    format!("journal.{n}.jsonl")
}

impl Journal {
    /// The journal in `dir` (created on first write), rotated past `max_bytes`; the last `own`
    /// components of `dir` are the engine's own directories (2 for `.t8k-engine/history`).
    pub fn new(dir: &Path, own: usize, max_bytes: u64) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
            own,
            max_bytes,
        }
    }

    /// Appends one event durably: a crash can tear at most this line, never an earlier one.
    pub fn append(&self, event: &Event) -> Result<()> {
        let dir = OwnDir::open(&self.dir, self.own)?;
        let path = dir.join(CURRENT);
        // Reasons and step names can quote command lines and output: no credential is kept on disk.
        let mut value = serde_json::to_value(event)?;
        crate::redact::redact_json(&mut value);
        let mut line = value.to_string();
        line.push('\n');
        let open = || -> Result<std::fs::File> {
            (|| -> std::io::Result<()> {
                crate::fault_point!("journal.append");
                Ok(())
            })()
            .with_context(|| format!("cannot append to {}", path.display()))?;
            dir.append(CURRENT)
        };
        let mut f = open()?;
        if f.metadata().is_ok_and(|m| m.len() >= self.max_bytes) {
            drop(f);
            self.rotate(&dir)?;
            f = open()?;
        }
        if !ends_with_newline(&f) {
            // The last record was torn by a crash: end it, or this record would join it and be lost too.
            line.insert(0, '\n');
        }
        // One write call per record, so that concurrent readers see whole lines or a torn last one.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("journal.torn", |_| {
            // A crash in the middle of the write: half a record reaches the file, then the engine dies.
            let _ = f.write_all(&line.as_bytes()[..line.len() / 2]);
            let _ = f.sync_data();
            Err(crate::faults::injected("journal.torn", Some("kill".into())).into())
        });
        f.write_all(line.as_bytes())
            .with_context(|| format!("cannot append to {}", path.display()))?;
        f.sync_data()
            .with_context(|| format!("cannot sync {}", path.display()))?;
        Ok(())
    }

    fn rotate(&self, dir: &OwnDir) -> Result<()> {
        let _ = dir.remove(rotated(ROTATED));
        let fd = dir.fd();
        for n in (1..ROTATED).rev() {
            let _ = rustix::fs::renameat(fd, rotated(n).as_str(), fd, rotated(n + 1).as_str());
        }
        rustix::fs::renameat(fd, CURRENT, fd, rotated(1).as_str())
            .map_err(std::io::Error::from)
            .context("cannot rotate the journal")?;
        dir.sync()
    }

    /// The journal's files, oldest first (some may not exist): the rotated ones, then the current one.
    /// For readers outside the engine (the fleet bridge tails them); the engine itself reads through
    /// its checked directory.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = (1..=ROTATED)
            .rev()
            .map(|n| self.dir.join(rotated(n)))
            .collect();
        files.push(self.dir.join(CURRENT));
        files
    }

    /// Every readable event, oldest first. Lines that do not parse (a record torn by a crash, a newer
    /// engine's event kinds) are skipped, and so are files that are not regular files.
    pub fn read(&self) -> Vec<Event> {
        let Ok(Some(dir)) = OwnDir::open_to_read(&self.dir, self.own) else {
            return Vec::new();
        };
        let mut files: Vec<String> = (1..=ROTATED).rev().map(rotated).collect();
        files.push(CURRENT.to_string());
        files
            .iter()
            .filter_map(|name| dir.read(name, 1 << 30).ok().flatten())
            .flat_map(|bytes| {
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect::<Vec<Event>>()
            })
            .collect()
    }
}

/// Whether a journal file is empty or ends with a whole record.
fn ends_with_newline(f: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().map_or(0, |m| m.len());
    let mut last = [b'\n'];
    len == 0 || (f.read_exact_at(&mut last, len - 1).is_ok() && last[0] == b'\n')
}

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
    /// `succeeded`, `failed`, `rolled_back`, `interrupted`, `interrupted_rerun` or `running`.
    pub result: String,
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
    let mut views: Vec<JobView> = Vec::new();
    let mut superseded = Vec::new();
    // Trigger file -> who asked for it, from `Requested` records (written before the trigger is dropped).
    let asked: std::collections::HashMap<&str, &str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Requested {
                by,
                trigger: Some(trigger),
                ..
            } => Some((trigger.as_str(), by.as_str())),
            _ => None,
        })
        .collect();
    for event in events {
        match event {
            Event::JobStarted {
                job_id,
                trigger,
                line,
                target,
                command,
                attempt,
                at,
            } => views.push(JobView {
                job_id: job_id.clone(),
                trigger: trigger.clone(),
                line: *line,
                target: target.clone(),
                command: command.clone(),
                attempt: *attempt,
                started_at: at.clone(),
                result: String::new(),
                failed_step: None,
                reason: None,
                duration_ms: None,
                steps: Vec::new(),
                requested_by: asked.get(trigger.as_str()).map(|by| by.to_string()),
                cancelled_by: None,
            }),
            Event::JobFinished {
                job_id,
                result,
                failed_step,
                reason,
                duration_ms,
                steps,
                ..
            } => {
                if let Some(v) = views.iter_mut().rev().find(|v| &v.job_id == job_id) {
                    v.result = result.clone();
                    v.failed_step = failed_step.clone();
                    v.reason = reason.clone();
                    v.duration_ms = Some(*duration_ms);
                    v.steps = steps.clone();
                }
            }
            Event::Superseded { .. } => superseded.push(event.clone()),
            Event::Requested {
                action, by, job_id, ..
            } => {
                if action == "cancel"
                    && let Some(v) = views
                        .iter_mut()
                        .rev()
                        .find(|v| Some(&v.job_id) == job_id.as_ref())
                {
                    v.cancelled_by = Some(by.clone());
                }
            }
            Event::StepStarted { .. } | Event::StepFinished { .. } => {}
        }
    }
    let unfinished: Vec<usize> = (0..views.len())
        .filter(|&i| views[i].result.is_empty())
        .collect();
    let last = views.len().saturating_sub(1);
    for i in unfinished {
        let rerun = views[i + 1..]
            .iter()
            .any(|later| later.trigger == views[i].trigger && later.line == views[i].line);
        views[i].result = match (rerun, engine_running && i == last) {
            (true, _) => "interrupted_rerun",
            (false, true) => "running",
            (false, false) => "interrupted",
        }
        .into();
    }
    views.reverse();
    (views, superseded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(id: &str, trigger: &str) -> Event {
        Event::JobStarted {
            job_id: id.into(),
            trigger: trigger.into(),
            line: 1,
            target: "main".into(),
            command: "build".into(),
            attempt: 1,
            at: "2026-11-24T00:00:00Z".into(),
        }
    }

    fn finished(id: &str, result: &str) -> Event {
        Event::JobFinished {
            job_id: id.into(),
            result: result.into(),
            failed_step: None,
            reason: None,
            duration_ms: 5,
            steps: Vec::new(),
            at: "2026-11-24T00:00:01Z".into(),
        }
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_earlier_records_survive() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("history");
        let j = Journal::new(&dir, 1, 1 << 20);
        j.append(&started("a", "build-1.csv")).unwrap();
        j.append(&finished("a", "succeeded")).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("journal.jsonl"))
            .unwrap();
        f.write_all(b"{\"event\":\"job_started\",\"job_id\":\"b\",\"trig")
            .unwrap();
        assert_eq!(
            j.read(),
            vec![started("a", "build-1.csv"), finished("a", "succeeded")]
        );
        // The next record after a crash starts on a line of its own, so it is not lost with the fragment.
        j.append(&started("c", "build-2.csv")).unwrap();
        assert_eq!(
            j.read(),
            vec![
                started("a", "build-1.csv"),
                finished("a", "succeeded"),
                started("c", "build-2.csv")
            ]
        );
        let raw = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap();
        assert_eq!(raw.lines().count(), 4, "{raw}");
    }

    #[test]
    fn rotation_keeps_a_bounded_number_of_files_and_reads_them_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("history");
        let j = Journal::new(&dir, 1, 200);
        for i in 0..40 {
            j.append(&started(&format!("j{i:02}"), "build-1.csv"))
                .unwrap();
        }
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert!(files <= ROTATED + 1, "{files} files");
        let ids: Vec<String> = j
            .read()
            .into_iter()
            .map(|e| match e {
                Event::JobStarted { job_id, .. } => job_id,
                _ => unreachable!(),
            })
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "oldest first across rotated files");
        assert_eq!(ids.last().unwrap(), "j39");
    }

    #[test]
    fn a_journal_from_before_serve_reads_the_same_and_requests_name_who_asked() {
        // Records as an engine without `step_finished` and `requested` wrote them.
        let old = "{\"event\":\"job_started\",\"job_id\":\"a\",\"trigger\":\"build-1.csv\",\"line\":1,\"target\":\"main\",\"command\":\"build\",\"attempt\":1,\"at\":\"2026-11-24T00:00:00Z\"}\n\
                   {\"event\":\"step_started\",\"job_id\":\"a\",\"name\":\"pull\",\"branch\":\"\",\"at\":\"2026-11-24T00:00:00Z\"}\n";
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("history");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("journal.jsonl"), old).unwrap();
        let j = Journal::new(&dir, 1, 1 << 20);
        assert_eq!(j.read().len(), 2);
        j.append(&Event::Requested {
            action: "trigger".into(),
            by: "ops".into(),
            detail: "type=main,tenant=default,command=build".into(),
            trigger: Some("build-2.csv".into()),
            job_id: None,
            at: "2026-11-24T00:00:01Z".into(),
        })
        .unwrap();
        j.append(&started("b", "build-2.csv")).unwrap();
        j.append(&Event::Requested {
            action: "cancel".into(),
            by: "cms".into(),
            detail: "job b".into(),
            trigger: None,
            job_id: Some("b".into()),
            at: "2026-11-24T00:00:02Z".into(),
        })
        .unwrap();
        let (jobs, _) = jobs(&j.read(), true);
        assert_eq!(jobs[0].job_id, "b");
        assert_eq!(jobs[0].requested_by.as_deref(), Some("ops"));
        assert_eq!(jobs[0].cancelled_by.as_deref(), Some("cms"));
        assert_eq!(
            jobs[1].requested_by, None,
            "the old job asked for by no one"
        );
        // The JSON of a job nobody asked for is what it was before.
        assert!(
            !serde_json::to_string(&jobs[1])
                .unwrap()
                .contains("requested_by")
        );
    }

    #[test]
    fn unfinished_jobs_are_running_interrupted_or_rerun() {
        let events = vec![
            started("a", "build-1.csv"),
            started("b", "build-1.csv"),
            finished("b", "failed"),
            started("c", "build-2.csv"),
        ];
        let (jobs, _) = jobs(&events, true);
        let results: Vec<(&str, &str)> = jobs
            .iter()
            .map(|j| (j.job_id.as_str(), j.result.as_str()))
            .collect();
        assert_eq!(
            results,
            [
                ("c", "running"),
                ("b", "failed"),
                ("a", "interrupted_rerun")
            ]
        );
        let (jobs, _) = super::jobs(&events, false);
        assert_eq!(jobs[0].result, "interrupted");
    }
}
