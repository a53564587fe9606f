//! Owns putting a kept release back: which one a rollback asks for (by target name, from the command
//! line or `POST /api/rollback`) and whether it can be (`plan_rollback`, a typed refusal), and recording
//! it live again once the script put its files back (`rolled_back_to`). It switches no file itself.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::kept::{self, Identity, Part, Parts, Tracker};
use super::store::{Ended, Release, State, Store, adopt, now, prune_files};
use crate::trigger::{self, JobSpec};

/// Why a rollback cannot be done; an HTTP answer branches on the kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The target is not a target, or a release number is not one.
    Invalid(String),
    /// Nothing of the install is recorded live, or the release asked for is not kept.
    NotFound(String),
    /// The release cannot be put back: none earlier worked, it failed its checks, its files are unknown
    /// or gone.
    Conflict(String),
    /// The release records cannot be read.
    Unreadable(String),
}

impl Refused {
    /// The one-line reason, with what to do.
    pub fn message(&self) -> &str {
        match self {
            Refused::Invalid(m)
            | Refused::NotFound(m)
            | Refused::Conflict(m)
            | Refused::Unreadable(m) => m,
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Refused {}

/// The rollback job of a target name (`main`, `multi/TENANT`, `dedicated/SITE`), its values checked as
/// a trigger's.
pub fn rollback_spec(target: &str) -> std::result::Result<JobSpec, Refused> {
    let line = match target.split_once('/') {
        None if target == "main" || target == "prod" => "type=main".to_string(),
        Some(("multi", tenant)) => format!("type=multi,tenant={tenant}"),
        Some(("dedicated", site)) => format!("type=dedicated,site={site}"),
        _ => {
            return Err(Refused::Invalid(format!(
                "unknown target `{}`: name main, multi/TENANT or dedicated/SITE (as `t8k-engine releases` lists them)",
                target.escape_debug()
            )));
        }
    };
    trigger::parse_line(&format!("{line},command={}", trigger::ROLLBACK), 1).map_err(|e| {
        Refused::Invalid(format!(
            "invalid target `{}`: {}",
            target.escape_debug(),
            e.message
        ))
    })
}

/// A rollback asked for by target name, checked against the records now: its trigger line names the
/// release it puts back (`release=N`), so that asking twice is harmless (the second finds it live)
/// where "the previous one" would step back once more. `plan.to` equals `plan.from` when that release
/// is live already.
pub fn ask(
    releases_dir: &Path,
    root: &Path,
    target: &str,
    to: Option<u64>,
) -> std::result::Result<(JobSpec, RollbackPlan), Refused> {
    let mut spec = rollback_spec(target)?;
    let install = super::install_of(&spec);
    let store =
        Store::load(releases_dir, &install).map_err(|e| Refused::Unreadable(format!("{e:#}")))?;
    let plan = store.plan_rollback(to, &Parts::of_install(root, &install))?;
    spec.release = Some(plan.to.id);
    Ok((spec, plan))
}

/// The live release, and the one a rollback to `to` (default: the previous one) puts back, checked:
/// kept, worked when it served, its files still beside the live ones.
#[derive(Debug)]
pub struct RollbackPlan {
    /// The release to put back.
    pub to: Release,
    /// The release that serves now, its files filled in from the live paths if an older engine
    /// recorded it.
    pub from: Release,
}

impl Store {
    /// Checks that `to` (default: the previous release) can be put back; the problem as one line with
    /// what to do otherwise.
    pub fn plan_rollback(
        &self,
        to: Option<u64>,
        parts: &Parts,
    ) -> std::result::Result<RollbackPlan, Refused> {
        let install = &self.install;
        let mut from = self.live().cloned().ok_or_else(|| {
            Refused::NotFound(format!("no release of {install} is recorded as live: there is nothing to roll back from; build it first"))
        })?;
        let to = match to {
            Some(id) => self.get(id).cloned().ok_or_else(|| {
                Refused::NotFound(format!(
                    "release {id} of {install} is not kept (kept: {}); `t8k-engine releases {install}` lists them",
                    self.kept_ids()
                ))
            })?,
            None => self.previous().cloned().ok_or_else(|| {
                Refused::Conflict(format!(
                    "{install} has no earlier release that worked to roll back to (kept: {}); `t8k-engine releases {install}` lists them",
                    self.kept_ids()
                ))
            })?,
        };
        if to.state == State::Failed {
            return Err(Refused::Conflict(format!(
                "release {} of {install} failed its checks when it was built and never served; choose one that did (`t8k-engine releases {install}`)",
                to.id
            )));
        }
        if from.files.is_none() {
            from.files = Some(parts.live_files());
        }
        if to.id == from.id {
            return Ok(RollbackPlan { to, from });
        }
        let Some(files) = to.files else {
            return Err(Refused::Conflict(format!(
                "release {} of {install} was recorded by an older t8k-engine, which did not keep track of its files: it cannot be put back",
                to.id
            )));
        };
        for part in Part::ALL {
            if let Some(id) = files.get(part)
                && kept::locate(parts.path(part), &id).is_none()
            {
                return Err(Refused::Conflict(format!(
                    "the {} of release {} of {install} is no longer kept beside {} (removed by hand?); choose another release",
                    part.as_str(),
                    to.id,
                    parts.path(part).display()
                )));
            }
        }
        Ok(RollbackPlan { to, from })
    }
}

/// After a rollback's script returned: checks that the files of release `to` are live, then records it
/// live again and the one it replaced as rolled back (its commits remembered), and prunes. Returns the
/// release that was rolled back, if any.
pub fn rolled_back_to(
    dir: &Path,
    install: &str,
    parts: &Parts,
    to: u64,
    job_id: &str,
    keep: usize,
    tracker: &Tracker,
) -> Result<Option<Release>> {
    let mut store = Store::load(dir, install)?;
    let target = store
        .get(to)
        .cloned()
        .with_context(|| format!("release {to} of {install} is no longer kept"))?;
    if let Some(files) = target.files {
        for part in Part::ALL {
            let path = parts.path(part);
            if let Some(id) = files.get(part)
                && !Identity::of(path).is_some_and(|now| now.same(&id))
            {
                bail!(
                    "the script's rollback returned, but {} is not the {} of release {to}: it did not put that release back (check `fn rollback` in the scripts)",
                    path.display(),
                    part.as_str()
                );
            }
        }
    }
    let at = now();
    let from = store.live().filter(|l| l.id != to).cloned();
    if let Some(from) = &from {
        let reason = format!("rolled back to release {to}");
        let live = store.live_mut().expect("a live release");
        live.state = State::RolledBack;
        live.files = Some(adopt(live.files, parts, tracker));
        live.ended = Some(Ended {
            at: at.clone(),
            by: job_id.to_string(),
            reason: reason.clone(),
        });
        store.remember_bad(from, State::RolledBack, &reason, &at);
    }
    let r = store.get_mut(to).expect("checked above");
    r.state = State::Live;
    r.ended = None;
    r.restored.push(Ended {
        at,
        by: job_id.to_string(),
        reason: from.as_ref().map_or_else(
            || "put back".to_string(),
            |f| format!("rolled back from release {}", f.id),
        ),
    });
    store.prune_records(keep);
    store.save(dir)?;
    prune_files(&store, parts)?;
    Ok(from.map(|mut f| {
        f.state = State::RolledBack;
        f
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_become_rollback_lines_and_bad_ones_are_refused() {
        assert_eq!(
            rollback_spec("main").unwrap().to_line(),
            "type=main,tenant=default,command=rollback"
        );
        assert_eq!(
            rollback_spec("multi/blue").unwrap().to_line(),
            "type=multi,tenant=blue,command=rollback"
        );
        assert_eq!(
            rollback_spec("dedicated/acme").unwrap().to_line(),
            "type=dedicated,tenant=default,site=acme,command=rollback"
        );
        for bad in [
            "",
            "dedicated/",
            "dedicated/a,b",
            "dedicated/../x",
            "nope/x",
            "main/x",
        ] {
            let e = rollback_spec(bad).unwrap_err();
            assert!(matches!(e, Refused::Invalid(_)), "{bad}: {e}");
        }
    }
}
