//! `t8k-engine logs`: a job's own log (every line logged inside it, with its steps), and with `--follow`
//! its new lines while it runs.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::Ctx;
use crate::error::{Exit, usage};
use crate::history::{JobResult, JobView, Journal};
use crate::lock::EngineLock;

/// How often a followed log is read again.
const POLL: Duration = Duration::from_millis(100);

/// Prints the log; follows it while the job runs.
pub fn run(ctx: &Ctx, job_id: &str, follow: bool) -> Result<Exit> {
    let layout = ctx.layout;
    // Job ids are ULIDs: checked before they become part of a path.
    if job_id.len() != 26
        || !job_id
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        return Err(usage(format!(
            "`{job_id}` is not a job id; `t8k-engine history` lists them"
        )));
    }
    let dir = &layout.jobs_dir;
    let path = crate::joblog::log_path(dir, job_id);
    let journal = Journal::open(layout);
    // Where the journal ends before the look: the job's end, however soon it comes, is after it.
    let mut cursor = journal.end().ok().flatten();
    let known: Option<JobView> = journal
        .jobs(true)
        .0
        .into_iter()
        .find(|j| j.job_id == job_id);
    if !path.exists() {
        return Err(usage(match known {
            Some(_) => format!(
                "job {job_id} has no log left in {} (older logs are pruned: keep_job_logs)",
                dir.display()
            ),
            None => format!("no job {job_id} in the history; `t8k-engine history` lists job ids"),
        }));
    }
    let mut offset = 0;
    let mut running = known.is_some_and(|j| j.result == JobResult::Running);
    loop {
        offset = print_from(&path, offset)?;
        running = running
            && journal.ended_after(&mut cursor, job_id).is_none()
            && EngineLock::probe(&layout.engine_dir)?.is_some();
        if !follow || !running {
            // One more read after the job ended catches its last lines.
            print_from(&path, offset)?;
            return Ok(Exit::Ok);
        }
        std::thread::sleep(POLL);
    }
}

/// Prints what the file holds past `offset`; returns its new length.
fn print_from(path: &Path, offset: usize) -> Result<usize> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() > offset {
        std::io::stdout().write_all(&bytes[offset..])?;
    }
    Ok(bytes.len().max(offset))
}
