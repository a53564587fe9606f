//! `t8k-engine rollback TARGET [--to RELEASE] [--no-wait]`: checks that the release can be put back,
//! drops a `command=rollback,release=N` trigger and follows it to its end. It goes through the queue
//! rather than taking the lock itself: a running daemon holds the lock for as long as it runs, and the
//! queue makes a rollback crash-safe, recorded, cancellable and ordered with the builds like any job.

use anyhow::{Result, anyhow};

use super::Ctx;
use crate::error::{Exit, usage};
use crate::release::{self, Refused};
use crate::trigger;

/// Drops the rollback trigger; follows it with `wait`.
pub fn run(
    ctx: &Ctx,
    target: &str,
    to: Option<&str>,
    wait: Option<super::trigger::Wait>,
) -> Result<Exit> {
    let to = to
        .map(|t| trigger::release_number(t.trim_start_matches('#')))
        .transpose()
        .map_err(|e| usage(e.replace("`release`", "--to")))?;
    let (spec, plan) = release::ask(&ctx.layout.releases_dir, &ctx.layout.root, target, to)
        .map_err(|e| match e {
            Refused::Invalid(m) => usage(m),
            other => anyhow!("cannot roll back {target}: {other}"),
        })?;
    let install = release::install_of(&spec);
    if plan.to.id == plan.from.id {
        println!(
            "release {} of {install} is live already: nothing to do",
            plan.to.id
        );
        return Ok(Exit::Ok);
    }
    println!(
        "rolling {install} back from release {} to release {} (backend {}, frontend {}, released {})",
        plan.from.id,
        plan.to.id,
        short(plan.to.fact("backend")),
        short(plan.to.fact("frontend")),
        plan.to.released_at
    );
    let from = super::trigger::Wait::start(wait, ctx);
    let path = super::trigger::drop_spec(ctx, &spec)?;
    super::trigger::print_and_follow(ctx, &path, from)
}

fn short(commit: Option<&str>) -> String {
    commit.map_or_else(|| "?".into(), |c| c.chars().take(10).collect())
}
