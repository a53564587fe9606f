//! `t8k-engine check`: compiles every script, finds the tools the steps need on their PATH (problems:
//! exit 1), and warns about copies the built-in scripts moved past and leftovers of the concierge.

use anyhow::Result;

use super::Ctx;
use crate::error::Exit;
use crate::script::{self, Scripts, Settings};

/// Prints the problems on stdout, one per line for tools to read, and the warnings on stderr.
pub fn run(ctx: &Ctx) -> Result<Exit> {
    let (config, layout) = (ctx.config, ctx.layout);
    let scripts = Scripts::new(&layout.scripts_dir);
    let mut problems = script::check(&scripts, &Settings::from_config(config, layout));
    problems.extend(crate::preflight::missing_tools(config));
    for p in &problems {
        println!("{p}");
    }
    let warnings: Vec<String> = crate::preflight::concierge_leftovers(config, layout)
        .into_iter()
        .chain(script::copies::warnings(&scripts))
        .chain(crate::usage::cache_warnings(config))
        .collect();
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if !problems.is_empty() {
        eprintln!(
            "{} problem(s); fix them before the next trigger runs",
            problems.len()
        );
        return Ok(Exit::Failed);
    }
    println!(
        "ok: every script compiles and main, multi and dedicated define build ({}); the steps' PATH has {}",
        layout.scripts_dir.display(),
        crate::preflight::tools(config, &config.step_path())
            .iter()
            .map(|t| t.program.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let caches = crate::usage::build_caches(config);
    for (name, at) in [
        ("Go build cache", caches.go_build),
        ("Go module cache", caches.go_modules),
        ("pnpm store", caches.pnpm_store),
    ] {
        if let Some(l) = at {
            println!("{name}: {} ({})", l.path.display(), l.from);
        }
    }
    Ok(Exit::Ok)
}
