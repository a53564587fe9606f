//! Owns `tailwind_whitelist`: one scan of a built site through `crate::whitelist`, written to one or
//! more safelist files.

use std::path::PathBuf;
use std::sync::Arc;

use rhai::{Dynamic, Engine, Map};
use serde::Serialize;

use super::ctx::JobCtx;
use super::options::{Opts, strings};
use super::{Res, to_map};

pub(super) fn register(engine: &mut Engine, ctx: &Arc<JobCtx>) {
    let c = ctx.clone();
    engine.register_fn("tailwind_whitelist", move |dist: &str, out: Dynamic| {
        tailwind_whitelist(&c, dist, out, &Map::new())
    });
    let c = ctx.clone();
    engine.register_fn(
        "tailwind_whitelist",
        move |dist: &str, out: Dynamic, opts: Map| tailwind_whitelist(&c, dist, out, &opts),
    );
}

/// What `tailwind_whitelist` returns.
#[derive(Serialize)]
struct Extracted {
    classes: usize,
    files: usize,
    skipped: usize,
    /// Seconds.
    elapsed: f64,
    written: bool,
}

/// `out` is one path, or an array of paths that all get the same safelist from one scan.
fn tailwind_whitelist(ctx: &JobCtx, dist: &str, out: Dynamic, opts: &Map) -> Res<Map> {
    ctx.refuse_in_check("tailwind_whitelist")?;
    let o = Opts::new("tailwind_whitelist", opts, &["extra"])?;
    let extra: Vec<PathBuf> = o
        .strings("extra", "an array of directories")?
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let outs: Vec<PathBuf> = if out.is_array() {
        strings("tailwind_whitelist", out.into_array().unwrap_or_default())?
            .into_iter()
            .map(PathBuf::from)
            .collect()
    } else if out.is_string() {
        vec![PathBuf::from(out.to_string())]
    } else {
        return Err(format!(
            "tailwind_whitelist(): the output must be a path or an array of paths, got {}",
            out.type_name()
        )
        .into());
    };
    let (stats, written) =
        crate::whitelist::extract_to_files(std::path::Path::new(dist), &outs, &extra)
            .map_err(|e| format!("tailwind_whitelist(): {e:#}"))?;
    for (path, w) in outs.iter().zip(&written) {
        tracing::info!(
            "whitelist {}: {} classes from {} files in {} ms{}",
            path.display(),
            stats.classes,
            stats.files,
            stats.elapsed_ms,
            if *w { "" } else { " (unchanged)" }
        );
    }
    to_map(&Extracted {
        classes: stats.classes,
        files: stats.files,
        skipped: stats.skipped,
        elapsed: stats.elapsed_ms as f64 / 1000.0,
        written: stats.written,
    })
}
