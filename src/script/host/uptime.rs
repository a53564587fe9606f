//! Owns `unit_state` and `stays_up`: whether the backend unit and the frontend process a release
//! restarted are still the ones that passed its checks (systemd's invocation, restart count and main
//! process; pm2's process and restart count), watched for a while. It only reads: it restarts nothing,
//! and asks systemd without sudo, as anyone may.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, Map};
use serde::{Deserialize, Serialize};

use super::basics::interruptible_sleep;
use super::ctx::JobCtx;
use super::options::{MAX_SECS, Opts, RunOptions, number};
use super::process::run_program;
use super::services::{Named, check_name, pm2_status};
use super::{Res, to_map};

pub(super) fn register(engine: &mut Engine, ctx: &Arc<JobCtx>) {
    let c = ctx.clone();
    engine.register_fn("unit_state", move |unit: &str| unit_state(&c, unit));
    let c = ctx.clone();
    engine.register_fn("stays_up", move |watched: Map, secs: Dynamic| {
        stays_up(&c, &watched, secs, &Map::new())
    });
    let c = ctx.clone();
    engine.register_fn("stays_up", move |watched: Map, secs: Dynamic, opts: Map| {
        stays_up(&c, &watched, secs, &opts)
    });
}

/// What systemd says of a unit, as `unit_state` returns it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct UnitState {
    unit: String,
    /// ActiveState: `active`, `activating`, `deactivating`, `failed`, `inactive`.
    state: String,
    /// SubState: `running`, `auto-restart` (exited, to be started again by `Restart=`), ...
    sub_state: String,
    /// InvocationID: new at every start of the unit, by `systemctl` or by `Restart=`.
    invocation: String,
    /// NRestarts: starts by `Restart=` since the last start by hand (() where systemd is older than 235).
    restarts: Option<i64>,
    /// MainPID, 0 when nothing runs.
    main_pid: i64,
}

const UNIT_PROPERTIES: [&str; 5] = [
    "ActiveState",
    "SubState",
    "InvocationID",
    "NRestarts",
    "MainPID",
];

fn unit_state(ctx: &JobCtx, unit: &str) -> Res<Map> {
    ctx.refuse_in_check("unit_state")?;
    to_map(&read_unit(ctx, "unit_state", unit)?)
}

/// `systemctl show UNIT -p ...`: a read anyone may do, so never through sudo (the installer's sudoers
/// rule allows only `restart` and `reload` anyway).
fn read_unit(ctx: &JobCtx, f: &str, unit: &str) -> Res<UnitState> {
    check_name(f, Named::AnyUnit, unit)?;
    let mut args = vec!["show".to_string(), unit.to_string()];
    for p in UNIT_PROPERTIES {
        args.extend(["-p".to_string(), p.to_string()]);
    }
    let out = run_program(ctx, &ctx.settings.systemctl, args, RunOptions::query())?;
    Ok(parse_show(unit, &out.stdout))
}

/// `systemctl show`'s `KEY=VALUE` lines, in whatever order systemd prints them.
fn parse_show(unit: &str, text: &str) -> UnitState {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    UnitState {
        unit: unit.to_string(),
        state: value("ActiveState"),
        sub_state: value("SubState"),
        invocation: value("InvocationID"),
        restarts: value("NRestarts").parse().ok(),
        main_pid: value("MainPID").parse().unwrap_or(0),
    }
}

/// A pm2 process as `stays_up` compares it: what `pm2("describe", name)` returned.
#[derive(Deserialize, Clone, Debug, PartialEq)]
struct Pm2Seen {
    name: String,
    status: String,
    pid: i64,
    restarts: i64,
}

/// What `stays_up` returns.
#[derive(Serialize, Debug, PartialEq)]
struct Held {
    ok: bool,
    /// Seconds watched: the whole window, or until the change was seen.
    after: f64,
    /// The unit or process that did not stay up.
    what: Option<String>,
    /// `restarted` (a new process runs), `exited` (to be started again) or `stopped`.
    how: Option<String>,
    /// What changed, as systemd and pm2 name it: `NRestarts 0 -> 1, MainPID 812 -> 840`.
    change: Option<String>,
}

