//! Owns the host functions scripts call (`run`, `restart_systemd`, `pm2`, `http_check`, `step`, `parallel`
//! and the helpers) and the per-job record of steps; processes go through the supervisor, never a shell.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::{Array, Dynamic, Engine, EvalAltResult, FnPtr, Map, NativeCallContext, Position};

use crate::cancel::Cancel;
use crate::history::StepRecord;
use crate::http;
use crate::supervise::{self, Ended, JOB_TAG_VAR, Spec, Stream};

type Res<T> = Result<T, Box<EvalAltResult>>;

/// Settings the host functions need from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Default `run()` timeout.
    pub step_timeout: Duration,
    /// SIGTERM-to-SIGKILL delay for process groups.
    pub kill_grace: Duration,
    /// The `systemctl` program.
    pub systemctl: String,
    /// Run `systemctl` through `sudo -n`.
    pub sudo_systemctl: bool,
    /// The `pm2` program.
    pub pm2: String,
    /// Default `http_check` deadline.
    pub http_timeout: Duration,
    /// Run steps at low CPU and I/O priority unless a `run()` asks for `priority: "normal"`.
    pub low_priority: bool,
    /// Where release records live (engine-owned).
    pub releases_dir: PathBuf,
    /// How many previous releases `switch_in` keeps by default.
    pub keep_releases: usize,
    /// systemd properties for a `systemd-run --scope` around low-priority steps (empty: none).
    pub build_limits: Vec<String>,
    /// Set as `T8K_ENGINE_TRIGGER` in every child's environment, so that a restarted engine can find
    /// and stop what a dead one left running for this trigger.
    pub job_tag: Option<String>,
    /// Every step's environment on top of the engine's (`[env]` in the config: `PATH` additions and
    /// variables); a `run()`'s own `env` wins.
    pub env: Vec<(String, String)>,
}

/// The step that failed and what its process printed last.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Index into the step records, when the failure happened inside a step.
    pub step: Option<usize>,
    /// The error's first line.
    pub message: String,
    /// The last lines of output of the failing process.
    pub tail: Vec<String>,
}

/// Per-job state shared by every host function and `parallel` branch of one job.
pub struct JobCtx {
    /// Settings from the configuration.
    pub settings: Settings,
    /// Cancelled when the engine stops or the job is cancelled.
    pub cancel: Cancel,
    /// When the job must be over.
    pub deadline: Option<Instant>,
    /// The job's time limit, for messages.
    pub job_timeout: Duration,
    /// Check mode: functions that act refuse to run.
    pub dry: bool,
    started: Instant,
    steps: Mutex<Vec<StepRecord>>,
    failure: Mutex<Option<Failure>>,
    step_hook: Mutex<Option<StepHook>>,
    /// `parallel` branches running now, nested ones included.
    branches: std::sync::atomic::AtomicUsize,
    /// What the job switched, for the release it records (`release::Tracker`).
    pub releases: crate::release::Tracker,
}

/// The most `parallel` branches a job may run at once, nested ones included: each is a thread, and
/// nesting multiplies them.
pub const MAX_BRANCHES: usize = 16;

/// Told of every step as it starts and ends (the engine records it for `status` and status.json).
pub type StepHook = Box<dyn Fn(StepEvent<'_>) + Send + Sync>;

/// A step starting or ending, as the step hook is told.
pub enum StepEvent<'a> {
    /// A step started: its name and `parallel` branch.
    Started(&'a str, &'a str),
    /// A step ended, with its record.
    Ended(&'a StepRecord),
}

impl JobCtx {
    /// A fresh context for one job.
    pub fn new(
        settings: Settings,
        cancel: Cancel,
        job_timeout: Duration,
        dry: bool,
    ) -> Arc<JobCtx> {
        let started = Instant::now();
        Arc::new(JobCtx {
            settings,
            cancel,
            deadline: (!dry).then(|| started + job_timeout),
            job_timeout,
            dry,
            started,
            steps: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            step_hook: Mutex::new(None),
            branches: std::sync::atomic::AtomicUsize::new(0),
            releases: crate::release::Tracker::default(),
        })
    }

    /// Calls `hook` as each step starts and ends.
    pub fn on_step(&self, hook: StepHook) {
        *self.step_hook.lock().unwrap() = Some(hook);
    }

    /// The steps recorded so far.
    pub fn steps(&self) -> Vec<StepRecord> {
        self.steps.lock().unwrap().clone()
    }

    /// The failure recorded for the job, if any, with its step's name.
    pub fn failure(&self) -> Option<(Option<String>, Failure)> {
        let failure = self.failure.lock().unwrap().clone()?;
        let name = failure
            .step
            .and_then(|i| self.steps.lock().unwrap().get(i).map(|s| s.name.clone()));
        Some((name, failure))
    }

    fn note_failure(&self, failure: Failure) {
        let mut slot = self.failure.lock().unwrap();
        // Keep the innermost failure: an outer step re-raising the same error must not replace it.
        let newer = match (&*slot, failure.step) {
            (None, _) => true,
            (Some(old), Some(new)) => old.step.is_none_or(|o| new > o),
            (Some(_), None) => false,
        };
        if newer {
            *slot = Some(failure);
        }
    }

    fn current_cancel(&self) -> Cancel {
        BRANCH
            .with(|b| b.borrow().cancel.clone())
            .unwrap_or_else(|| self.cancel.clone())
    }

    /// Where a trigger's job notes its switches (see `release::pending_dir`); `eval` notes none, so an
    /// operator's manual switch is never undone by the next engine start.
    fn pending_releases(&self) -> Option<PathBuf> {
        self.settings
            .job_tag
            .as_ref()
            .map(|_| crate::release::pending_dir(&self.settings.releases_dir))
    }

    fn refuse_in_check(&self, f: &str) -> Res<()> {
        if self.dry {
            return Err(format!("{f}() is not allowed while checking scripts (top-level code must only import and define)").into());
        }
        Ok(())
    }

    /// Why the script should stop now, if it should (checked between operations).
    pub fn stop_reason(&self) -> Option<String> {
        let cancel = self.current_cancel();
        if cancel.is_cancelled() {
            return Some(cancel.reason().unwrap_or_else(|| "job cancelled".into()));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(format!(
                "job exceeded its time limit of {}s",
                self.job_timeout.as_secs()
            ));
        }
        None
    }
}

/// The `parallel` branch the current thread runs: output prefix, cancel scope and open steps.
#[derive(Default, Clone)]
struct Branch {
    label: String,
    cancel: Option<Cancel>,
    steps: Vec<usize>,
}

thread_local! {
    static BRANCH: RefCell<Branch> = RefCell::new(Branch::default());
}

fn prefix() -> String {
    BRANCH.with(|b| {
        let b = b.borrow();
        if b.label.is_empty() {
            String::new()
        } else {
            format!("[{}] ", b.label)
        }
    })
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

fn terminated<T>(reason: String) -> Res<T> {
    Err(Box::new(EvalAltResult::ErrorTerminated(
        reason.into(),
        Position::NONE,
    )))
}

/// The longest wait a script may ask for (about 31 years): anything longer is a mistake, and a
/// `Duration` or `Instant` built from it could overflow.
const MAX_SECS: f64 = 1e9;

/// A number as a message shows it: 1e300 in full is three hundred digits.
fn number(x: f64) -> String {
    if x.abs() < 1e12 {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// Validates an option map against the keys a function accepts.
struct Opts<'a> {
    f: &'static str,
    map: &'a Map,
}

impl<'a> Opts<'a> {
    fn new(f: &'static str, map: &'a Map, allowed: &[&str]) -> Res<Opts<'a>> {
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "{f}(): unknown option `{k}` (expected one of: {})",
                allowed.join(", ")
            )
            .into());
        }
        Ok(Opts { f, map })
    }

    fn wrong<T>(&self, key: &str, want: &str, got: &Dynamic) -> Res<T> {
        Err(format!(
            "{}(): option `{key}` must be {want}, got {}",
            self.f,
            got.type_name()
        )
        .into())
    }

    fn bool(&self, key: &str) -> Res<bool> {
        match self.map.get(key) {
            None => Ok(false),
            Some(v) => v.as_bool().or_else(|_| self.wrong(key, "true or false", v)),
        }
    }

    fn secs(&self, key: &str) -> Res<Option<Duration>> {
        let Some(v) = self.map.get(key) else {
            return Ok(None);
        };
        let secs = v
            .as_int()
            .map(|i| i as f64)
            .or_else(|_| v.as_float())
            .or_else(|_| self.wrong(key, "a number of seconds", v))?;
        if !(secs > 0.0 && secs <= MAX_SECS) {
            return Err(format!(
                "{}(): option `{key}` must be a positive number of seconds up to {MAX_SECS}, got {}",
                self.f,
                number(secs)
            )
            .into());
        }
        Ok(Some(Duration::from_secs_f64(secs)))
    }

    fn string(&self, key: &str) -> Res<Option<String>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) if v.is_string() => Ok(Some(v.to_string())),
            Some(v) => self.wrong(key, "a string", v),
        }
    }
}

