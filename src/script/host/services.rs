//! Owns the service helpers: `restart_systemd`, `pm2` and `journal`, and TractStack's naming policy
//! that bounds them: a script (or a value from a trigger) can name only TractStack's backend units and
//! frontend processes, the ones the installer's sudo rule allows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, Map};
use serde::Serialize;

use super::basics::interruptible_sleep;
use super::ctx::JobCtx;
use super::options::RunOptions;
use super::process::{RunResult, run_program};
use super::{Res, to_map};

pub(super) fn register(engine: &mut Engine, ctx: &Arc<JobCtx>) {
    let c = ctx.clone();
    engine.register_fn("restart_systemd", move |unit: &str| {
        restart_systemd(&c, unit)
    });
    let c = ctx.clone();
    engine.register_fn("pm2", move |action: &str, name: &str| pm2(&c, action, name));
    let c = ctx.clone();
    engine.register_fn("journal", move |unit: &str, since: i64| {
        journal(&c, unit, since)
    });
}

/// Whether `unit` is a TractStack backend unit: `tractstack-go` or `tractstack-go@SITE`, SITE a valid
/// trigger value. These are the only units `restart_systemd` touches and the only ones the sudo rule in
/// examples/sudoers.d/t8k-engine allows, so a script (or a value from a trigger) can name no other.
pub fn tractstack_unit(unit: &str) -> bool {
    unit == "tractstack-go"
        || unit
            .strip_prefix("tractstack-go@")
            .is_some_and(|site| crate::trigger::validate_value("site", site).is_ok())
}

/// Whether `name` is a TractStack frontend process: `astro-main` or `astro-SITE`.
pub fn tractstack_pm2_name(name: &str) -> bool {
    name.strip_prefix("astro-")
        .is_some_and(|site| crate::trigger::validate_value("site", site).is_ok())
}

/// What a service helper names.
#[derive(Clone, Copy)]
pub(super) enum Named {
    /// A systemd unit that may be restarted: TractStack's only.
    TractStackUnit,
    /// A pm2 process that may be managed: TractStack's only.
    TractStackProcess,
    /// A systemd unit whose journal is read: any.
    AnyUnit,
}

/// Refuses a name `f` was given unless it is a valid name of its kind, and for actions, TractStack's.
pub(super) fn check_name(f: &str, kind: Named, name: &str) -> Res<()> {
    let (what, extra) = match kind {
        Named::TractStackUnit | Named::AnyUnit => ("unit", "@:"),
        Named::TractStackProcess => ("process", "@"),
    };
    let valid = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c) || extra.contains(c));
    if !valid {
        return Err(format!(
            "{f}(): `{}` is not a valid {what} name",
            name.escape_debug()
        )
        .into());
    }
    let refused = match kind {
        Named::TractStackUnit if !tractstack_unit(name) => {
            "is not a TractStack unit: only tractstack-go and tractstack-go@SITE may be restarted (see SECURITY.md); use job.unit"
        }
        Named::TractStackProcess if !tractstack_pm2_name(name) => {
            "is not a TractStack process: only astro-main and astro-SITE may be managed (see SECURITY.md); use job.pm2_name"
        }
        _ => return Ok(()),
    };
    Err(format!("{f}(): `{name}` {refused}").into())
}

/// What `restart_systemd` returns.
#[derive(Serialize)]
struct Restarted<'a> {
    unit: &'a str,
    active: bool,
}

