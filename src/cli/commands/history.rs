//! `t8k-engine history`: past jobs newest first, filtered by target or failure, as a table or JSON.

use anyhow::Result;

use super::Ctx;
use crate::error::Exit;
use crate::history::JobResult;
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
    let events = crate::history::read_with_requests(layout);
    let (jobs, superseded) = crate::history::jobs(&events, running);
    let jobs: Vec<_> = jobs
        .into_iter()
        .filter(|j| target.is_none_or(|t| j.target == t))
        .filter(|j| !failed || !matches!(j.result, JobResult::Succeeded | JobResult::Running))
        .take(limit)
        .collect();
    if json {
        let all = serde_json::json!({ "jobs": jobs, "superseded": superseded });
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print!(
            "{}",
            crate::ui::tables::history(&jobs, &superseded, &layout.journal_dir)
        );
    }
    Ok(Exit::Ok)
}