/// A change seen: what, how, and the properties that changed.
type Change = (String, &'static str, String);

/// How often a pm2 process that cannot be watched by its pid is listed (`pm2 jlist` starts Node).
const PM2_LIST_EVERY: Duration = Duration::from_secs(1);

fn stays_up(ctx: &JobCtx, watched: &Map, secs: Dynamic, opts: &Map) -> Res<Map> {
    ctx.refuse_in_check("stays_up")?;
    let o = Opts::new("stays_up", opts, &["interval"])?;
    let interval = o.secs("interval")?.unwrap_or(Duration::from_millis(250));
    let secs = window_secs(&secs)?;
    let (unit, pm2) = watched_parts(watched)?;
    let started = Instant::now();
    let window = Duration::from_secs_f64(secs);
    let end = started + window;
    // A process pm2 runs is watched by its pid, which costs nothing; `pm2 jlist` only when it is gone, once
    // a second where the pid is not visible here (another PID namespace, /proc mounted with hidepid), and
    // at the end for the restart count.
    let by_pid = pm2.as_ref().is_some_and(|p| alive(p.pid));
    let mut listed = started;
    let mut looks = 0u32;
    loop {
        looks += 1;
        // Taken before the looks: the last round, after the window, still looks at everything.
        let over = Instant::now() >= end;
        let mut change = None;
        if let Some(before) = &unit {
            change = unit_change(before, &read_unit(ctx, "stays_up", &before.unit)?);
        }
        if let (None, Some(before)) = (&change, &pm2) {
            change = pm2_look(ctx, before, by_pid, over, &mut listed)?;
        }
        let after = started.elapsed().as_secs_f64();
        if let Some((what, how, change)) = change {
            tracing::warn!("{what} {how} {after:.1} s into the settle window: {change}");
            return to_map(&Held {
                ok: false,
                after,
                what: Some(what),
                how: Some(how.into()),
                change: Some(change),
            });
        }
        if over {
            let names: Vec<&str> = unit
                .iter()
                .map(|u| u.unit.as_str())
                .chain(pm2.iter().map(|p| p.name.as_str()))
                .collect();
            tracing::info!(
                "{} stayed up for {} s ({looks} looks)",
                names.join(" and "),
                number(secs)
            );
            return to_map(&Held {
                ok: true,
                after,
                what: None,
                how: None,
                change: None,
            });
        }
        interruptible_sleep(
            ctx,
            interval.min(end.saturating_duration_since(Instant::now())),
        )?;
    }
}

/// The settle window `stays_up` was given, in seconds (an integer or a float, up to `MAX_SECS`).
fn window_secs(secs: &Dynamic) -> Res<f64> {
    let secs = secs
        .as_int()
        .map(|i| i as f64)
        .or_else(|_| secs.as_float())
        .map_err(|t| format!("stays_up(): the window must be a number of seconds, got {t}"))?;
    if !(0.0..=MAX_SECS).contains(&secs) {
        return Err(format!(
            "stays_up(): `{}` is not a number of seconds up to {MAX_SECS}",
            number(secs)
        )
        .into());
    }
    Ok(secs)
}

/// One look at the pm2 process: its pid when that can be watched (free), `pm2 jlist` when the pid is
/// gone, at the end of the window, or once every `PM2_LIST_EVERY` where the pid cannot be watched.
fn pm2_look(
    ctx: &JobCtx,
    before: &Pm2Seen,
    by_pid: bool,
    over: bool,
    listed: &mut Instant,
) -> Res<Option<Change>> {
    let now = Instant::now();
    if by_pid && !alive(before.pid) {
        let seen = pm2_seen(ctx, &before.name)?;
        return Ok(Some(pm2_change(before, seen.as_ref()).unwrap_or_else(
            || {
                (
                    before.name.clone(),
                    "exited",
                    format!("pid {} exited", before.pid),
                )
            },
        )));
    }
    if over || (!by_pid && now >= *listed + PM2_LIST_EVERY) {
        *listed = now;
        return Ok(pm2_change(before, pm2_seen(ctx, &before.name)?.as_ref()));
    }
    Ok(None)
}

/// The unit and the pm2 process to watch, as `unit_state` and `pm2("describe", ...)` returned them.
fn watched_parts(watched: &Map) -> Res<(Option<UnitState>, Option<Pm2Seen>)> {
    if let Some(k) = watched
        .keys()
        .find(|k| !["unit", "pm2"].contains(&k.as_str()))
    {
        return Err(format!(
            "stays_up(): unknown key `{k}` (expected unit: what unit_state() returned, pm2: what pm2(\"describe\", name) returned)"
        )
        .into());
    }
    let part = |key: &str, from: &str| -> Res<Option<Dynamic>> {
        match watched.get(key) {
            None => Ok(None),
            Some(v) if v.is_unit() => Ok(None),
            Some(v) if v.is_map() => Ok(Some(v.clone())),
            Some(v) => Err(format!(
                "stays_up(): `{key}` must be what {from} returned, got {}",
                v.type_name()
            )
            .into()),
        }
    };
    let unit = part("unit", "unit_state()")?
        .map(|v| rhai::serde::from_dynamic::<UnitState>(&v))
        .transpose()
        .map_err(|e| format!("stays_up(): `unit` is not what unit_state() returned ({e})"))?;
    let pm2 = part("pm2", "pm2(\"describe\", name)")?
        .map(|v| rhai::serde::from_dynamic::<Pm2Seen>(&v))
        .transpose()
        .map_err(|e| {
            format!("stays_up(): `pm2` is not what pm2(\"describe\", name) returned ({e})")
        })?;
    if let Some(u) = &unit {
        check_name("stays_up", Named::AnyUnit, &u.unit)?;
    }
    if let Some(p) = &pm2 {
        check_name("stays_up", Named::TractStackProcess, &p.name)?;
    }
    Ok((unit, pm2))
}

/// How a unit differs from what passed the checks, if it does: any start since (by hand or by
/// `Restart=`), or not active any more.
fn unit_change(before: &UnitState, now: &UnitState) -> Option<Change> {
    let mut changed = Vec::new();
    if let (Some(b), Some(n)) = (before.restarts, now.restarts)
        && b != n
    {
        changed.push(format!("NRestarts {b} -> {n}"));
    }
    if before.invocation != now.invocation {
        changed.push(format!(
            "InvocationID {} -> {}",
            short_id(&before.invocation),
            short_id(&now.invocation)
        ));
    }
    if before.main_pid != now.main_pid {
        changed.push(format!("MainPID {} -> {}", before.main_pid, now.main_pid));
    }
    if now.state != "active" || before.state != now.state {
        changed.push(format!(
            "ActiveState {} -> {} ({})",
            before.state, now.state, now.sub_state
        ));
    }
    if changed.is_empty() {
        return None;
    }
    let how = match (now.state.as_str(), now.sub_state.as_str()) {
        (_, "auto-restart") => "exited",
        ("active" | "activating" | "reloading", _) => "restarted",
        _ => "stopped",
    };
    Some((now.unit.clone(), how, changed.join(", ")))
}

/// The first 8 hex digits of an invocation id, as `journalctl _SYSTEMD_INVOCATION_ID=` takes a whole one:
/// enough to tell two apart in a message.
fn short_id(id: &str) -> &str {
    if id.is_empty() {
        "none"
    } else {
        id.get(..8).unwrap_or(id)
    }
}

fn pm2_seen(ctx: &JobCtx, name: &str) -> Res<Option<Pm2Seen>> {
    Ok(pm2_status(ctx, name)?.map(|p| Pm2Seen {
        name: p.name,
        status: p.status,
        pid: p.pid,
        restarts: p.restarts,
    }))
}

/// How a pm2 process differs from what passed the checks, if it does: restarted (by pm2 after a crash,
/// or by anyone), another process, or not online.
fn pm2_change(before: &Pm2Seen, now: Option<&Pm2Seen>) -> Option<Change> {
    let Some(now) = now else {
        return Some((
            before.name.clone(),
            "stopped",
            "no longer in `pm2 jlist`".into(),
        ));
    };
    let mut changed = Vec::new();
    if before.restarts != now.restarts {
        changed.push(format!("restarts {} -> {}", before.restarts, now.restarts));
    }
    if before.pid != now.pid {
        changed.push(format!("pid {} -> {}", before.pid, now.pid));
    }
    if now.status != "online" || before.status != now.status {
        changed.push(format!("status {} -> {}", before.status, now.status));
    }
    if changed.is_empty() {
        return None;
    }
    let how = match now.status.as_str() {
        "online" | "launching" => "restarted",
        "waiting restart" => "exited",
        _ => "stopped",
    };
    Some((now.name.clone(), how, changed.join(", ")))
}

/// Whether a process of this PID namespace exists and is no zombie.
fn alive(pid: i64) -> bool {
    pid > 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(state: &str, sub: &str, inv: &str, restarts: i64, pid: i64) -> UnitState {
        UnitState {
            unit: "tractstack-go".into(),
            state: state.into(),
            sub_state: sub.into(),
            invocation: inv.into(),
            restarts: Some(restarts),
            main_pid: pid,
        }
    }

    #[test]
    fn systemctl_show_is_read_in_any_order_and_an_old_systemd_has_no_restart_count() {
        let s = parse_show(
            "tractstack-go",
            "MainPID=812\nNRestarts=2\nActiveState=active\nSubState=running\nInvocationID=0123456789abcdef0123456789abcdef\n",
        );
        assert_eq!(
            s,
            unit(
                "active",
                "running",
                "0123456789abcdef0123456789abcdef",
                2,
                812
            )
        );
        let old = parse_show("tractstack-go", "ActiveState=active\nMainPID=9\n");
        assert_eq!((old.restarts, old.invocation.as_str()), (None, ""));
    }

    #[test]
    fn a_unit_that_restarted_exited_or_stopped_is_told_apart_and_an_unchanged_one_is_not() {
        let before = unit("active", "running", "aaaaaaaa1111", 0, 100);
        assert_eq!(unit_change(&before, &before.clone()), None);
        let (what, how, change) =
            unit_change(&before, &unit("active", "running", "bbbbbbbb2222", 1, 140)).unwrap();
        assert_eq!((what.as_str(), how), ("tractstack-go", "restarted"));
        assert_eq!(
            change,
            "NRestarts 0 -> 1, InvocationID aaaaaaaa -> bbbbbbbb, MainPID 100 -> 140"
        );
        let (_, how, change) =
            unit_change(&before, &unit("activating", "auto-restart", "", 0, 0)).unwrap();
        assert_eq!(how, "exited");
        assert!(
            change.ends_with("ActiveState active -> activating (auto-restart)"),
            "{change}"
        );
        let (_, how, _) = unit_change(&before, &unit("failed", "failed", "", 0, 0)).unwrap();
        assert_eq!(how, "stopped");
    }

    #[test]
    fn a_pm2_process_that_restarted_or_stopped_is_told_apart() {
        let p = |status: &str, pid: i64, restarts: i64| Pm2Seen {
            name: "astro-main".into(),
            status: status.into(),
            pid,
            restarts,
        };
        let before = p("online", 10, 3);
        assert_eq!(pm2_change(&before, Some(&before)), None);
        assert_eq!(
            pm2_change(&before, Some(&p("online", 11, 4))),
            Some((
                "astro-main".into(),
                "restarted",
                "restarts 3 -> 4, pid 10 -> 11".into()
            ))
        );
        assert_eq!(
            pm2_change(&before, Some(&p("errored", 0, 8))).map(|c| c.1),
            Some("stopped")
        );
        assert_eq!(pm2_change(&before, None).map(|c| c.1), Some("stopped"));
    }

    #[test]
    fn only_a_live_process_is_alive() {
        assert!(alive(std::process::id() as i64));
        assert!(!alive(0));
        assert!(!alive(-1));
    }
}