fn restart_systemd(ctx: &JobCtx, unit: &str) -> Res<Map> {
    ctx.refuse_in_check("restart_systemd")?;
    check_name("restart_systemd", Named::TractStackUnit, unit)?;
    let s = &ctx.settings;
    // Only the restart may need root: `is-active` is a read anyone may do, and the installer's sudoers
    // rule (`systemctl restart|reload tractstack-go*`) would refuse it.
    let systemctl = |args: &[&str], opts: RunOptions, sudo: bool| {
        let mut argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if sudo {
            argv.splice(0..0, ["-n".to_string(), s.systemctl.clone()]);
            run_program(ctx, "sudo", argv, opts)
        } else {
            run_program(ctx, &s.systemctl, argv, opts)
        }
    };
    systemctl(&["restart", unit], RunOptions::service(), s.sudo_systemctl).map_err(|e| {
        let text = e.to_string();
        if !s.sudo_systemctl
            && (text.contains("Interactive authentication required") || text.contains("Access denied"))
        {
            format!(
                "{text}\npolkit does not let this user restart {unit}: set `sudo_systemctl = true` in the engine's config (the TractStack installer's sudoers rule already allows `sudo systemctl restart tractstack-go*`)"
            )
            .into()
        } else {
            e
        }
    })?;
    let state = systemctl(&["is-active", unit], RunOptions::probe(), false)?;
    let said = state.stdout.trim();
    if said != "active" {
        return Err(format!(
            "{unit} is not active after restart (systemctl is-active says `{said}`); see `journalctl -u {unit} -n 50`"
        )
        .into());
    }
    to_map(&Restarted { unit, active: true })
}

/// A pm2 process as `pm2()` returns it.
#[derive(Serialize)]
pub(super) struct Pm2Process {
    pub name: String,
    pub status: String,
    pub pid: i64,
    pub restarts: i64,
    err_log: String,
    out_log: String,
    /// `fork` or `cluster`: in fork mode a reload stops the process before starting the new one.
    mode: String,
    instances: i64,
    /// The port the app was started with (its environment's PORT), `()` when it has none.
    port: Option<i64>,
}

impl Pm2Process {
    /// The entry of `pm2 jlist` for `name`.
    fn from_jlist(name: &str, p: &serde_json::Value) -> Pm2Process {
        let env = &p["pm2_env"];
        let text = |v: &serde_json::Value, default: &str| v.as_str().unwrap_or(default).to_string();
        let port = [&env["PORT"], &env["env"]["PORT"]]
            .into_iter()
            .find_map(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .filter(|p| (1..=65535).contains(p))
            });
        Pm2Process {
            name: name.to_string(),
            status: text(&env["status"], "unknown"),
            pid: p["pid"].as_i64().unwrap_or(0),
            restarts: env["restart_time"].as_i64().unwrap_or(0),
            err_log: text(&env["pm_err_log_path"], ""),
            out_log: text(&env["pm_out_log_path"], ""),
            mode: text(&env["exec_mode"], "fork_mode")
                .trim_end_matches("_mode")
                .to_string(),
            instances: env["instances"].as_i64().unwrap_or(1),
            port: port.map(|p| p as i64),
        }
    }
}

pub(super) fn pm2_status(ctx: &JobCtx, name: &str) -> Res<Option<Pm2Process>> {
    let listed = run_program(
        ctx,
        &ctx.settings.pm2,
        vec!["jlist".into()],
        // Any pm2 command starts pm2's daemon when none runs.
        RunOptions::query().keeping_daemons(),
    )?;
    let text = listed.stdout;
    // pm2 may print warnings before the JSON array.
    let json = text.find('[').map_or("[]", |i| &text[i..]);
    let list: Vec<serde_json::Value> = serde_json::from_str(json.trim())
        .map_err(|e| format!("pm2(): cannot read `pm2 jlist` output as JSON ({e})"))?;
    Ok(list
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| Pm2Process::from_jlist(name, p)))
}

