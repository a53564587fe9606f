//! `t8k-engine history`: past jobs newest first, filtered by target or failure, as a table or JSON.

use anyhow::Result;

use super::Ctx;
use crate::error::Exit;
use crate::lock::EngineLock;

/// Prints at most `limit` jobs.
pub fn run(
    ctx: &Ctx,
    limit: usize,
    target: Option<&str>,
    failed: bool,
    json: bool,
) -> Result<Exit> {
    let layout = ctx.layout;
    let running = EngineLock::probe(&layout.engine_dir)?.is_some();
    // Streamed through the job views: a full journal held whole is several times its 32 MiB.
    let mut kept = crate::history::Kept::new(true, true);
    kept.catch_up(layout);
    let jobs = kept.views().listed(running, target, failed, limit);
    let superseded = kept.views().superseded();
    if json {
        let all = serde_json::json!({ "jobs": jobs, "superseded": superseded });
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print!(
            "{}",
            crate::ui::tables::history(&jobs, superseded, &layout.journal_dir)
        );
    }
    Ok(Exit::Ok)
}
