//! `t8k-engine eval`: runs a Rhai snippet exactly as a job would, optionally with `job` bound from a
//! trigger line and that type's script loaded; prints what it returns.

use std::path::PathBuf;

use anyhow::{Result, anyhow};

use super::{Ctx, cancel_on_signals};
use crate::error::{Exit, usage};
use crate::script::{self, Job, JobCtx, Scripts, Settings};
use crate::trigger;

/// Evaluates the snippet (or the file); a script error is an error with its call chain.
pub fn run(
    ctx: &Ctx,
    snippet: Option<String>,
    file: Option<PathBuf>,
    job: Option<String>,
) -> Result<Exit> {
    let (config, layout) = (ctx.config, ctx.layout);
    let (text, origin) = match (snippet, file) {
        (Some(s), _) => (s, "<eval>".to_string()),
        (None, Some(f)) => (
            std::fs::read_to_string(&f)
                .map_err(|e| usage(format!("cannot read {}: {e}", f.display())))?,
            f.display().to_string(),
        ),
        (None, None) => return Err(usage("give a snippet or -f FILE")),
    };
    let job = job.map(|line| job_of(ctx, &line)).transpose()?;
    let job_ctx = JobCtx::new(
        Settings::from_config(config, layout),
        cancel_on_signals()?,
        config.job_timeout(),
        false,
    );
    let scripts = Scripts::new(&layout.scripts_dir);
    let value = script::eval(&scripts, &job_ctx, &text, &origin, job)
        .map_err(|e| anyhow!("{}", e.details()))?;
    if !value.is_unit() {
        println!("{value}");
    }
    Ok(Exit::Ok)
}

/// The `job` a `--job` line describes; `command` may be left out, since eval calls functions directly.
fn job_of(ctx: &Ctx, line: &str) -> Result<Job> {
    let full = if line.split(',').any(|f| f.starts_with("command=")) {
        line.to_string()
    } else {
        format!("{line},command=eval")
    };
    let spec = trigger::parse_line(&full, 1)
        .map_err(|e| usage(format!("--job '{line}': {}", e.message)))?;
    let target = ctx
        .layout
        .target(&spec)
        .map_err(|e| usage(format!("{e:#}")))?;
    Ok(Job {
        id: ulid::Ulid::new().to_string(),
        spec,
        trigger: "(eval)".into(),
        root: ctx.layout.root.display().to_string(),
        target,
    })
}