fn pm2(ctx: &JobCtx, action: &str, name: &str) -> Res<Map> {
    ctx.refuse_in_check("pm2")?;
    let want = match action {
        "reload" | "restart" | "start" => Some("online"),
        "stop" => Some("stopped"),
        "describe" => None,
        _ => return Err(format!(
            "pm2(): unknown action `{action}` (expected reload, restart, start, stop or describe)"
        )
        .into()),
    };
    check_name("pm2", Named::TractStackProcess, name)?;
    if want.is_some() {
        run_program(
            ctx,
            &ctx.settings.pm2,
            vec![action.into(), name.into()],
            RunOptions::service(),
        )?;
    }
    // pm2 may report `launching` for a moment after a reload; give it a few seconds to settle.
    let settle = Instant::now() + Duration::from_secs(10);
    loop {
        let status = pm2_status(ctx, name)?;
        let seen = status.as_ref().map(|p| p.status.clone());
        match (want, status) {
            (None, Some(p)) => return to_map(&p),
            (None, None) => {
                return Err(format!("pm2(): no process named `{name}` in `pm2 jlist`").into());
            }
            (Some(w), Some(p)) if p.status == w => return to_map(&p),
            (Some(w), _)
                if Instant::now() >= settle
                    || matches!(seen.as_deref(), Some("errored") | Some("stopped")) =>
            {
                let seen = seen.unwrap_or_else(|| "missing".into());
                return Err(format!(
                    "pm2 process {name} is {seen} after `pm2 {action}` (expected {w}); see `pm2 logs {name} --lines 50`"
                )
                .into());
            }
            _ => interruptible_sleep(ctx, Duration::from_millis(200))?,
        }
    }
}

/// A unit's journal since a Unix time, or () where there is no journal to read (no journald).
fn journal(ctx: &JobCtx, unit: &str, since: i64) -> Res<Dynamic> {
    ctx.refuse_in_check("journal")?;
    check_name("journal", Named::AnyUnit, unit)?;
    let args = [
        "-u",
        unit,
        "--since",
        &format!("@{since}"),
        "-o",
        "cat",
        "--no-pager",
        "-q",
    ]
    .map(String::from)
    .to_vec();
    match run_program(ctx, "journalctl", args, RunOptions::probe()) {
        Ok(RunResult {
            code: Some(0),
            stdout,
            ..
        }) => Ok(stdout.into()),
        Ok(_) | Err(_) => {
            tracing::debug!("journal(): no journal to read for {unit}");
            Ok(Dynamic::UNIT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tractstack_units_and_processes_pass_the_policy() {
        for unit in ["tractstack-go", "tractstack-go@acme", "tractstack-go@a_b-1"] {
            assert!(tractstack_unit(unit), "{unit}");
        }
        for unit in [
            "sshd",
            "tractstack-go.service",
            "tractstack-go@",
            "tractstack-go@-x",
            "tractstack-go@a@b",
            "tractstack-go@a:b",
            "tractstack-go@../x",
            "tractstack-go-evil",
            "xtractstack-go",
            "tractstack-go@acme sshd",
        ] {
            assert!(!tractstack_unit(unit), "{unit}");
        }
        assert!(tractstack_unit(&format!(
            "tractstack-go@{}",
            "s".repeat(64)
        )));
        assert!(!tractstack_unit(&format!(
            "tractstack-go@{}",
            "s".repeat(65)
        )));
        for name in ["astro-main", "astro-acme"] {
            assert!(tractstack_pm2_name(name), "{name}");
        }
        for name in ["astro-", "astro--x", "pm2-logrotate", "astro-a@b", "astro"] {
            assert!(!tractstack_pm2_name(name), "{name}");
        }
    }

    #[test]
    fn names_are_checked_in_one_place_with_each_helpers_words() {
        let refused = |f, kind, name| check_name(f, kind, name).unwrap_err().to_string();
        assert!(
            refused("restart_systemd", Named::TractStackUnit, "a b")
                .contains("restart_systemd(): `a b` is not a valid unit name")
        );
        assert!(
            refused("restart_systemd", Named::TractStackUnit, "sshd")
                .contains("`sshd` is not a TractStack unit")
        );
        assert!(
            refused("pm2", Named::TractStackProcess, "a:b").contains("not a valid process name")
        );
        assert!(
            refused("pm2", Named::TractStackProcess, "pm2-logrotate")
                .contains("`pm2-logrotate` is not a TractStack process")
        );
        assert!(check_name("journal", Named::AnyUnit, "sshd.service").is_ok());
        assert!(
            refused("journal", Named::AnyUnit, "-x")
                .contains("journal(): `-x` is not a valid unit name")
        );
    }
}
