//! `t8k-engine run`: takes the lock (or exits 75 with `--no-wait` when another engine holds it), drains
//! the queue once and exits 1 when any job failed or any trigger was set aside.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::{Ctx, cancel_on_signals};
use crate::engine::{Engine, Summary};
use crate::error::Exit;
use crate::lock::EngineLock;

/// One pass over the queue.
pub fn run(ctx: &Ctx, no_wait: bool) -> Result<Exit> {
    let layout = ctx.layout;
    let cancel = cancel_on_signals()?;
    let _lock = if no_wait {
        match EngineLock::try_acquire(&layout.engine_dir)? {
            Ok(lock) => lock,
            Err(holder) => {
                eprintln!(
                    "another t8k-engine ({holder}) is processing {}; it will pick up new triggers too, or run again later",
                    layout.state.display()
                );
                return Ok(Exit::Locked);
            }
        }
    } else {
        EngineLock::acquire(&layout.engine_dir, |holder| {
            tracing::info!(
                "another t8k-engine ({holder}) holds the lock on {}; waiting for it",
                layout.state.display()
            )
        })?
    };
    let engine = Arc::new(Engine::new(ctx.config, layout, cancel)?);
    // `t8k-engine cancel` signals the lock holder: stop the running job, set its trigger aside, go on.
    let mut cancels = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])
        .context("cannot install signal handlers")?;
    let e = engine.clone();
    std::thread::spawn(move || {
        for _ in cancels.forever() {
            e.cancel_job("cancelled by `t8k-engine cancel`");
        }
    });
    engine
        .status()
        .set_warnings(crate::preflight::standing_warnings(ctx.config, layout));
    let drained = engine.drain();
    engine.status().stopped();
    let summary = drained?;
    tracing::info!(
        "run finished: {} job(s) succeeded, {} failed, {} trigger(s) done, {} set aside{}",
        summary.jobs_ok,
        summary.jobs_failed,
        summary.files_done,
        summary.set_aside,
        if summary.interrupted {
            ", interrupted"
        } else {
            ""
        }
    );
    // The moment between the last look at the inbox and the exit, which a path unit must cover.
    crate::fault_point!("run.drained");
    Ok(exit(&summary))
}

/// A pass is a success when nothing failed, nothing was set aside and it was not stopped.
fn exit(summary: &Summary) -> Exit {
    Exit::ok_if(summary.jobs_failed == 0 && summary.set_aside == 0 && !summary.interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_fails_on_any_failed_job_set_aside_file_or_stop() {
        let clean = Summary {
            jobs_ok: 3,
            files_done: 2,
            ..Summary::default()
        };
        assert_eq!(exit(&clean), Exit::Ok);
        assert_eq!(exit(&Summary::default()), Exit::Ok, "nothing to do");
        for bad in [
            Summary {
                jobs_failed: 1,
                ..clean.clone()
            },
            Summary {
                set_aside: 1,
                ..clean.clone()
            },
            Summary {
                interrupted: true,
                ..clean.clone()
            },
        ] {
            assert_eq!(exit(&bad), Exit::Failed, "{bad:?}");
        }
    }
}