/// What `run()` was asked to do.
struct RunOptions {
    cwd: Option<PathBuf>,
    env: Vec<(String, String)>,
    timeout: Option<Duration>,
    quiet: bool,
    allow_fail: bool,
    /// `Some(true)` low, `Some(false)` normal, `None` the configured default.
    low_priority: Option<bool>,
    /// Leave running what detaches into its own session: only the service helpers, whose job is to start daemons.
    keep_detached: bool,
}

impl RunOptions {
    fn parse(map: &Map) -> Res<RunOptions> {
        let o = Opts::new(
            "run",
            map,
            &["cwd", "env", "timeout", "quiet", "allow_fail", "priority"],
        )?;
        let low_priority = match o.string("priority")?.as_deref() {
            None => None,
            Some("low") => Some(true),
            Some("normal") => Some(false),
            Some(other) => {
                return Err(format!(
                    "run(): option `priority` must be \"low\" or \"normal\", not \"{other}\""
                )
                .into());
            }
        };
        let env = match map.get("env") {
            None => Vec::new(),
            Some(v) => {
                let Some(m) = v.read_lock::<Map>() else {
                    return o.wrong("env", "a map of strings", v);
                };
                m.iter()
                    .map(|(k, v)| {
                        if k.is_empty() || k.contains('=') || k.contains('\0') {
                            return Err(format!(
                                "run(): environment variable name `{}` is not valid",
                                k.escape_debug()
                            )
                            .into());
                        }
                        let v = v.to_string();
                        if v.contains('\0') {
                            return Err(format!(
                                "run(): the value of environment variable `{k}` contains a NUL byte, which no program can receive"
                            )
                            .into());
                        }
                        Ok((k.to_string(), v))
                    })
                    .collect::<Res<Vec<_>>>()?
            }
        };
        Ok(RunOptions {
            cwd: o.string("cwd")?.map(PathBuf::from),
            env,
            timeout: o.secs("timeout")?,
            quiet: o.bool("quiet")?,
            allow_fail: o.bool("allow_fail")?,
            low_priority,
            keep_detached: false,
        })
    }
}

/// How a command line is shown in logs and messages (never executed as a string); cut after
/// `SHOWN_MAX` bytes so that a huge argument list cannot turn every log line and reason into megabytes.
fn shown(cmd: &str, args: &[String]) -> String {
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

fn strings(f: &str, args: Array) -> Res<Vec<String>> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if a.is_string() {
                Ok(a.to_string())
            } else {
                Err(format!(
                    "{f}(): argument {} must be a string, got {} (write it as a string)",
                    i + 1,
                    a.type_name()
                )
                .into())
            }
        })
        .collect()
}

fn last_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// Runs one program for a script: the heart of `run()`, also used by the service helpers.
fn run_program(ctx: &JobCtx, cmd: &str, args: Vec<String>, o: RunOptions) -> Res<Map> {
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
    let line = shown(cmd, &args);
    let requested = o.timeout.unwrap_or(ctx.settings.step_timeout);
    let left = ctx
        .deadline
        .map(|d| d.saturating_duration_since(Instant::now()));
    let by_deadline = left.is_some_and(|l| l < requested);
    let timeout = left.map_or(requested, |l| l.min(requested));
    if timeout.is_zero() {
        return terminated(format!(
            "job exceeded its time limit of {}s",
            ctx.job_timeout.as_secs()
        ));
    }
    let low_priority = o.low_priority.unwrap_or(ctx.settings.low_priority);
    let (program, args) =
        if low_priority && !ctx.settings.build_limits.is_empty() && systemd_running() {
            scoped(&ctx.settings.build_limits, cmd, args)
        } else {
            (cmd.to_string(), args)
        };
    let spec = Spec {
        program,
        args,
        cwd: o.cwd,
        env: ctx
            .settings
            .env
            .iter()
            .cloned()
            .chain(o.env)
            .chain(
                ctx.settings
                    .job_tag
                    .iter()
                    .map(|t| (JOB_TAG_VAR.to_string(), t.clone())),
            )
            .collect(),
        timeout,
        grace: ctx.settings.kill_grace,
        capture_limit: 256 * 1024,
        low_priority,
        keep_detached: o.keep_detached,
    };
    let pfx = prefix();
    if o.quiet {
        tracing::debug!("{pfx}$ {line}");
    } else {
        tracing::info!("{pfx}$ {line}");
    }
    let mut tail: VecDeque<String> = VecDeque::with_capacity(30);
    let mut on_line = |stream: Stream, text: &str| {
        if !o.quiet {
            match stream {
                Stream::Stdout => tracing::info!(target: "t8k::out", "{pfx}{text}"),
                Stream::Stderr => tracing::info!(target: "t8k::err", "{pfx}{text}"),
            }
        }
        if tail.len() == 30 {
            tail.pop_front();
        }
        tail.push_back(text.to_string());
    };
    let out = supervise::run(&spec, &ctx.current_cancel(), &mut on_line).map_err(|e| match e {
        supervise::SpawnError::NotFound(p) => {
            format!("run(): command not found: {p} (is it installed and on the engine's PATH?)")
        }
        other => format!("run(): {other}"),
    })?;
    let open_steps = BRANCH.with(|b| b.borrow().steps.clone());
    {
        let mut steps = ctx.steps.lock().unwrap();
        for i in open_steps.iter().copied() {
            if let Some(s) = steps.get_mut(i) {
                s.user_cpu_ms += out.user_cpu.as_millis() as u64;
                s.sys_cpu_ms += out.sys_cpu.as_millis() as u64;
                s.max_rss_kib = s.max_rss_kib.max(out.max_rss_kib);
            }
        }
    }
    if out.leftovers_killed > 0 {
        tracing::warn!(
            "{pfx}`{line}` left {} process(es) running after it exited; they were killed",
            out.leftovers_killed
        );
    }
    let mut result = Map::new();
    result.insert(
        "code".into(),
        out.code
            .map_or(Dynamic::UNIT, |c| Dynamic::from_int(c.into())),
    );
    result.insert(
        "signal".into(),
        out.signal
            .map_or(Dynamic::UNIT, |s| Dynamic::from_int(s.into())),
    );
    result.insert("stdout".into(), out.stdout.clone().into());
    result.insert("stderr".into(), out.stderr.clone().into());
    result.insert(
        "duration".into(),
        Dynamic::from_float(out.wall.as_secs_f64()),
    );
    result.insert(
        "timed_out".into(),
        Dynamic::from_bool(out.ended == Ended::TimedOut),
    );
    let problem = match &out.ended {
        Ended::Cancelled(reason) => return terminated(reason.clone()),
        Ended::TimedOut if by_deadline => {
            return terminated(format!(
                "job exceeded its time limit of {}s while running `{line}`",
                ctx.job_timeout.as_secs()
            ));
        }
        Ended::TimedOut => format!(
            "`{line}` timed out after {}s; its process group was killed",
            timeout.as_secs_f64().round()
        ),
        Ended::Exited if out.code == Some(0) => return Ok(result),
        Ended::Exited => match (out.code, out.signal) {
            (Some(code), _) => format!("`{line}` exited with code {code}"),
            (None, Some(sig)) => format!("`{line}` was killed by signal {sig}"),
            (None, None) => format!("`{line}` ended abnormally"),
        },
    };
    if o.allow_fail {
        return Ok(result);
    }
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
    let step = BRANCH.with(|b| b.borrow().steps.last().copied());
    ctx.note_failure(Failure {
        step,
        message: message.lines().next().unwrap_or("").to_string(),
        tail: tail.into(),
    });
    Err(message.into())
}

