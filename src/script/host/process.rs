//! Owns `run()`: one program per call, checked, given the job's environment and time, run through the
//! supervisor (never a shell) and logged line by line; the service and git helpers run theirs through
//! [`run_program`] too.

use std::collections::VecDeque;
use std::sync::Arc;

use rhai::{Array, Engine, Map};
use serde::Serialize;

use super::ctx::JobCtx;
use super::options::{RunOptions, strings};
use super::{Res, terminated, to_map};
use crate::scope::{self, Scope};
use crate::supervise::{self, Ended, JOB_TAG_VAR, Spec, Stream};

/// How many lines of a failing command's output its failure keeps.
const TAIL_LINES: usize = 30;

pub(super) fn register(engine: &mut Engine, ctx: &Arc<JobCtx>) {
    let c = ctx.clone();
    engine.register_fn("run", move |cmd: &str, args: Array| -> Res<Map> {
        c.refuse_in_check("run")?;
        let out = run_program(
            &c,
            cmd,
            strings("run", args)?,
            RunOptions::parse(&Map::new())?,
        )?;
        to_map(&out)
    });
    let c = ctx.clone();
    engine.register_fn(
        "run",
        move |cmd: &str, args: Array, opts: Map| -> Res<Map> {
            c.refuse_in_check("run")?;
            let out = run_program(&c, cmd, strings("run", args)?, RunOptions::parse(&opts)?)?;
            to_map(&out)
        },
    );
}

/// What `run()` returns.
#[derive(Serialize)]
pub(super) struct RunResult {
    /// The exit code, `()` when a signal ended the process.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Wall time in seconds.
    pub duration: f64,
    pub timed_out: bool,
}

/// Runs one program for a script: the heart of `run()`, also used by the service and git helpers.
pub(super) fn run_program(
    ctx: &JobCtx,
    cmd: &str,
    args: Vec<String>,
    o: RunOptions,
) -> Res<RunResult> {
    check_command(cmd, &args, &o)?;
    let line = shown(cmd, &args);
    let limit = ctx.limit(o.timeout.unwrap_or(ctx.settings.step_timeout));
    if limit.timeout.is_zero() {
        return terminated(ctx.over_time(""));
    }
    let (spec, scope) = spec(ctx, cmd, args, &o, limit.timeout);
    if o.quiet {
        tracing::debug!("$ {line}");
    } else {
        tracing::info!("$ {line}");
    }
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    let mut on_line = |stream: Stream, text: &str| {
        if !o.quiet {
            match stream {
                Stream::Stdout => tracing::info!(target: "t8k::out", "{text}"),
                Stream::Stderr => tracing::info!(target: "t8k::err", "{text}"),
            }
        }
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text.to_string());
    };
    let out = supervise::run(&spec, &ctx.current_cancel(), &mut on_line).map_err(|e| match e {
        supervise::SpawnError::NotFound(p) => {
            format!("run(): command not found: {p} (is it installed and on the engine's PATH?)")
        }
        other => format!("run(): {other}"),
    });
    let scope_end = scope.as_ref().map(|s| end_scope(s, &line, &out));
    let out = out?;
    ctx.charge_open_steps(&out);
    if out.leftovers_killed > 0 {
        tracing::warn!(
            "`{line}` left {} process(es) running after it exited; they were killed",
            out.leftovers_killed
        );
    }
    let problem = match &out.ended {
        Ended::Cancelled(reason) => return terminated(reason.clone()),
        Ended::TimedOut if limit.by_deadline => {
            return terminated(ctx.over_time(&format!(" while running `{line}`")));
        }
        Ended::TimedOut => Some(format!(
            "`{line}` timed out after {}s; its process group was killed",
            limit.timeout.as_secs_f64().round()
        )),
        Ended::Exited if out.code == Some(0) => None,
        Ended::Exited => Some(exit_problem(
            &line,
            &out,
            scope.as_ref(),
            scope_end.as_ref(),
        )),
    };
    let result = RunResult {
        code: out.code,
        signal: out.signal,
        duration: out.wall.as_secs_f64(),
        timed_out: out.ended == Ended::TimedOut,
        stdout: out.stdout,
        stderr: out.stderr,
    };
    let Some(problem) = problem.filter(|_| !o.allow_fail) else {
        return Ok(result);
    };
    let message = failure_message(problem, &result);
    ctx.fail_here(
        message.lines().next().unwrap_or("").to_string(),
        tail.into(),
    );
    Err(message.into())
}

