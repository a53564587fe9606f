//! `t8k-engine rollback TARGET [--to RELEASE] [--no-wait]`: checks that the release can be put back,
//! drops a `command=rollback,release=N` trigger and follows it to its end. It goes through the queue
//! rather than taking the lock itself: a running daemon holds the lock for as long as it runs, and the
//! queue makes a rollback crash-safe, recorded, cancellable and ordered with the builds like any job.

use anyhow::{Result, anyhow};

use super::Ctx;
use crate::error::{Exit, usage};
use crate::release::{self, Parts, Store};
use crate::trigger;

/// Drops the rollback trigger; follows it with `wait`.
pub fn run(ctx: &Ctx, target: &str, to: Option<&str>, wait: bool) -> Result<Exit> {
    let mut spec = spec_of(target)?;
    let to = to
        .map(|t| trigger::release_number(t.trim_start_matches('#')))
        .transpose()
        .map_err(|e| usage(e.replace("`release`", "--to")))?;
    // Named now, so that the trigger says which release it puts back: asking twice is then harmless (the
    // second finds it live), where "the previous one" would step back once more.
    let install = release::install_of(&spec);
    let store = Store::load(&ctx.layout.releases_dir, &install)?;
    let plan = store
        .plan_rollback(to, &Parts::of_install(&ctx.layout.root, &install))
        .map_err(|e| anyhow!("cannot roll back {target}: {e}"))?;
    if plan.to.id == plan.from.id {
        println!(
            "release {} of {install} is live already: nothing to do",
            plan.to.id
        );
        return Ok(Exit::Ok);
    }
    println!(
        "rolling {install} back from release {} to release {} (backend {}, frontend {}, released {})",
        plan.from.id,
        plan.to.id,
        short(plan.to.fact("backend")),
        short(plan.to.fact("frontend")),
        plan.to.released_at
    );
    spec.release = Some(plan.to.id);
    let path = super::trigger::drop_spec(ctx, &spec)?;
    println!("{}", path.display());
    if !wait {
        return Ok(Exit::Ok);
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let ok = crate::ui::follow::follow(ctx.layout, name)?;
    Ok(Exit::ok_if(ok))
}

/// The rollback job of a target name, its values checked as a trigger's.
fn spec_of(target: &str) -> Result<trigger::JobSpec> {
    let line = match target.split_once('/') {
        None if target == "main" || target == "prod" => "type=main".to_string(),
        Some(("multi", tenant)) => format!("type=multi,tenant={tenant}"),
        Some(("dedicated", site)) => format!("type=dedicated,site={site}"),
        _ => {
            return Err(usage(format!(
                "unknown target `{target}`: name main, multi/TENANT or dedicated/SITE (as `t8k-engine releases` lists them)"
            )));
        }
    };
    trigger::parse_line(&format!("{line},command={}", trigger::ROLLBACK), 1)
        .map_err(|e| usage(format!("invalid target `{target}`: {}", e.message)))
}

fn short(commit: Option<&str>) -> String {
    commit.map_or_else(|| "?".into(), |c| c.chars().take(10).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_become_rollback_lines_and_bad_ones_are_refused() {
        assert_eq!(
            spec_of("main").unwrap().to_line(),
            "type=main,tenant=default,command=rollback"
        );
        assert_eq!(
            spec_of("multi/blue").unwrap().to_line(),
            "type=multi,tenant=blue,command=rollback"
        );
        assert_eq!(
            spec_of("dedicated/acme").unwrap().to_line(),
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
            let e = spec_of(bad).unwrap_err();
            assert_eq!(crate::error::exit_of(&e), Exit::Usage, "{bad}: {e}");
        }
    }
}