/// Whether systemd is the service manager here (what `sd_booted()` checks).
fn systemd_running() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

/// Wraps a command in a transient systemd scope with resource limits. `systemd-run --scope` runs the
/// command in its own process, so the process group, the kill on timeout and the rusage stay ours.
fn scoped(limits: &[String], cmd: &str, args: Vec<String>) -> (String, Vec<String>) {
    let mut wrapped = vec![
        "--scope".to_string(),
        "--quiet".to_string(),
        "--collect".to_string(),
    ];
    for p in limits {
        wrapped.push("-p".to_string());
        wrapped.push(p.clone());
    }
    wrapped.push("--".to_string());
    wrapped.push(cmd.to_string());
    wrapped.extend(args);
    ("systemd-run".to_string(), wrapped)
}

fn valid_name(name: &str, extra: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c) || extra.contains(c))
}

fn quiet() -> RunOptions {
    RunOptions {
        cwd: None,
        env: Vec::new(),
        timeout: None,
        quiet: true,
        allow_fail: true,
        // Service checks and git queries are quick and should not wait behind a build.
        low_priority: Some(false),
        keep_detached: false,
    }
}

fn loud() -> RunOptions {
    RunOptions {
        quiet: false,
        allow_fail: false,
        ..quiet()
    }
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

fn restart_systemd(ctx: &JobCtx, unit: &str) -> Res<Map> {
    ctx.refuse_in_check("restart_systemd")?;
    if !valid_name(unit, "@:") {
        return Err(format!(
            "restart_systemd(): `{}` is not a valid unit name",
            unit.escape_debug()
        )
        .into());
    }
    if !tractstack_unit(unit) {
        return Err(format!(
            "restart_systemd(): `{unit}` is not a TractStack unit: only tractstack-go and tractstack-go@SITE may be restarted (see SECURITY.md); use job.unit"
        )
        .into());
    }
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
    // The unit's processes are the service manager's to keep: under the tests' fake systemctl they
    // are our descendants, detached into a session of their own.
    let keep = RunOptions {
        keep_detached: true,
        ..loud()
    };
    systemctl(&["restart", unit], keep, s.sudo_systemctl).map_err(|e| {
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
    let state = systemctl(&["is-active", unit], quiet(), false)?;
    let said = state
        .get("stdout")
        .map(|v| v.to_string())
        .unwrap_or_default()
        .trim()
        .to_string();
    if said != "active" {
        return Err(format!(
            "{unit} is not active after restart (systemctl is-active says `{said}`); see `journalctl -u {unit} -n 50`"
        )
        .into());
    }
    let mut out = Map::new();
    out.insert("unit".into(), unit.into());
    out.insert("active".into(), true.into());
    Ok(out)
}

fn pm2_status(ctx: &JobCtx, name: &str) -> Res<Option<Map>> {
    let listed = run_program(
        ctx,
        &ctx.settings.pm2,
        vec!["jlist".into()],
        RunOptions {
            allow_fail: false,
            // Any pm2 command starts pm2's daemon when none runs; it must outlive the command.
            keep_detached: true,
            ..quiet()
        },
    )?;
    let text = listed
        .get("stdout")
        .map(|v| v.to_string())
        .unwrap_or_default();
    // pm2 may print warnings before the JSON array.
    let json = text.find('[').map_or("[]", |i| &text[i..]);
    let list: Vec<serde_json::Value> = serde_json::from_str(json.trim())
        .map_err(|e| format!("pm2(): cannot read `pm2 jlist` output as JSON ({e})"))?;
    Ok(list.iter().find(|p| p["name"] == name).map(|p| {
        let mut m = Map::new();
        m.insert("name".into(), name.into());
        m.insert(
            "status".into(),
            p["pm2_env"]["status"].as_str().unwrap_or("unknown").into(),
        );
        m.insert(
            "pid".into(),
            Dynamic::from_int(p["pid"].as_i64().unwrap_or(0)),
        );
        m.insert(
            "restarts".into(),
            Dynamic::from_int(p["pm2_env"]["restart_time"].as_i64().unwrap_or(0)),
        );
        m.insert(
            "err_log".into(),
            p["pm2_env"]["pm_err_log_path"]
                .as_str()
                .unwrap_or("")
                .into(),
        );
        m.insert(
            "out_log".into(),
            p["pm2_env"]["pm_out_log_path"]
                .as_str()
                .unwrap_or("")
                .into(),
        );
        // `fork_mode` or `cluster_mode`: in fork mode a reload stops the process before starting the new one.
        let mode = p["pm2_env"]["exec_mode"].as_str().unwrap_or("fork_mode");
        m.insert("mode".into(), mode.trim_end_matches("_mode").into());
        m.insert(
            "instances".into(),
            Dynamic::from_int(p["pm2_env"]["instances"].as_i64().unwrap_or(1)),
        );
        // The port the app was started with (its environment's PORT), () when it has none.
        let env = &p["pm2_env"];
        let port = [&env["PORT"], &env["env"]["PORT"]]
            .into_iter()
            .find_map(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .filter(|p| (1..=65535).contains(p))
            });
        m.insert(
            "port".into(),
            port.map_or(Dynamic::UNIT, |p| Dynamic::from_int(p as i64)),
        );
        m
    }))
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
    if !valid_name(name, "@") {
        return Err(format!(
            "pm2(): `{}` is not a valid process name",
            name.escape_debug()
        )
        .into());
    }
    if !tractstack_pm2_name(name) {
        return Err(format!(
            "pm2(): `{name}` is not a TractStack process: only astro-main and astro-SITE may be managed (see SECURITY.md); use job.pm2_name"
        )
        .into());
    }
    if want.is_some() {
        run_program(
            ctx,
            &ctx.settings.pm2,
            vec![action.into(), name.into()],
            RunOptions {
                keep_detached: true,
                ..loud()
            },
        )?;
    }
    // pm2 may report `launching` for a moment after a reload; give it a few seconds to settle.
    let settle = Instant::now() + Duration::from_secs(10);
    loop {
        let status = pm2_status(ctx, name)?;
        let seen = status
            .as_ref()
            .and_then(|m| m.get("status"))
            .map(|s| s.to_string());
        match (want, status) {
            (None, Some(m)) => return Ok(m),
            (None, None) => {
                return Err(format!("pm2(): no process named `{name}` in `pm2 jlist`").into());
            }
            (Some(w), Some(m)) if seen.as_deref() == Some(w) => return Ok(m),
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

fn interruptible_sleep(ctx: &JobCtx, d: Duration) -> Res<()> {
    let end = Instant::now() + d;
    loop {
        if let Some(reason) = ctx.stop_reason() {
            return terminated(reason);
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

fn http_check(ctx: &JobCtx, url: &str, opts: &Map) -> Res<Map> {
    ctx.refuse_in_check("http_check")?;
    let o = Opts::new(
        "http_check",
        opts,
        &[
            "expect",
            "timeout",
            "interval",
            "allow_fail",
            "headers",
            "redirect_ok",
            "redirect_bad",
        ],
    )?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("http_check(): `{url}` is not an http:// or https:// URL").into());
    }
    let expect = match opts.get("expect") {
        None => http::Expect::Success,
        Some(v) if v.is_int() => http::Expect::Any(vec![status_code(v.as_int().unwrap_or(0))?]),
        Some(v) if v.is_array() => {
            let codes = v.clone().into_array().unwrap_or_default();
            http::Expect::Any(
                codes
                    .iter()
                    .map(|c| status_code(c.as_int().unwrap_or(0)))
                    .collect::<Res<_>>()?,
            )
        }
        Some(v) => return o.wrong("expect", "a status code or an array of them", v),
    };
    let mut probe = http::Probe::new(expect);
    probe.headers = header_pairs(&o, opts)?;
    probe.redirect_ok = o.bool("redirect_ok")?;
    probe.redirect_bad = match opts.get("redirect_bad") {
        None => Vec::new(),
        Some(v) if v.is_array() => {
            strings("http_check", v.clone().into_array().unwrap_or_default())?
        }
        Some(v) => return o.wrong("redirect_bad", "an array of paths such as [\"/maint\"]", v),
    };
    let asked = o.secs("timeout")?.unwrap_or(ctx.settings.http_timeout);
    // The job's deadline stops the checks too: nothing else interrupts them.
    let timeout = time_left(ctx).map_or(asked, |left| left.min(asked));
    let interval = o.secs("interval")?.unwrap_or(Duration::from_millis(200));
    let c = http::check(url, &probe, timeout, interval, &ctx.current_cancel());
    if c.cancelled {
        return terminated(ctx.stop_reason().unwrap_or_else(|| "job cancelled".into()));
    }
    if !c.ok && timeout < asked {
        return terminated(format!(
            "job exceeded its time limit of {}s while checking {url}",
            ctx.job_timeout.as_secs()
        ));
    }
    let mut out = Map::new();
    out.insert("ok".into(), c.ok.into());
    out.insert("status".into(), Dynamic::from_int(c.status.into()));
    out.insert("body".into(), c.body.clone().into());
    out.insert(
        "location".into(),
        c.location.clone().map_or(Dynamic::UNIT, Dynamic::from),
    );
    out.insert("attempts".into(), Dynamic::from_int(c.attempts.into()));
    out.insert(
        "elapsed".into(),
        Dynamic::from_float(c.elapsed.as_secs_f64()),
    );
    if c.ok || o.bool("allow_fail")? {
        tracing::info!(
            "{}http_check {url}: status {}{} after {} attempt(s)",
            prefix(),
            c.status,
            c.location
                .as_deref()
                .map(|l| format!(" (redirect to {l})"))
                .unwrap_or_default(),
            c.attempts
        );
        return Ok(out);
    }
    let mut want = match &probe.expect {
        http::Expect::Success => "2xx status".to_string(),
        http::Expect::Any(list) => format!("status {list:?}"),
    };
    if probe.redirect_ok {
        want.push_str(" or redirect");
        if !probe.redirect_bad.is_empty() {
            want.push_str(&format!(" (except to {})", probe.redirect_bad.join(", ")));
        }
    }
    let message = format!(
        "http_check {url}: no {want} within {}s after {} attempt(s) (last: {})",
        timeout.as_secs_f64(),
        c.attempts,
        c.last_problem.unwrap_or_else(|| "nothing".into())
    );
    let step = BRANCH.with(|b| b.borrow().steps.last().copied());
    ctx.note_failure(Failure {
        step,
        message: message.clone(),
        tail: Vec::new(),
    });
    Err(message.into())
}

/// The `headers` option: a map of header names to values.
fn header_pairs(o: &Opts, opts: &Map) -> Res<Vec<(String, String)>> {
    let Some(headers) = opts.get("headers") else {
        return Ok(Vec::new());
    };
    let Some(map) = headers.read_lock::<Map>() else {
        return o.wrong("headers", "a map of strings", headers);
    };
    Ok(map
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// What is left of the job's time, `None` when it has no deadline (checking scripts).
fn time_left(ctx: &JobCtx) -> Option<Duration> {
    ctx.deadline
        .map(|d| d.saturating_duration_since(Instant::now()))
}

fn status_code(n: i64) -> Res<u16> {
    if (100..=599).contains(&n) {
        Ok(n as u16)
    } else {
        Err(format!("http_check(): `{n}` is not an HTTP status code").into())
    }
}

/// Pops the step index when a step ends, however it ends.
struct StepGuard;

impl Drop for StepGuard {
    fn drop(&mut self) {
        BRANCH.with(|b| {
            b.borrow_mut().steps.pop();
        });
    }
}

fn step(ctx: &JobCtx, nctx: &NativeCallContext, name: &str, f: &FnPtr) -> Res<Dynamic> {
    if name.trim().is_empty() || name.contains('\n') {
        return Err("step(): the step name must be a non-empty single line".into());
    }
    let branch = BRANCH.with(|b| b.borrow().label.clone());
    let idx = {
        let mut steps = ctx.steps.lock().unwrap();
        steps.push(StepRecord {
            name: name.to_string(),
            branch,
            start_ms: ctx.started.elapsed().as_millis() as u64,
            wall_ms: 0,
            user_cpu_ms: 0,
            sys_cpu_ms: 0,
            max_rss_kib: 0,
            ok: None,
            cancelled: false,
        });
        steps.len() - 1
    };
    if let Some(hook) = ctx.step_hook.lock().unwrap().as_ref() {
        hook(StepEvent::Started(
            name,
            &BRANCH.with(|b| b.borrow().label.clone()),
        ));
    }
    let empty = tracing::field::Empty;
    let span = tracing::info_span!("step", name = %name, outcome = empty, figures = empty);
    let _entered = span.enter();
    let pfx = prefix();
    tracing::info!("{pfx}step `{name}` started");
    let started = Instant::now();
    let result = {
        BRANCH.with(|b| b.borrow_mut().steps.push(idx));
        let _guard = StepGuard;
        f.call_within_context::<Dynamic>(nctx, ())
    };
    let record = {
        let mut steps = ctx.steps.lock().unwrap();
        let s = &mut steps[idx];
        s.wall_ms = started.elapsed().as_millis() as u64;
        s.ok = Some(result.is_ok());
        s.cancelled = result.as_ref().is_err_and(|e| is_terminated(e));
        s.clone()
    };
    if let Some(hook) = ctx.step_hook.lock().unwrap().as_ref() {
        hook(StepEvent::Ended(&record));
    }
    let figures = record.figures();
    match &result {
        Ok(_) => {
            tracing::info!("{pfx}step `{name}` done ({figures})");
            // A failure caught inside this step no longer explains anything.
            let mut slot = ctx.failure.lock().unwrap();
            if slot
                .as_ref()
                .is_some_and(|f| f.step.is_some_and(|s| s >= idx))
            {
                *slot = None;
            }
        }
        Err(e) => {
            // A step stopped because a sibling failed (or the engine is stopping) did not fail itself.
            if record.cancelled {
                tracing::warn!("{pfx}step `{name}` cancelled ({figures})");
            } else {
                // The message itself is logged once, with its file and line, when the job fails.
                tracing::error!("{pfx}step `{name}` failed ({figures})");
                ctx.note_failure(Failure {
                    step: Some(idx),
                    message: e.to_string(),
                    tail: Vec::new(),
                });
            }
        }
    }
    // The same end as fields, for the progress display (recorded after the line, so it shows them once).
    let outcome = match &result {
        Ok(_) => "done",
        Err(_) if record.cancelled => "cancelled",
        Err(_) => "failed",
    };
    span.record("outcome", outcome);
    span.record("figures", figures.as_str());
    result.map_err(|e| keep_position(e, format!("step `{name}`"), nctx.call_position()))
}

/// Rhai moves the position of a system error (a limit hit, the job stopped) to each enclosing call site
/// in turn, so one raised in a command function ends with none at all. Wrapped in a frame where a host
/// function sees it, it keeps the line of that call.
fn keep_position(e: Box<EvalAltResult>, what: String, pos: Position) -> Box<EvalAltResult> {
    if e.is_system_exception() {
        Box::new(EvalAltResult::ErrorInFunctionCall(
            what,
            String::new(),
            e,
            pos,
        ))
    } else {
        e
    }
}

fn parallel(ctx: &JobCtx, nctx: &NativeCallContext, branches: Map) -> Res<Map> {
    ctx.refuse_in_check("parallel")?;
    let mut fns = Vec::new();
    for (key, value) in branches {
        let Some(fp) = value.clone().try_cast::<FnPtr>() else {
            return Err(format!(
                "parallel(): branch `{key}` must be a function like `|| ...`, got {}",
                value.type_name()
            )
            .into());
        };
        fns.push((key.to_string(), fp));
    }
    use std::sync::atomic::Ordering::SeqCst;
    let running = ctx.branches.fetch_add(fns.len(), SeqCst) + fns.len();
    // Released however this call ends.
    struct Release<'a>(&'a std::sync::atomic::AtomicUsize, usize);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(self.1, SeqCst);
        }
    }
    let _release = Release(&ctx.branches, fns.len());
    if running > MAX_BRANCHES {
        return Err(format!(
            "parallel(): {} more branch(es) would make {running} run at once, over the limit of {MAX_BRANCHES} for a job; run fewer at a time (for example in groups, one parallel() after another)",
            fns.len()
        )
        .into());
    }
    let parent = BRANCH.with(|b| b.borrow().clone());
    let group = parent
        .cancel
        .clone()
        .unwrap_or_else(|| ctx.cancel.clone())
        .child();
    let first: Mutex<Option<(String, Box<EvalAltResult>)>> = Mutex::new(None);
    let span = tracing::Span::current();
    let results: Vec<(String, Option<Dynamic>)> = std::thread::scope(|s| {
        let handles: Vec<_> = fns
            .iter()
            .map(|(key, fp)| {
                let (parent, group, first, span) = (&parent, &group, &first, &span);
                let spawned = std::thread::Builder::new()
                    .name(format!("branch {key}"))
                    .stack_size(super::SCRIPT_STACK)
                    .spawn_scoped(s, move || {
                        let _entered = span.enter();
                        let label = if parent.label.is_empty() {
                            key.clone()
                        } else {
                            format!("{}/{key}", parent.label)
                        };
                        BRANCH.with(|b| {
                            *b.borrow_mut() = Branch {
                                label,
                                cancel: Some(group.clone()),
                                steps: parent.steps.clone(),
                            }
                        });
                        match fp.call_within_context::<Dynamic>(nctx, ()) {
                            Ok(v) => (key.clone(), Some(v)),
                            Err(e) => {
                                let mut slot = first.lock().unwrap();
                                if slot.is_none() {
                                    *slot = Some((key.clone(), e));
                                    group.cancel(&format!("parallel branch `{key}` failed"));
                                }
                                (key.clone(), None)
                            }
                        }
                    });
                (key, spawned)
            })
            .collect();
        handles
            .into_iter()
            .map(|(key, spawned)| match spawned {
                Ok(h) => h.join().expect("parallel branch thread panicked"),
                Err(e) => {
                    let mut slot = first.lock().unwrap();
                    if slot.is_none() {
                        let err =
                            format!("parallel(): cannot start a thread for branch `{key}`: {e}");
                        *slot = Some((key.clone(), err.into()));
                        group.cancel(&format!("parallel branch `{key}` failed"));
                    }
                    (key.clone(), None)
                }
            })
            .collect()
    });
    if let Some((key, err)) = first.into_inner().unwrap() {
        return Err(Box::new(EvalAltResult::ErrorInFunctionCall(
            format!("parallel branch `{key}`"),
            String::new(),
            err,
            nctx.call_position(),
        )));
    }
    Ok(results
        .into_iter()
        .map(|(k, v)| (k.into(), v.unwrap_or(Dynamic::UNIT)))
        .collect())
}

/// Registers every host function on `engine`, bound to one job's context.
pub fn register(engine: &mut Engine, ctx: &Arc<JobCtx>) {
    let c = ctx.clone();
    engine.register_fn("run", move |cmd: &str, args: Array| -> Res<Map> {
        c.refuse_in_check("run")?;
        run_program(
            &c,
            cmd,
            strings("run", args)?,
            RunOptions::parse(&Map::new())?,
        )
    });
    let c = ctx.clone();
    engine.register_fn(
        "run",
        move |cmd: &str, args: Array, opts: Map| -> Res<Map> {
            c.refuse_in_check("run")?;
            run_program(&c, cmd, strings("run", args)?, RunOptions::parse(&opts)?)
        },
    );
    let c = ctx.clone();
    engine.register_fn("restart_systemd", move |unit: &str| {
        restart_systemd(&c, unit)
    });
    let c = ctx.clone();
    engine.register_fn("pm2", move |action: &str, name: &str| pm2(&c, action, name));
    let c = ctx.clone();
    engine.register_fn("http_check", move |url: &str| {
        http_check(&c, url, &Map::new())
    });
    let c = ctx.clone();
    engine.register_fn("http_check", move |url: &str, opts: Map| {
        http_check(&c, url, &opts)
    });
    engine.register_fn(
        "log",
        |msg: &str| tracing::info!(target: "t8k::script", "{}{msg}", prefix()),
    );
    engine.register_fn(
        "warn",
        |msg: &str| tracing::warn!(target: "t8k::script", "{}{msg}", prefix()),
    );
    engine.register_fn("env", |name: &str| {
        std::env::var(name).map_or(Dynamic::UNIT, Dynamic::from)
    });
    engine.register_fn("file_exists", |path: &str| {
        std::path::Path::new(path).is_file()
    });
    engine.register_fn("dir_exists", |path: &str| {
        std::path::Path::new(path).is_dir()
    });
    let c = ctx.clone();
    engine.register_fn("git_is_clean", move |dir: &str| -> Res<bool> {
        let out = git_query(
            &c,
            "git_is_clean",
            dir,
            &["status", "--porcelain", "--untracked-files=no"],
        )?;
        Ok(out.trim().is_empty())
    });
    engine.register_fn("port_open", |port: i64| -> Res<bool> {
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port_open(): `{port}` is not a port"))?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
    });
    let c = ctx.clone();
    engine.register_fn("sleep", move |secs: i64| sleep_secs(&c, secs as f64));
    let c = ctx.clone();
    engine.register_fn("sleep", move |secs: f64| sleep_secs(&c, secs));
    let c = ctx.clone();
    engine.register_fn("tailwind_whitelist", move |dist: &str, out: Dynamic| {
        tailwind_whitelist(&c, dist, out, &Map::new())
    });
    let c = ctx.clone();
    engine.register_fn(
        "tailwind_whitelist",
        move |dist: &str, out: Dynamic, opts: Map| tailwind_whitelist(&c, dist, out, &opts),
    );
    engine.register_fn("list_dirs", |dir: &str| -> Res<Array> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("list_dirs(): cannot list {dir}: {e}"))?;
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names.into_iter().map(Dynamic::from).collect())
    });
    let c = ctx.clone();
    engine.register_fn("git_head", move |dir: &str| -> Res<String> {
        let out = git_query(&c, "git_head", dir, &["rev-parse", "HEAD"])?;
        Ok(out.trim().to_string())
    });
    let c = ctx.clone();
    engine.register_fn("git_changes", move |dir: &str| -> Res<Array> {
        let out = git_query(
            &c,
            "git_changes",
            dir,
            &["status", "--porcelain", "--untracked-files=no"],
        )?;
        Ok(out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Dynamic::from(l.to_string()))
            .collect())
    });
    let c = ctx.clone();
    engine.register_fn("git_local_changes", move |dir: &str| {
        git_local_changes(&c, dir, &Map::new())
    });
    let c = ctx.clone();
    engine.register_fn("git_local_changes", move |dir: &str, opts: Map| {
        git_local_changes(&c, dir, &opts)
    });
    engine.register_fn("dotenv", |path: &str| -> Map {
        crate::layout::read_dotenv(std::path::Path::new(path))
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    });
    engine.register_fn("file_digest", |path: &str| -> Res<Dynamic> {
        use sha2::Digest;
        let Some(mut f) = open_regular("file_digest", path)? else {
            return Ok(Dynamic::UNIT);
        };
        // Streamed, so that a large file is not held in memory.
        let mut hasher = sha2::Sha256::new();
        std::io::copy(&mut f, &mut hasher)
            .map_err(|e| format!("file_digest(): cannot read {path}: {e}"))?;
        Ok(Dynamic::from(format!("{:x}", hasher.finalize())))
    });
    let c = ctx.clone();
    engine.register_fn("http_post", move |url: &str, body: Dynamic| {
        http_post(&c, url, body, &Map::new())
    });
    let c = ctx.clone();
    engine.register_fn("http_post", move |url: &str, body: Dynamic, opts: Map| {
        http_post(&c, url, body, &opts)
    });
    engine.register_fn("unix_time", || -> i64 {
        jiff::Timestamp::now().as_second()
    });
    engine.register_fn("file_size", |path: &str| -> i64 {
        std::fs::metadata(path).map_or(0, |m| m.len() as i64)
    });
    engine.register_fn("read_from", |path: &str, offset: i64| -> Res<String> {
        read_from(path, offset)
    });
    let c = ctx.clone();
    engine.register_fn("journal", move |unit: &str, since: i64| {
        journal(&c, unit, since)
    });
    let c = ctx.clone();
    engine.register_fn("switch_in", move |new: &str, live: &str| {
        switch_in(&c, new, live, &Map::new())
    });
    let c = ctx.clone();
    engine.register_fn("switch_in", move |new: &str, live: &str, opts: Map| {
        switch_in(&c, new, live, &opts)
    });
    let c = ctx.clone();
    engine.register_fn("roll_back", move |live: &str| -> Res<String> {
        c.refuse_in_check("roll_back")?;
        crate::release::roll_back(std::path::Path::new(live), c.pending_releases().as_deref())
            .map_err(|e| format!("roll_back(): {e:#}"))?;
        tracing::warn!("{}rolled back {live} to its previous release", prefix());
        Ok(live.to_string())
    });
    let c = ctx.clone();
    engine.register_fn("last_release", move |job: super::Job| -> Res<Dynamic> {
        let store = crate::release::Store::load(&c.settings.releases_dir, &job.install())
            .map_err(|e| format!("last_release(): {e:#}"))?;
        match store.live() {
            None => Ok(Dynamic::UNIT),
            Some(r) => rhai::serde::to_dynamic(r.to_json()),
        }
    });
    let c = ctx.clone();
    engine.register_fn("record_release", move |job: super::Job, facts: Map| {
        record_release(&c, &job, facts, &Map::new())
    });
    let c = ctx.clone();
    engine.register_fn(
        "record_release",
        move |job: super::Job, facts: Map, opts: Map| record_release(&c, &job, facts, &opts),
    );
    let c = ctx.clone();
    engine.register_fn("put_back", move |job: super::Job, release: Map| {
        put_back(&c, &job, &release)
    });
    let c = ctx.clone();
    engine.register_fn("bad_release", move |job: super::Job, facts: Map| {
        bad_release(&c, &job, facts)
    });
    let c = ctx.clone();
    engine.register_fn(
        "step",
        move |nctx: NativeCallContext, name: &str, f: FnPtr| step(&c, &nctx, name, &f),
    );
    let c = ctx.clone();
    engine.register_fn("parallel", move |nctx: NativeCallContext, branches: Map| {
        parallel(&c, &nctx, branches)
    });
}

/// `out` is one path, or an array of paths that all get the same safelist from one scan.
fn tailwind_whitelist(ctx: &JobCtx, dist: &str, out: Dynamic, opts: &Map) -> Res<Map> {
    ctx.refuse_in_check("tailwind_whitelist")?;
    Opts::new("tailwind_whitelist", opts, &["extra"])?;
    let extra = match opts.get("extra") {
        None => Vec::new(),
        Some(v) if v.is_array() => strings(
            "tailwind_whitelist",
            v.clone().into_array().unwrap_or_default(),
        )?
        .into_iter()
        .map(PathBuf::from)
        .collect(),
        Some(v) => {
            return Err(format!(
                "tailwind_whitelist(): option `extra` must be an array of directories, got {}",
                v.type_name()
            )
            .into());
        }
    };
    let outs: Vec<PathBuf> = if out.is_array() {
        strings("tailwind_whitelist", out.into_array().unwrap_or_default())?
            .into_iter()
            .map(PathBuf::from)
            .collect()
    } else if out.is_string() {
        vec![PathBuf::from(out.to_string())]
    } else {
        return Err(format!(
            "tailwind_whitelist(): the output must be a path or an array of paths, got {}",
            out.type_name()
        )
        .into());
    };
    let (stats, written) =
        crate::whitelist::extract_to_files(std::path::Path::new(dist), &outs, &extra)
            .map_err(|e| format!("tailwind_whitelist(): {e:#}"))?;
    for (path, w) in outs.iter().zip(&written) {
        tracing::info!(
            "{}whitelist {}: {} classes from {} files in {} ms{}",
            prefix(),
            path.display(),
            stats.classes,
            stats.files,
            stats.elapsed_ms,
            if *w { "" } else { " (unchanged)" }
        );
    }
    let mut m = Map::new();
    m.insert("classes".into(), Dynamic::from_int(stats.classes as i64));
    m.insert("files".into(), Dynamic::from_int(stats.files as i64));
    m.insert("skipped".into(), Dynamic::from_int(stats.skipped as i64));
    m.insert(
        "elapsed".into(),
        Dynamic::from_float(stats.elapsed_ms as f64 / 1000.0),
    );
    m.insert("written".into(), stats.written.into());
    Ok(m)
}

/// POSTs a string (as text) or a map (as JSON) to a webhook; throws on a transport error or a non-2xx status.
fn http_post(ctx: &JobCtx, url: &str, body: Dynamic, opts: &Map) -> Res<Map> {
    ctx.refuse_in_check("http_post")?;
    let o = Opts::new("http_post", opts, &["headers", "timeout"])?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("http_post(): `{url}` is not an http:// or https:// URL").into());
    }
    let (text, content_type) = if body.is_string() {
        (body.to_string(), "text/plain; charset=utf-8")
    } else {
        let value: serde_json::Value = rhai::serde::from_dynamic(&body)?;
        (value.to_string(), "application/json")
    };
    let asked = o.secs("timeout")?.unwrap_or(ctx.settings.http_timeout);
    let timeout = time_left(ctx)
        .map_or(asked, |left| left.min(asked))
        .max(Duration::from_millis(1));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.post(url).header("content-type", content_type);
    if let Some(headers) = opts.get("headers") {
        let Some(map) = headers.read_lock::<Map>() else {
            return o.wrong("headers", "a map of strings", headers);
        };
        for (k, v) in map.iter() {
            request = request.header(k.as_str(), v.to_string());
        }
    }
    // Webhook URLs carry their secret in the path (Slack, Discord, Teams): messages name the origin only.
    let shown = url_origin(url);
    let status = request
        .send(text)
        .map_err(|e| format!("http_post {shown}: {}", e.to_string().replace(url, &shown)))?
        .status()
        .as_u16();
    if !(200..300).contains(&status) {
        return Err(format!("http_post {shown}: the server answered status {status}").into());
    }
    let mut m = Map::new();
    m.insert("status".into(), Dynamic::from_int(status.into()));
    Ok(m)
}

