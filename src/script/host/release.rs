//! Owns the release helpers: switching a new build in, rolling back, putting a kept release back, and
//! the records of releases (the install's store, the rolled-back commits), all through
//! `crate::release`; a job's switches are noted so that an engine started after a crash can undo what
//! the dead one left half done, and tracked so that the release it records knows its files.

use std::path::Path;
use std::sync::Arc;

use rhai::{Dynamic, Engine, Map};
use serde::Serialize;

use super::ctx::JobCtx;
use super::options::Opts;
use super::{Res, to_map};
use crate::script::Job;

pub(super) fn register(engine: &mut Engine, ctx: &Arc<JobCtx>) {
    let c = ctx.clone();
    engine.register_fn("switch_in", move |new: &str, live: &str| {
        switch_in(&c, new, live, &Map::new())
    });
    let c = ctx.clone();
    engine.register_fn("switch_in", move |new: &str, live: &str, opts: Map| {
        switch_in(&c, new, live, &opts)
    });
    let c = ctx.clone();
    engine.register_fn("roll_back", move |live: &str| -> Res<String> {
        c.refuse_in_check("roll_back")?;
        crate::release::roll_back(Path::new(live), c.pending_releases().as_deref())
            .map_err(|e| format!("roll_back(): {e:#}"))?;
        tracing::warn!("rolled back {live} to its previous release");
        Ok(live.to_string())
    });
    let c = ctx.clone();
    engine.register_fn("last_release", move |job: Job| -> Res<Dynamic> {
        let store = crate::release::Store::load(&c.settings.releases_dir, &job.install())
            .map_err(|e| format!("last_release(): {e:#}"))?;
        match store.live() {
            None => Ok(Dynamic::UNIT),
            Some(r) => rhai::serde::to_dynamic(r.to_json()),
        }
    });
    let c = ctx.clone();
    engine.register_fn("record_release", move |job: Job, facts: Map| {
        record_release(&c, &job, facts, &Map::new())
    });
    let c = ctx.clone();
    engine.register_fn("record_release", move |job: Job, facts: Map, opts: Map| {
        record_release(&c, &job, facts, &opts)
    });
    let c = ctx.clone();
    engine.register_fn("put_back", move |job: Job, release: Map| {
        put_back(&c, &job, &release)
    });
    let c = ctx.clone();
    engine.register_fn("bad_release", move |job: Job, facts: Map| {
        bad_release(&c, &job, facts)
    });
}

/// What `switch_in` returns.
#[derive(Serialize)]
struct Switched<'a> {
    live: &'a str,
    /// Where the replaced release went, `()` when nothing was live.
    previous: Option<String>,
}

fn switch_in(ctx: &JobCtx, new: &str, live: &str, opts: &Map) -> Res<Map> {
    ctx.refuse_in_check("switch_in")?;
    let o = Opts::new("switch_in", opts, &["keep"])?;
    let keep = match o.get("keep") {
        None => None,
        Some(v) => match v.as_int() {
            Ok(n) if n >= 1 => Some(n as usize),
            _ => return o.wrong("keep", "a whole number of at least 1", v),
        },
    };
    // Exchanging a path with itself would then rotate the live release away, leaving nothing live.
    if Path::new(new) == Path::new(live) {
        return Err(format!(
            "switch_in(): the new build and the live path are both {live}; build into a sibling such as {live}.new"
        )
        .into());
    }
    let previous = crate::release::switch_in_for_job(
        Path::new(new),
        Path::new(live),
        keep,
        ctx.settings.keep_releases,
        ctx.pending_releases().as_deref(),
        &ctx.releases,
    )
    .map_err(|e| format!("switch_in(): {e:#}"))?;
    tracing::info!("switched {new} into {live}");
    to_map(&Switched {
        live,
        previous: previous.map(|p| p.display().to_string()),
    })
}

/// Records what a job released (or, with `#{failed: why}`, a release that failed its checks and was
/// rolled back), with the engine's facts (number, time, job, trigger, steps, files) added.
fn record_release(ctx: &JobCtx, job: &Job, facts: Map, opts: &Map) -> Res<Map> {
    ctx.refuse_in_check("record_release")?;
    let o = Opts::new("record_release", opts, &["failed"])?;
    let failed = o.string("failed")?;
    let mut value: serde_json::Value = rhai::serde::from_dynamic(&Dynamic::from_map(facts))?;
    // Facts may quote remote URLs; `status` shows the live record, so it is stored redacted.
    crate::redact::redact_json(&mut value);
    let serde_json::Value::Object(facts) = value else {
        unreachable!("a map converts to an object")
    };
    let recording = crate::release::Recording {
        install: job.install(),
        target: job.spec.target_name(),
        parts: crate::release::Parts::of(&job.target),
        job_id: job.id.clone(),
        trigger: job.trigger.clone(),
        duration_ms: ctx.elapsed().as_millis() as u64,
        steps: ctx.steps(),
        facts,
        failed,
        keep: ctx.settings.keep_releases,
    };
    let release =
        crate::release::record_release(&ctx.settings.releases_dir, recording, &ctx.releases)
            .map_err(|e| format!("record_release(): {e:#}"))?;
    tracing::info!(
        "recorded release {} of {} ({})",
        release.id,
        job.install(),
        release.state.as_str()
    );
    to_map(&release.to_json())
}

/// What `put_back` returns: which parts it switched (false: that part was live already).
#[derive(Serialize)]
struct PutBack {
    backend: bool,
    frontend: bool,
}

/// Puts the files of a kept release (a map from `last_release` or the one `rollback` gets) back live.
fn put_back(ctx: &JobCtx, job: &Job, release: &Map) -> Res<Map> {
    ctx.refuse_in_check("put_back")?;
    let id = release
        .get("id")
        .and_then(|v| v.as_int().ok())
        .filter(|n| *n > 0)
        .ok_or("put_back(): the release has no `id`; pass a release map as `rollback` gets it or `last_release` returns it")?;
    let changed = crate::release::put_back_release(
        &ctx.settings.releases_dir,
        &job.install(),
        &crate::release::Parts::of(&job.target),
        id as u64,
        ctx.pending_releases().as_deref(),
        &ctx.releases,
    )
    .map_err(|e| format!("put_back(): {e:#}"))?;
    let said = |switched: bool| if switched { "switched" } else { "already live" };
    tracing::info!(
        "put release {id} of {} back (backend {}, frontend {})",
        job.install(),
        said(changed.backend),
        said(changed.frontend)
    );
    to_map(&PutBack {
        backend: changed.backend,
        frontend: changed.frontend,
    })
}

/// The newest rolled-back release of the job's install whose facts equal every one given; () when none.
fn bad_release(ctx: &JobCtx, job: &Job, facts: Map) -> Res<Dynamic> {
    let query: serde_json::Value = rhai::serde::from_dynamic(&Dynamic::from_map(facts))?;
    let serde_json::Value::Object(query) = query else {
        unreachable!("a map converts to an object")
    };
    let store = crate::release::Store::load(&ctx.settings.releases_dir, &job.install())
        .map_err(|e| format!("bad_release(): {e:#}"))?;
    match store.bad_for(&query) {
        None => Ok(Dynamic::UNIT),
        Some(bad) => rhai::serde::to_dynamic(bad),
    }
}
