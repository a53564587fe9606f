//! `t8k-engine retry`: puts a set-aside trigger (by its name in `failed/`, or a job id from `history`)
//! back into the inbox under its original name, and prints its path.

use anyhow::Result;

use super::Ctx;
use crate::error::{Exit, usage};
use crate::history::Journal;
use crate::layout::Layout;
use crate::queue::Queue;

/// Moves it back.
pub fn run(ctx: &Ctx, name: &str) -> Result<Exit> {
    let queue = Queue::open(ctx.layout, ctx.config.max_trigger_bytes)?;
    let name = set_aside_name(ctx.layout, name);
    let path = queue.retry(&name).map_err(|e| usage(format!("{e:#}")))?;
    tracing::info!("retry: {name} is back in the inbox as {}", path.display());
    println!("{}", path.display());
    Ok(Exit::Ok)
}

/// A job id from `history` names the trigger it ran from; anything else is a set-aside file name.
fn set_aside_name(layout: &Layout, name: &str) -> String {
    if layout.failed.join(name).exists() || name.len() != 26 {
        return name.to_string();
    }
    Journal::open(layout)
        .jobs(false)
        .0
        .into_iter()
        .find(|j| j.job_id == name)
        .map_or_else(|| name.to_string(), |j| j.trigger)
}
