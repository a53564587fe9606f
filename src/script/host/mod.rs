//! Owns the host functions scripts call, one file and one `register` per concern (the Apollo router's
//! pattern); processes go through the supervisor, never a shell. Each function acts for one job, through
//! the job's context ([`JobCtx`]); none touches the state directory.
//!
//! | file | registers |
//! |---|---|
//! | `process.rs` | `run` |
//! | `steps.rs` | `step`, `parallel` |
//! | `services.rs` | `restart_systemd`, `pm2`, `journal` (only TractStack's units and processes) |
//! | `uptime.rs` | `unit_state`, `stays_up` (read only: whether what a release restarted stays up) |
//! | `http.rs` | `http_check`, `http_post` |
//! | `files.rs` | `file_exists`, `dir_exists`, `file_size`, `file_digest`, `read_from`, `list_dirs`, `dotenv` |
//! | `git.rs` | `git_is_clean`, `git_head`, `git_changes`, `git_local_changes` |
//! | `release.rs` | `switch_in`, `roll_back`, `last_release`, `record_release`, `put_back`, `bad_release` |
//! | `whitelist.rs` | `tailwind_whitelist` |
//! | `basics.rs` | `log`, `warn`, `env`, `unix_time`, `sleep`, `port_open` |
//! | `builds.rs` | `artifact_key`, `artifact_fetch`, `artifact_store`, `check_resources`, `disk_usage`, `build_caches` |
//! | `memo.rs` | `remember` (values kept in the engine's memory for the rest of a round) |
//! | `packages.rs` | `pnpm_dependency` |
//!
//! Shared by them: `ctx.rs` (the job's context: deadline, cancel scope, steps, failure, the branch a
//! thread runs) and `options.rs` (option maps and the presets of `run`'s options).

mod basics;
mod builds;
mod ctx;
mod files;
mod git;
mod http;
mod memo;
mod options;
mod packages;
mod process;
mod release;
mod services;
mod steps;
mod uptime;
mod whitelist;

use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, Map, Position};
use serde::Serialize;

pub use ctx::{Failure, JobCtx, StepEvent, StepHook};
pub use memo::Memo;

type Res<T> = Result<T, Box<EvalAltResult>>;

/// Registers every host function on `engine`, bound to one job's context.
pub fn register(engine: &mut Engine, ctx: &Arc<JobCtx>) {
    process::register(engine, ctx);
    steps::register(engine, ctx);
    services::register(engine, ctx);
    uptime::register(engine, ctx);
    http::register(engine, ctx);
    files::register(engine);
    git::register(engine, ctx);
    release::register(engine, ctx);
    whitelist::register(engine, ctx);
    basics::register(engine, ctx);
    builds::register(engine, ctx);
    memo::register(engine, ctx);
    packages::register(engine);
}

/// A host function's result as the map scripts receive (`None` fields become `()`).
fn to_map(value: &impl Serialize) -> Res<Map> {
    rhai::serde::to_dynamic(value)?
        .try_cast::<Map>()
        .ok_or_else(|| "a host function's result is not a map".into())
}

/// Whether an error is a cancellation, however deep in calls it was raised.
fn is_terminated(e: &EvalAltResult) -> bool {
    match e {
        EvalAltResult::ErrorTerminated(..) => true,
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => is_terminated(inner),
        _ => false,
    }
}

/// Stops the script: the job was cancelled or ran out of time.
fn terminated<T>(reason: String) -> Res<T> {
    Err(Box::new(EvalAltResult::ErrorTerminated(
        Dynamic::from(reason),
        Position::NONE,
    )))
}
