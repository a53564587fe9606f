//! `t8k-engine cancel`: asks the engine holding the lock to stop its running job (SIGUSR1), then waits
//! for the job's end in the journal and says where its trigger went.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::Ctx;
use crate::error::Exit;
use crate::history::{JobResult, Journal};
use crate::lock::EngineLock;

/// How often the journal is read while waiting.
const POLL: Duration = Duration::from_millis(100);

/// Signals the engine and waits up to its kill grace and 30 s.
pub fn run(ctx: &Ctx) -> Result<Exit> {
    let layout = ctx.layout;
    let Some(holder) = EngineLock::probe(&layout.engine_dir)? else {
        println!("no engine is running: nothing to cancel");
        return Ok(Exit::Ok);
    };
    let journal = Journal::open(layout);
    // Where the journal ends before the look: the job's end, however soon it comes, is after it.
    let mut cursor = journal.end().ok().flatten();
    let (jobs, _) = journal.jobs(true);
    let Some(job) = jobs.into_iter().find(|j| j.result == JobResult::Running) else {
        println!("the engine ({holder}) is running no job: nothing to cancel");
        return Ok(Exit::Ok);
    };
    let pid = holder
        .pid
        .context("the engine's pid is unknown (state/.t8k-engine/engine.pid): cannot signal it")?;
    // SAFETY: kill(2) with plain integers; SIGUSR1 asks the engine to cancel its running job.
    if unsafe { libc::kill(pid as i32, libc::SIGUSR1) } != 0 {
        bail!(
            "cannot signal the engine (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    println!(
        "cancelling job {} ({} {}, {}:{})",
        job.job_id, job.target, job.command, job.trigger, job.line
    );
    let limit = ctx.config.kill_grace() + Duration::from_secs(30);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(result) = journal.ended_after(&mut cursor, &job.job_id) {
            println!(
                "job {} {result}: its processes are stopped and {} is in {}",
                job.job_id,
                job.trigger,
                layout.failed.display()
            );
            return Ok(Exit::Ok);
        }
        std::thread::sleep(POLL);
    }
    bail!(
        "job {} did not stop within {}s; check `t8k-engine status`",
        job.job_id,
        limit.as_secs()
    )
}
