//! `t8k-engine scripts init|diff|merge`: the operator's copies of the built-in scripts, written, compared
//! and merged with the record of which built-in each came from.

use anyhow::Result;

use super::Ctx;
use crate::cli::ScriptsAction;
use crate::error::{Exit, usage};
use crate::script::copies::{self, Merged};
use crate::script::{self, Scripts, Settings};

/// Runs one action.
pub fn run(ctx: &Ctx, action: ScriptsAction) -> Result<Exit> {
    let scripts = Scripts::new(&ctx.layout.scripts_dir);
    match action {
        ScriptsAction::Init { force } => {
            for (path, written) in scripts.write_defaults(force)? {
                if written {
                    println!("wrote {}", path.display());
                } else {
                    println!("kept {} (it exists; --force overwrites it)", path.display());
                }
            }
            Ok(Exit::Ok)
        }
        ScriptsAction::Diff { names } => {
            print!(
                "{}",
                copies::diff(&scripts, &names).map_err(|e| usage(format!("{e:#}")))?
            );
            Ok(Exit::Ok)
        }
        ScriptsAction::Merge { names, resolved } => merge(ctx, &scripts, &names, resolved),
    }
}

/// Reports each copy's outcome; exit 1 when a copy still needs the operator or a script does not compile.
fn merge(ctx: &Ctx, scripts: &Scripts, names: &[String], resolved: bool) -> Result<Exit> {
    let done = copies::merge(scripts, names, resolved).map_err(|e| usage(format!("{e:#}")))?;
    let mut ok = true;
    for d in &done {
        ok &= !matches!(d, Merged::Conflicts { .. } | Merged::NoBase(_));
        println!("{}", merged_line(ctx, d));
    }
    let problems = script::check(scripts, &Settings::from_config(ctx.config, ctx.layout));
    for p in &problems {
        println!("{p}");
    }
    Ok(Exit::ok_if(ok && problems.is_empty()))
}

fn merged_line(ctx: &Ctx, d: &Merged) -> String {
    match d {
        Merged::UpToDate(name) => format!("{name}: up to date"),
        Merged::Recorded(name) => format!("{name}: recorded this binary's built-in as its base"),
        Merged::Written { path, old } => format!(
            "{}: merged your changes with the built-in's; the previous copy is {}",
            path.display(),
            old.display()
        ),
        Merged::Conflicts {
            path,
            proposal,
            count,
        } => format!(
            "{}: {count} conflict(s), left unchanged; resolve the <<<<<<< … >>>>>>> blocks in {}, move it over {}, then `t8k-engine scripts merge --resolved {}`",
            path.display(),
            proposal.display(),
            path.display(),
            path.strip_prefix(&ctx.layout.scripts_dir)
                .unwrap_or(path)
                .display()
        ),
        Merged::NoBase(name) => format!(
            "{name}: no recorded base to merge from; compare with `t8k-engine scripts diff {name}`, bring your copy up to date by hand, then `t8k-engine scripts merge --resolved {name}`"
        ),
    }
}