/// Why a program that exited by itself failed: its code, or the signal that ended it, read as the memory
/// limit of its scope when that is what a SIGKILL the engine did not send means.
fn exit_problem(
    line: &str,
    out: &supervise::Outcome,
    scope: Option<&Scope>,
    scope_end: Option<&scope::ScopeEnd>,
) -> String {
    match (out.code, out.signal) {
        (Some(code), _) => format!("`{line}` exited with code {code}"),
        (None, Some(9)) if let Some(limit) = scope.and_then(|s| s.memory_limit()) => {
            memory_kill(line, limit, scope_end.is_some_and(|e| e.oom_confirmed))
        }
        (None, Some(sig)) => format!("`{line}` was killed by signal {sig}"),
        (None, None) => format!("`{line}` ended abnormally"),
    }
}

/// Refuses what no program could receive, and a relative path with nothing to be relative to.
fn check_command(cmd: &str, args: &[String], o: &RunOptions) -> Res<()> {
    if cmd.is_empty() {
        return Err("run(): the command is empty".into());
    }
    if cmd.contains('\0') {
        return Err(format!("run(): the command {cmd:?} contains a NUL byte").into());
    }
    if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        return Err(format!(
            "run(): argument {} of `{cmd}` contains a NUL byte, which no program can receive",
            i + 1
        )
        .into());
    }
    if let Some(cwd) = &o.cwd
        && cwd.as_os_str().as_encoded_bytes().contains(&0)
    {
        return Err(format!("run(): the working directory {cwd:?} contains a NUL byte").into());
    }
    // A relative path would resolve against whatever directory the engine was started in.
    if cmd.contains('/') && !cmd.starts_with('/') && o.cwd.is_none() {
        return Err(format!(
            "run(): `{cmd}` is a relative path, which needs a `cwd` to be relative to; give an absolute path or a cwd"
        )
        .into());
    }
    if let Some(cwd) = &o.cwd
        && !cwd.is_dir()
    {
        return Err(format!("run(): working directory {} does not exist", cwd.display()).into());
    }
    Ok(())
}

/// What the supervisor runs: the job's environment under the run's own, its tag, its priority, and a
/// systemd scope around it when `step_scope` asks for one and a manager is there to hold it.
fn spec(
    ctx: &JobCtx,
    cmd: &str,
    args: Vec<String>,
    o: &RunOptions,
    timeout: std::time::Duration,
) -> (Spec, Option<Scope>) {
    let s = &ctx.settings;
    let low_priority = o.low_priority.unwrap_or(s.low_priority);
    let wanted = s.step_scope.wanted(!s.build_limits.is_empty());
    // A step that starts a daemon on purpose (`keep_detached`) must not have it stopped with its scope.
    let scope = (wanted && low_priority && !o.keep_detached && scope::available(s.scope_manager))
        .then(|| {
            Scope::new(
                s.job_tag.as_deref().unwrap_or("eval"),
                &s.build_limits,
                s.scope_manager,
                &s.systemctl,
                s.kill_grace,
            )
        });
    let (program, args) = match &scope {
        Some(scope) => scope.wrap(cmd, args),
        None => (cmd.to_string(), args),
    };
    let env = s
        .env
        .iter()
        .cloned()
        .chain(scope.iter().flat_map(Scope::env))
        .chain(o.env.iter().cloned())
        .chain(
            s.job_tag
                .iter()
                .map(|t| (JOB_TAG_VAR.to_string(), t.clone())),
        )
        .collect();
    let spec = Spec {
        program,
        args,
        cwd: o.cwd.clone(),
        env,
        timeout,
        grace: s.kill_grace,
        capture_limit: 256 * 1024,
        low_priority,
        keep_detached: o.keep_detached,
    };
    (spec, scope)
}