/// `scheme://host:port/…` of a URL: no userinfo, and the path and query elided when there are any.
fn url_origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(url)".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let more = if end < rest.len() && &rest[end..] != "/" {
        "/…"
    } else {
        ""
    };
    format!("{scheme}://{host}{more}")
}

/// Opens a regular file for reading, `None` when it does not exist. Anything else is refused before
/// it is read: a FIFO would block the job forever and a device such as /dev/zero never ends.
fn open_regular(f: &str, path: &str) -> Res<Option<std::fs::File>> {
    crate::fs::open_named(path).map_err(|e| format!("{f}(): {e}").into())
}

/// What a log file gained after `offset` (at most the last 64 KiB of it), for checks after a restart.
fn read_from(path: &str, offset: i64) -> Res<String> {
    use std::io::{Read, Seek, SeekFrom};
    const CAP: u64 = 64 * 1024;
    let Some(mut f) = open_regular("read_from", path)? else {
        return Ok(String::new());
    };
    let len = f.metadata().map_or(0, |m| m.len());
    // A log that shrank was rotated: everything in it is new.
    let from = if (offset as u64) > len {
        0
    } else {
        offset.max(0) as u64
    };
    let from = from.max(len.saturating_sub(CAP));
    f.seek(SeekFrom::Start(from))
        .map_err(|e| format!("read_from(): {path}: {e}"))?;
    let mut bytes = Vec::new();
    f.take(CAP)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("read_from(): {path}: {e}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A unit's journal since a Unix time, or () where there is no journal to read (no journald).
fn journal(ctx: &JobCtx, unit: &str, since: i64) -> Res<Dynamic> {
    ctx.refuse_in_check("journal")?;
    if !valid_name(unit, "@:") {
        return Err(format!("journal(): `{unit}` is not a valid unit name").into());
    }
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
    match run_program(ctx, "journalctl", args, quiet()) {
        Ok(out) if out.get("code").and_then(|c| c.as_int().ok()) == Some(0) => {
            Ok(out.get("stdout").cloned().unwrap_or_default())
        }
        Ok(_) | Err(_) => {
            tracing::debug!("journal(): no journal to read for {unit}");
            Ok(Dynamic::UNIT)
        }
    }
}

fn git_query(ctx: &JobCtx, f: &str, dir: &str, args: &[&str]) -> Res<String> {
    ctx.refuse_in_check(f)?;
    if !std::path::Path::new(dir).is_dir() {
        return Err(format!("{f}(): {dir} does not exist").into());
    }
    let args = args.iter().map(|a| a.to_string()).collect();
    let out = run_program(
        ctx,
        "git",
        args,
        RunOptions {
            cwd: Some(dir.into()),
            allow_fail: false,
            ..quiet()
        },
    )?;
    Ok(out.get("stdout").map(|s| s.to_string()).unwrap_or_default())
}

/// What differs in a work tree from its HEAD commit: changed tracked files and untracked files that
/// `.gitignore` does not cover, minus the top-level names in `exclude` (a name also covers `NAME.*`, so
/// `dist` covers `dist.new` and `dist.prev`). Returns `#{digest, files}`: a SHA-256 over each path and the
/// SHA-256 of its content (or its deletion), the same for the same edits, and the paths.
fn git_local_changes(ctx: &JobCtx, dir: &str, opts: &Map) -> Res<Map> {
    use sha2::Digest;
    let o = Opts::new("git_local_changes", opts, &["exclude"])?;
    let exclude = match opts.get("exclude") {
        None => Vec::new(),
        Some(v) if v.is_array() => strings(
            "git_local_changes",
            v.clone().into_array().unwrap_or_default(),
        )?,
        Some(v) => return o.wrong("exclude", "an array of top-level names", v),
    };
    let excluded = |path: &str| {
        let first = path.split('/').next().unwrap_or(path);
        exclude.iter().any(|x| {
            first == x
                || first
                    .strip_prefix(x.as_str())
                    .is_some_and(|r| r.starts_with('.'))
        })
    };
    let list = |args: &[&str]| -> Res<Vec<String>> {
        let out = git_query(ctx, "git_local_changes", dir, args)?;
        // Output is captured by lines: the NUL-separated list comes back with a newline at its end.
        Ok(out
            .strip_suffix('\n')
            .unwrap_or(&out)
            .split('\0')
            .filter(|p| !p.is_empty() && !excluded(p))
            .map(str::to_string)
            .collect())
    };
    let mut files = list(&["diff", "HEAD", "--name-only", "--no-renames", "-z"])?;
    files.extend(list(&["ls-files", "--others", "--exclude-standard", "-z"])?);
    files.sort();
    files.dedup();
    let mut digest = sha2::Sha256::new();
    for rel in &files {
        let path = std::path::Path::new(dir).join(rel);
        let content = match std::fs::symlink_metadata(&path) {
            Err(_) => "deleted".to_string(),
            Ok(m) if m.file_type().is_symlink() => std::fs::read_link(&path)
                .map(|t| format!("symlink {}", t.display()))
                .unwrap_or_default(),
            Ok(m) if m.is_file() => {
                let mut h = sha2::Sha256::new();
                let mut f = std::fs::File::open(&path).map_err(|e| {
                    format!("git_local_changes(): cannot read {}: {e}", path.display())
                })?;
                std::io::copy(&mut f, &mut h).map_err(|e| {
                    format!("git_local_changes(): cannot read {}: {e}", path.display())
                })?;
                format!("{:x}", h.finalize())
            }
            Ok(_) => "other".to_string(),
        };
        digest.update(rel.as_bytes());
        digest.update([0]);
        digest.update(content.as_bytes());
        digest.update([0]);
    }
    let mut m = Map::new();
    m.insert("digest".into(), format!("{:x}", digest.finalize()).into());
    m.insert(
        "files".into(),
        Dynamic::from_array(files.into_iter().map(Dynamic::from).collect()),
    );
    Ok(m)
}

fn switch_in(ctx: &JobCtx, new: &str, live: &str, opts: &Map) -> Res<Map> {
    ctx.refuse_in_check("switch_in")?;
    let o = Opts::new("switch_in", opts, &["keep"])?;
    let keep = match opts.get("keep") {
        None => None,
        Some(v) => match v.as_int() {
            Ok(n) if n >= 1 => Some(n as usize),
            _ => return o.wrong("keep", "a whole number of at least 1", v),
        },
    };
    // Exchanging a path with itself would then rotate the live release away, leaving nothing live.
    if std::path::Path::new(new) == std::path::Path::new(live) {
        return Err(format!(
            "switch_in(): the new build and the live path are both {live}; build into a sibling such as {live}.new"
        )
        .into());
    }
    let previous = crate::release::switch_in_for_job(
        std::path::Path::new(new),
        std::path::Path::new(live),
        keep,
        ctx.settings.keep_releases,
        ctx.pending_releases().as_deref(),
        &ctx.releases,
    )
    .map_err(|e| format!("switch_in(): {e:#}"))?;
    tracing::info!("{}switched {new} into {live}", prefix());
    let mut m = Map::new();
    m.insert("live".into(), live.into());
    m.insert(
        "previous".into(),
        previous.map_or(Dynamic::UNIT, |p| Dynamic::from(p.display().to_string())),
    );
    Ok(m)
}

/// Records what a job released (or, with `#{failed: why}`, a release that failed its checks and was
/// rolled back), with the engine's facts (time, job, trigger, steps) added.
fn record_release(ctx: &JobCtx, job: &super::Job, facts: Map, opts: &Map) -> Res<Map> {
    ctx.refuse_in_check("record_release")?;
    let o = Opts::new("record_release", opts, &["failed"])?;
    let failed = o.string("failed")?;
    let mut value: serde_json::Value = rhai::serde::from_dynamic(&Dynamic::from_map(facts))?;
    // Facts may quote remote URLs; `status` shows the live record, so it is stored redacted.
    crate::redact::redact_json(&mut value);
    let serde_json::Value::Object(facts) = value else {
        unreachable!("a map converts to an object")
    };
    let recording = crate::release::Recording {
        install: job.install(),
        target: job.spec.target_name(),
        parts: crate::release::Parts::of(&job.target),
        job_id: job.id.clone(),
        trigger: job.trigger.clone(),
        duration_ms: ctx.started.elapsed().as_millis() as u64,
        steps: ctx.steps(),
        facts,
        failed,
        keep: ctx.settings.keep_releases,
    };
    let release =
        crate::release::record_release(&ctx.settings.releases_dir, recording, &ctx.releases)
            .map_err(|e| format!("record_release(): {e:#}"))?;
    tracing::info!(
        "{}recorded release {} of {} ({})",
        prefix(),
        release.id,
        job.install(),
        release.state.as_str()
    );
    match rhai::serde::to_dynamic(release.to_json())?.try_cast::<Map>() {
        Some(m) => Ok(m),
        None => Err("record_release(): the record is not a map".into()),
    }
}

/// Puts the files of a kept release (a map from `last_release` or the one `rollback` gets) back live.
fn put_back(ctx: &JobCtx, job: &super::Job, release: &Map) -> Res<Map> {
    ctx.refuse_in_check("put_back")?;
    let id = release
        .get("id")
        .and_then(|v| v.as_int().ok())
        .filter(|n| *n > 0)
        .ok_or("put_back(): the release has no `id`; pass a release map as `rollback` gets it or `last_release` returns it")?;
    let changed = crate::release::put_back_release(
        &ctx.settings.releases_dir,
        &job.install(),
        &crate::release::Parts::of(&job.target),
        id as u64,
        ctx.pending_releases().as_deref(),
        &ctx.releases,
    )
    .map_err(|e| format!("put_back(): {e:#}"))?;
    tracing::info!(
        "{}put release {id} of {} back (backend {}, frontend {})",
        prefix(),
        job.install(),
        if changed.backend {
            "switched"
        } else {
            "already live"
        },
        if changed.frontend {
            "switched"
        } else {
            "already live"
        }
    );
    let mut m = Map::new();
    m.insert("backend".into(), changed.backend.into());
    m.insert("frontend".into(), changed.frontend.into());
    Ok(m)
}

/// The newest rolled-back release of the job's install whose facts equal every one given; () when none.
fn bad_release(ctx: &JobCtx, job: &super::Job, facts: Map) -> Res<Dynamic> {
    let query: serde_json::Value = rhai::serde::from_dynamic(&Dynamic::from_map(facts))?;
    let serde_json::Value::Object(query) = query else {
        unreachable!("a map converts to an object")
    };
    let store = crate::release::Store::load(&ctx.settings.releases_dir, &job.install())
        .map_err(|e| format!("bad_release(): {e:#}"))?;
    match store.bad_for(&query) {
        None => Ok(Dynamic::UNIT),
        Some(bad) => rhai::serde::to_dynamic(bad),
    }
}

fn sleep_secs(ctx: &JobCtx, secs: f64) -> Res<()> {
    ctx.refuse_in_check("sleep")?;
    if !(0.0..=MAX_SECS).contains(&secs) {
        return Err(format!(
            "sleep(): `{}` is not a number of seconds up to {MAX_SECS}",
            number(secs)
        )
        .into());
    }
    interruptible_sleep(ctx, Duration::from_secs_f64(secs))
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
    fn http_post_messages_name_only_the_origin() {
        assert_eq!(
            url_origin("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            url_origin("http://u:p@127.0.0.1:8080/x?token=t"),
            "http://127.0.0.1:8080/…"
        );
        assert_eq!(
            url_origin("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(url_origin("https://h?k=v"), "https://h/…");
    }

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

    #[test]
    fn build_limits_wrap_the_command_in_a_systemd_scope() {
        let limits = ["MemoryMax=2G".to_string(), "CPUQuota=150%".to_string()];
        let (program, args) = scoped(
            &limits,
            "go",
            vec!["build".into(), "./cmd/tractstack-go".into()],
        );
        assert_eq!(program, "systemd-run");
        assert_eq!(
            args,
            [
                "--scope",
                "--quiet",
                "--collect",
                "-p",
                "MemoryMax=2G",
                "-p",
                "CPUQuota=150%",
                "--",
                "go",
                "build",
                "./cmd/tractstack-go"
            ]
        );
    }
}
