//! Owns the release helpers: switching a new build in, rolling back, and the records of releases, all
//! through `crate::release`; a job's switches are noted so that an engine started after a crash can
//! undo what the dead one left half done.

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
        match crate::release::last(&c.settings.releases_dir, &job.spec.target_name())
            .map_err(|e| format!("last_release(): {e:#}"))?
        {
            None => Ok(Dynamic::UNIT),
            Some(v) => rhai::serde::to_dynamic(v),
        }
    });
    let c = ctx.clone();
    engine.register_fn("record_release", move |job: Job, facts: Map| {
        record_release(&c, &job, facts)
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
        None => ctx.settings.keep_releases,
        Some(v) => match v.as_int() {
            Ok(n) if n >= 1 => n as usize,
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
    let previous = crate::release::switch_in(
        Path::new(new),
        Path::new(live),
        keep,
        ctx.pending_releases().as_deref(),
    )
    .map_err(|e| format!("switch_in(): {e:#}"))?;
    tracing::info!("switched {new} into {live}");
    to_map(&Switched {
        live,
        previous: previous.map(|p| p.display().to_string()),
    })
}

/// Records what a job released, with the engine's facts (time, job, trigger, steps) added.
fn record_release(ctx: &JobCtx, job: &Job, facts: Map) -> Res<Map> {
    ctx.refuse_in_check("record_release")?;
    let mut value: serde_json::Value = rhai::serde::from_dynamic(&Dynamic::from_map(facts))?;
    let Some(obj) = value.as_object_mut() else {
        unreachable!("a map converts to an object")
    };
    obj.insert("target".into(), job.spec.target_name().into());
    obj.insert("job_id".into(), job.id.clone().into());
    obj.insert("trigger".into(), job.trigger.clone().into());
    obj.insert(
        "released_at".into(),
        jiff::Timestamp::now().to_string().into(),
    );
    obj.insert(
        "duration_ms".into(),
        (ctx.elapsed().as_millis() as u64).into(),
    );
    obj.insert(
        "steps".into(),
        serde_json::to_value(ctx.steps()).unwrap_or_default(),
    );
    // Facts may quote remote URLs; `status` shows the live record, so it is stored redacted.
    crate::redact::redact_json(&mut value);
    crate::release::record(&ctx.settings.releases_dir, &job.spec.target_name(), &value)
        .map_err(|e| format!("record_release(): {e:#}"))?;
    tracing::info!("recorded the release of {}", job.spec.target_name());
    to_map(&value)
}
