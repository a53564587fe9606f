//! Owns the engine's side of `command=rollback` (the mechanism; the script's `fn rollback(job, release)`
//! is the policy): which kept release goes back (the trigger's `release=N`, else the previous one) and
//! whether it can, calling the script with its record, checking afterwards that its files are live and
//! recording it live again and the one it replaced as rolled back; and keeping each install's releases
//! to `keep_releases` after every job.

use std::sync::Arc;

use tracing::{info, warn};

use super::Engine;
use crate::release::{self, Parts, Store};
use crate::script::{self, Compiled, Job, JobCtx, JobError};

impl Engine {
    /// Runs a `command=rollback` job.
    pub(super) fn run_rollback(
        &self,
        job: &Job,
        script: &Compiled,
        ctx: &Arc<JobCtx>,
    ) -> Result<(), JobError> {
        let dir = &self.settings.releases_dir;
        let install = job.install();
        let parts = Parts::of(&job.target);
        let refused = |why: String| JobError::plain(format!("cannot roll back {install}: {why}"));
        let mut store = Store::load(dir, &install).map_err(|e| refused(format!("{e:#}")))?;
        let plan = store
            .plan_rollback(job.spec.release, &parts)
            .map_err(|e| refused(e.to_string()))?;
        let (to, from) = (plan.to.id, plan.from.id);
        if to == from {
            info!("release {to} of {install} is live already: nothing to roll back");
            return Ok(());
        }
        // The release that serves must be findable to be put back if the one going back fails: one an
        // older engine recorded gets the files that are live now.
        if store.live().is_some_and(|l| l.files.is_none()) {
            store.set_files(from, plan.from.files);
            store.save(dir).map_err(|e| refused(format!("{e:#}")))?;
        }
        info!(
            "rolling {install} back from release {from} (backend {}, frontend {}) to release {to} (backend {}, frontend {}, released {})",
            short(plan.from.fact("backend")),
            short(plan.from.fact("frontend")),
            short(plan.to.fact("backend")),
            short(plan.to.fact("frontend")),
            plan.to.released_at
        );
        let record = rhai::serde::to_dynamic(plan.to.to_json())
            .map_err(|e| refused(format!("release {to} cannot be given to the script: {e}")))?;
        script::run_rollback(&self.scripts, ctx, script, job.clone(), record)?;
        let replaced = release::rolled_back_to(
            dir,
            &install,
            &parts,
            to,
            &job.id,
            self.settings.keep_releases,
            &ctx.releases,
        )
        .map_err(|e| JobError::plain(format!("{e:#}")))?;
        if let Some(r) = replaced {
            warn!(
                "release {to} of {install} serves again; release {} is marked rolled back: a build of its commits (backend {}, frontend {}) is refused unless forced",
                r.id,
                short(r.fact("backend")),
                short(r.fact("frontend"))
            );
        }
        Ok(())
    }

    /// Keeps the job's install to `keep_releases` releases (the live and previous ones always); a failure
    /// is only logged, since it changes nothing that serves.
    pub(super) fn prune_releases(&self, job: &Job) {
        let install = job.install();
        if let Err(e) = release::prune(
            &self.settings.releases_dir,
            &install,
            &Parts::of(&job.target),
            self.settings.keep_releases,
        ) {
            warn!("cannot prune the kept releases of {install}: {e:#}");
        }
    }
}

/// A commit as logs show it.
fn short(commit: Option<&str>) -> String {
    commit.map_or_else(|| "?".into(), |c| c.chars().take(10).collect())
}