/// Ends a step's scope once its program has ended, and says what the scope still held.
fn end_scope<E>(scope: &Scope, line: &str, out: &Result<supervise::Outcome, E>) -> scope::ScopeEnd {
    let sigkilled = out
        .as_ref()
        .is_ok_and(|o| o.ended == Ended::Exited && o.signal == Some(9));
    let end = scope.finish(sigkilled);
    if end.stopped {
        let tasks = end
            .left_tasks
            .map_or(String::new(), |n| format!(" ({n} task(s))"));
        tracing::warn!(
            "`{line}` left processes in its scope {}{tasks} after it ended, outside its process group or \
             without the engine's tags; the scope was stopped",
            scope.unit()
        );
    }
    end
}

/// Why a step killed by SIGKILL in a scope with a memory limit failed.
fn memory_kill(line: &str, limit: &str, confirmed: bool) -> String {
    let how = if confirmed {
        "systemd reports an out-of-memory kill in its scope"
    } else {
        // cgroup v1 hosts: the scope is gone before its result can be read. The engine's own SIGKILL
        // (timeout, cancel) never ends a step as `Exited`.
        "it was killed by SIGKILL, which the engine did not send (the kernel's out-of-memory killer, unless someone killed it by hand)"
    };
    format!(
        "`{line}` hit its memory limit ({limit} in build_limits): {how}; raise the limit or make the build use less memory"
    )
}

/// The error of a failed command: what happened, its last line of output, and the last ten lines when
/// there are several (stderr's, or stdout's when stderr is empty).
fn failure_message(problem: String, out: &RunResult) -> String {
    let source = if out.stderr.trim().is_empty() {
        &out.stdout
    } else {
        &out.stderr
    };
    let lines = last_lines(source, 10);
    let mut message = problem;
    if let Some(last) = lines.last() {
        message.push_str(&format!(": {last}"));
    }
    if lines.len() > 1 {
        message.push_str("\noutput tail:\n  ");
        message.push_str(&lines.join("\n  "));
    }
    message
}

fn last_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// How a command line is shown in logs and messages (never executed as a string); cut after
/// `SHOWN_MAX` bytes so that a huge argument list cannot turn every log line and reason into megabytes.
pub(super) fn shown(cmd: &str, args: &[String]) -> String {
    const SHOWN_MAX: usize = 1000;
    let mut out = cmd.to_string();
    for (i, a) in args.iter().enumerate() {
        if out.len() > SHOWN_MAX {
            let rest: usize = args[i..].iter().map(|a| a.len() + 1).sum();
            out.push_str(&format!(
                " … ({} more argument(s), {rest} bytes)",
                args.len() - i
            ));
            break;
        }
        out.push(' ');
        if a.is_empty()
            || a.chars()
                .any(|c| c.is_whitespace() || "'\"\\$`".contains(c))
        {
            out.push_str(&format!("{a:?}"));
        } else {
            out.push_str(a);
        }
    }
    if out.len() > SHOWN_MAX + 200 {
        let mut cut = SHOWN_MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        let more = out.len() - cut;
        out.truncate(cut);
        out.push_str(&format!("… ({more} more bytes)"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_command_line_is_shown_cut() {
        let args: Vec<String> = (0..5000).map(|i| format!("arg{i}")).collect();
        let line = shown("tool", &args);
        assert!(line.len() < 1300, "{}", line.len());
        assert!(line.starts_with("tool arg0 arg1 "), "{line}");
        assert!(line.contains("more argument(s)"), "{line}");
        let one = shown("tool", &["é".repeat(2000)]);
        assert!(one.len() < 1300 && one.ends_with("more bytes)"), "{one}");
        assert_eq!(shown("sh", &["-c".into(), "a b".into()]), "sh -c \"a b\"");
    }
}
