//! `t8k-engine releases [TARGET] [--json]`: the kept releases of each install (or the target's), newest
//! first, the live one marked, with commits, what was built, how each ended, its steps and whether its
//! files are still kept; and the commits a build refuses because they were rolled back. Read-only.

use anyhow::Result;
use serde_json::Value;

use super::Ctx;
use crate::error::{Exit, usage};
use crate::release::{self, Parts, Refused, Release, State, Store};

/// Prints the releases.
pub fn run(ctx: &Ctx, target: Option<&str>, json: bool) -> Result<Exit> {
    let dir = &ctx.layout.releases_dir;
    let keep = ctx.config.keep_releases;
    let refused = |e: Refused| match e {
        Refused::Invalid(m) => usage(m),
        other => anyhow::anyhow!("{other}"),
    };
    if json {
        let all = release::listings(dir, &ctx.layout.root, target, keep).map_err(refused)?;
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(Exit::Ok);
    }
    let installs = match target {
        Some(t) => vec![release::install_of(
            &release::rollback_spec(t).map_err(refused)?,
        )],
        None => release::installs(dir),
    };
    let mut shown = Vec::new();
    for install in installs {
        let store = Store::load(dir, &install)?;
        let parts = Parts::of_install(&ctx.layout.root, &install);
        shown.push((store, parts));
    }
    if shown.iter().all(|(s, _)| s.releases.is_empty()) {
        println!(
            "no release recorded{}",
            target.map(|t| format!(" for {t}")).unwrap_or_default()
        );
    } else {
        for (store, parts) in &shown {
            print!("{}", table(store, parts, keep));
        }
    }
    Ok(Exit::Ok)
}

fn table(store: &Store, parts: &Parts, keep: usize) -> String {
    let shares = if store.install == "main" {
        " (main and multi/* targets)"
    } else {
        ""
    };
    let mut out = format!(
        "{}{shares}: {} release(s) kept, keep_releases = {keep}{}\n",
        store.install,
        store.releases.len(),
        if store.from_legacy {
            "; recorded by an older t8k-engine"
        } else {
            ""
        }
    );
    for r in &store.releases {
        out.push_str(&line(r));
        out.push_str(&details(r, parts));
    }
    if let Some(bad) = store.bad.first() {
        out.push_str(&format!(
            "  not built again unless forced: backend {} frontend {} (release {}, {} at {})\n",
            short(bad.facts.get("backend")),
            short(bad.facts.get("frontend")),
            bad.release,
            bad.how.as_str().replace('_', " "),
            bad.at
        ));
    }
    out
}

/// `* 3  live  2026-…  main  backend 4f1c2a9d8e frontend 9a8b7c6d5e  built backend+frontend  12.3s`
fn line(r: &Release) -> String {
    let mark = if r.state == State::Live { "*" } else { " " };
    let built = r.facts.get("built").map_or("?".to_string(), |b| {
        let parts: Vec<&str> = ["backend", "frontend"]
            .into_iter()
            .filter(|p| b[*p].as_bool() == Some(true))
            .collect();
        if parts.is_empty() {
            "nothing".into()
        } else {
            parts.join("+")
        }
    });
    format!(
        "{mark} {:<4} {:<11} {}  {:<16} backend {} frontend {}  built {built}  {:.1}s\n",
        r.id,
        r.state.as_str().replace('_', " "),
        r.released_at,
        r.target,
        short(r.facts.get("backend")),
        short(r.facts.get("frontend")),
        r.duration_ms as f64 / 1000.0
    )
}

/// The job, how it ended, the files, the steps with their figures.
fn details(r: &Release, parts: &Parts) -> String {
    let files = match r.files_kept(parts) {
        Some(true) => "files kept",
        Some(false) => "files gone",
        None if r.state == State::Failed => "files not kept",
        None => "files not tracked (older engine)",
    };
    let mut out = format!("       job {} ({}); {files}\n", r.job_id, r.trigger);
    if let Some(e) = &r.ended {
        out.push_str(&format!(
            "       {} at {} by job {}: {}\n",
            r.state.as_str().replace('_', " "),
            e.at,
            e.by,
            e.reason
        ));
    }
    if let Some(back) = r.restored.last() {
        out.push_str(&format!(
            "       put back at {} by job {}: {}\n",
            back.at, back.by, back.reason
        ));
    }
    if !r.steps.is_empty() {
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|s| format!("{} {}", s.name, s.figures()))
            .collect();
        out.push_str(&format!("       steps: {}\n", steps.join("; ")));
    }
    out
}

fn short(commit: Option<&Value>) -> String {
    commit
        .and_then(Value::as_str)
        .map_or("?".into(), |c| c.chars().take(10).collect())
}
