//! `t8k-engine trigger`: drops a checked trigger into the inbox atomically and prints its path; with
//! `--wait` it follows the trigger to its end and exits with its result.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::Ctx;
use crate::error::{Exit, usage};
use crate::script::{self, Scripts, Settings};
use crate::trigger;

/// The trigger line the options describe.
pub struct Line<'a> {
    /// `main`, `prod`, `multi` or `dedicated`.
    pub kind: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// The site (dedicated only).
    pub site: Option<&'a str>,
    /// The script function.
    pub command: &'a str,
    /// Build everything even if nothing changed.
    pub force: bool,
}

impl Line<'_> {
    /// The job the options describe, validated as a trigger line.
    pub fn spec(&self) -> Result<trigger::JobSpec> {
        trigger::parse_line(&self.text(), 1)
            .map_err(|e| usage(format!("invalid trigger: {}", e.message)))
    }

    fn text(&self) -> String {
        let mut line = format!("type={},tenant={}", self.kind, self.tenant);
        if let Some(site) = self.site {
            line.push_str(&format!(",site={site}"));
        }
        line.push_str(&format!(",command={}", self.command));
        if self.force {
            line.push_str(",force=true");
        }
        line
    }
}

/// Drops the trigger; follows it with `wait`.
pub fn run(ctx: &Ctx, line: &Line, wait: bool) -> Result<Exit> {
    let from = wait.then(|| crate::ui::follow::journal_end(ctx.layout));
    let path = drop_trigger(ctx, line)?;
    // `sleep(ms)` here lets the engine run the whole job before the follower first reads the journal.
    crate::fault_point!("trigger.dropped");
    print_and_follow(ctx, &path, from)
}

/// Prints a dropped trigger's path; with `from` (where the journal ended before it was dropped),
/// follows it to its end: exit 0 when every job of it succeeded.
pub fn print_and_follow(ctx: &Ctx, path: &std::path::Path, from: Option<usize>) -> Result<Exit> {
    println!("{}", path.display());
    let Some(from) = from else {
        return Ok(Exit::Ok);
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let all_succeeded = crate::ui::follow::follow(ctx.layout, name, from)?;
    Ok(Exit::ok_if(all_succeeded))
}

/// Checks the line and the script's command, then writes the trigger through a dot-file renamed into
/// place, so no reader ever sees it half-written and no file of that name is replaced.
fn drop_trigger(ctx: &Ctx, line: &Line) -> Result<PathBuf> {
    drop_spec(ctx, &line.spec()?)
}

/// Drops one job as a trigger (see [`drop_trigger`]); returns its path.
pub fn drop_spec(ctx: &Ctx, spec: &trigger::JobSpec) -> Result<PathBuf> {
    let layout = ctx.layout;
    script::check_command(
        &Scripts::new(&layout.scripts_dir),
        &Settings::from_config(ctx.config, layout),
        spec.kind,
        &spec.command,
    )
    .map_err(|e| usage(e.headline()))?;
    std::fs::create_dir_all(&layout.state)
        .with_context(|| format!("cannot create {}", layout.state.display()))?;
    let name = crate::queue::new_trigger_name();
    let path = layout.state.join(&name);
    crate::fs::write_new_durably(&path, format!("{}\n", spec.to_line()).as_bytes())?;
    tracing::info!("trigger: wrote {} ({})", path.display(), spec.to_line());
    Ok(path)
}
