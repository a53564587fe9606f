//! Owns dispatching a parsed command to its file, one per subcommand; each does its work through the
//! library and returns the exit code for what it reported itself, or an error for `main` to render.

mod cancel;
mod check;
mod config;
mod docs;
mod eval;
mod history;
mod logs;
mod releases;
mod retry;
mod rollback;
mod run;
mod scripts;
mod status;
mod trigger;
mod whitelist;

use std::path::Path;

use anyhow::Result;

use super::Command;
use crate::config::Config;
use crate::error::Exit;
use crate::layout::Layout;

/// What every command that reads the configuration gets.
pub struct Ctx<'a> {
    /// The effective settings.
    pub config: &'a Config,
    /// The file they came from, if any.
    pub source: Option<&'a Path>,
    /// The paths they resolve to.
    pub layout: &'a Layout,
}

/// Runs the commands that work on any directory, without a configuration.
pub fn without_config(command: Command) -> Result<Exit> {
    match command {
        Command::Completions { shell } => docs::completions(shell),
        Command::Man => docs::man(),
        Command::Whitelist {
            dist,
            out,
            extra,
            stats,
        } => whitelist::run(&dist, &out, &extra, stats),
        other => unreachable!("{other:?} needs the configuration"),
    }
}

/// Runs a command that reads the configuration.
// One arm per command, each handing its arguments to the module that owns it; long only because
// the CLI has many commands.
pub fn dispatch(command: Command, ctx: &Ctx) -> Result<Exit> {
    match command {
        Command::Run { no_wait } => run::run(ctx, no_wait),
        Command::Watch => crate::daemon::watch(ctx.config, ctx.layout).map(|()| Exit::Ok),
        Command::Eval { snippet, file, job } => eval::run(ctx, snippet, file, job),
        Command::Check => check::run(ctx),
        #[cfg(feature = "fleet")]
        Command::Fleet(args) => crate::fleet::cli::run(args, ctx.config, ctx.layout),
        #[cfg(feature = "fleet")]
        Command::Trigger {
            r#type,
            tenant,
            site,
            command,
            force,
            fleet: true,
            host,
            id,
            wait,
            timeout,
            ..
        } => {
            let line = trigger::Line {
                kind: &r#type,
                tenant: &tenant,
                site: site.as_deref(),
                command: &command,
                force,
            };
            // How long a publish may wait for the server's acknowledgement.
            let patience = std::time::Duration::from_secs(30);
            crate::fleet::cli::trigger(
                ctx.config,
                &line.spec()?,
                host.as_deref(),
                id.as_deref(),
                patience,
                wait.then_some(timeout),
            )
        }
        Command::Trigger {
            r#type,
            tenant,
            site,
            all_sites,
            all_tenants,
            command,
            force,
            wait,
            timeout,
            ..
        } => {
            let wait = wait.then_some(trigger::Wait { timeout });
            let line = trigger::Line {
                kind: &r#type,
                tenant: &tenant,
                site: site.as_deref(),
                command: &command,
                force,
            };
            match (all_sites, all_tenants) {
                (false, false) => trigger::run(ctx, &line, wait),
                (sites, _) => trigger::run_all(ctx, &line, sites, wait),
            }
        }
        Command::Retry { name } => retry::run(ctx, &name),
        Command::Releases { target, json } => releases::run(ctx, target.as_deref(), json),
        Command::Rollback {
            target,
            to,
            no_wait,
            timeout,
        } => rollback::run(
            ctx,
            &target,
            to.as_deref(),
            (!no_wait).then_some(trigger::Wait { timeout }),
        ),
        Command::Api => docs::api(),
        Command::Scripts { action } => scripts::run(ctx, action),
        Command::Config => config::run(ctx),
        Command::Status { json } => status::run(ctx, json),
        Command::History {
            limit,
            target,
            failed,
            json,
        } => history::run(ctx, limit, target.as_deref(), failed, json),
        Command::Cancel => cancel::run(ctx),
        #[cfg(feature = "web")]
        Command::Serve { listen } => crate::web::serve(ctx.config, ctx.layout, listen.as_deref()),
        Command::Logs { job_id, follow } => logs::run(ctx, &job_id, follow),
        Command::Completions { .. } | Command::Man | Command::Whitelist { .. } => {
            without_config(command)
        }
    }
}

/// The engine's cancel token for a command that runs jobs in the foreground (`run`, `eval`): the first
/// SIGINT/SIGTERM cancels the running job cleanly; a second one exits at once.
fn cancel_on_signals() -> Result<crate::cancel::Cancel> {
    use anyhow::Context;
    use signal_hook::consts::{SIGINT, SIGTERM};
    let cancel = crate::cancel::Cancel::new();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    let c = cancel.clone();
    std::thread::spawn(move || {
        for (n, sig) in signals.forever().enumerate() {
            if n == 0 {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                tracing::warn!(
                    "{name} received: stopping the running step (send it again to exit at once)"
                );
                c.cancel(&format!("engine stopping ({name})"));
            } else {
                std::process::exit(130);
            }
        }
    });
    Ok(cancel)
}
