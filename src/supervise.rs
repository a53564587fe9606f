//! Runs child processes for build steps: owns spawning, output streaming, time limits and killing the whole process group; it must never let a process outlive its step nor block forever on a pipe.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

use crate::cancel::Cancel;

/// How often the main loop looks at the child, the clock and the cancel token.
const POLL: Duration = Duration::from_millis(25);
/// Longest wait for the pipes to close once the group is gone: a `setsid` escapee can hold them forever.
const DRAIN: Duration = Duration::from_secs(2);
/// Longest wait for the leader to be reaped after SIGKILL (it may be stuck in uninterruptible sleep).
const KILL_WAIT: Duration = Duration::from_secs(2);
/// Lines longer than this are delivered in pieces so one endless line cannot exhaust memory.
const MAX_LINE: usize = 64 * 1024;
/// The two tags a step's processes carry in their environment, so that those which leave the process group
/// can still be found. This one is unique to each run: those which leave the group (`setsid`, a group of
/// their own) are stopped when the run ends.
pub const RUN_TAG_VAR: &str = "T8K_ENGINE_RUN";
/// This one is a claimed trigger's [`job_tag`]: an engine started after one died stops what the dead one
/// left running for that trigger ([`kill_job`]).
pub const JOB_TAG_VAR: &str = "T8K_ENGINE_TRIGGER";
/// Rounds of SIGKILL for escapees that keep forking; each round kills every one found.
const KILL_ROUNDS: usize = 50;
/// Variables describing the engine's own service-manager plumbing, which children must not inherit.
const STRIPPED: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// Which pipe a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    pub grace: Duration,
    pub capture_limit: usize,
    /// Run at low CPU and I/O priority (nice 10, best-effort I/O class at its lowest level), so that a
    /// build does not starve the site it runs beside.
    pub low_priority: bool,
    /// Leave running the processes that detach into a session or group of their own: a service manager
    /// (`pm2`, the fake `systemctl` of the tests) starts its daemon that way. Otherwise they are killed too.
    pub keep_detached: bool,
}

impl Spec {
    /// A spec with no arguments, 30 min timeout, 5 s grace and 256 KiB of captured tail per stream.
    pub fn new(program: impl Into<String>) -> Self {
        Spec {
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            timeout: Duration::from_secs(30 * 60),
            grace: Duration::from_secs(5),
            capture_limit: 256 * 1024,
            low_priority: false,
            keep_detached: false,
        }
    }
}

/// How a run ended and what it cost.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub ended: Ended,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    pub wall: Duration,
    pub user_cpu: Duration,
    pub sys_cpu: Duration,
    pub max_rss_kib: u64,
    pub leftovers_killed: usize,
}

/// Why the run stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited,
    TimedOut,
    Cancelled(String),
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command not found: {0}")]
    NotFound(String),
    #[error("cannot start {program}: {source}")]
    Io {
        program: String,
        source: std::io::Error,
    },
}

/// The base environment for children: ours minus service-manager plumbing, plus GIT_TERMINAL_PROMPT=0 and CI=true.
pub fn base_env() -> Vec<(String, String)> {
    // Non-UTF-8 entries are dropped rather than mangled into something the child never had.
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| !STRIPPED.contains(&k.as_str()) && k != "GIT_TERMINAL_PROMPT" && k != "CI")
        .collect();
    env.push(("GIT_TERMINAL_PROMPT".into(), "0".into()));
    env.push(("CI".into(), "true".into()));
    env
}

/// Runs `spec` to completion, streaming each output line (without the newline) to `on_line` as it arrives.
pub fn run(
    spec: &Spec,
    cancel: &Cancel,
    on_line: &mut dyn FnMut(Stream, &str),
) -> Result<Outcome, SpawnError> {
    let io_err = |source| SpawnError::Io {
        program: spec.program.clone(),
        source,
    };
    let base = base_env();
    let path_var = spec
        .env
        .iter()
        .rev()
        .chain(base.iter().rev())
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    // A relative path with a slash is taken from the working directory given, not left for exec to
    // resolve against whichever directory the engine runs in.
    let program = match &spec.cwd {
        Some(dir) if spec.program.contains('/') && !spec.program.starts_with('/') => {
            Some(dir.join(&spec.program))
        }
        _ => resolve(&spec.program, path_var.as_deref()),
    }
    .ok_or_else(|| SpawnError::NotFound(spec.program.clone()))?;
    // Checked here because spawn reports a missing cwd as ENOENT, which would read as "command not found".
    if let Some(dir) = &spec.cwd
        && !dir.is_dir()
    {
        let msg = format!("working directory {} does not exist", dir.display());
        return Err(io_err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            msg,
        )));
    }

    static RUNS: AtomicU64 = AtomicU64::new(0);
    let tag = format!(
        "{}.{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let mut cmd = Command::new(&program);
    // argv[0] stays as written, as a shell would pass it, even though we exec the resolved path.
    cmd.arg0(&spec.program)
        .args(&spec.args)
        .env_clear()
        .envs(base)
        .envs(spec.env.iter().cloned())
        .env(RUN_TAG_VAR, &tag)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if spec.low_priority {
        // SAFETY: the closure runs in the child between fork and exec and only makes two
        // async-signal-safe system calls on itself.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
                // ioprio_set(IOPRIO_WHO_PROCESS, self, IOPRIO_PRIO_VALUE(IOPRIO_CLASS_BE, 7)); no libc wrapper.
                libc::syscall(libc::SYS_ioprio_set, 1, 0, (2 << 13) | 7);
                Ok(())
            });
        }
    }
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SpawnError::NotFound(spec.program.clone()),
        _ => io_err(e),
    })?;
    let pid = child.id() as libc::pid_t;
    // The leader is unreaped, so its /proc entry exists; its descendants all start at or after it.
    let since = proc_stat(pid).map_or(0, |st| st.start);
    let (tx, rx) = sync_channel(1024);
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    // std's Child is dropped unwaited on purpose: we reap with wait4 to get the rusage.
    drop(child);
    let pipes: [(Stream, Box<dyn Read + Send>); 2] = [
        (Stream::Stdout, Box::new(stdout)),
        (Stream::Stderr, Box::new(stderr)),
    ];
    for (stream, pipe) in pipes {
        let tx = tx.clone();
        if let Err(e) = thread::Builder::new()
            .name("supervise-reader".into())
            .spawn(move || read_lines(pipe, stream, tx))
        {
            signal_group(pid, libc::SIGKILL, true);
            wait_reap(pid, KILL_WAIT);
            return Err(io_err(e));
        }
    }
    drop(tx);

    let mut sink = Sink {
        on_line,
        out: Tail::new(spec.capture_limit),
        err: Tail::new(spec.capture_limit),
        open: 2,
        nap: Duration::from_millis(1),
    };
    let deadline = start.checked_add(spec.timeout);
    let (mut reaped, ended) = loop {
        sink.pump(&rx, POLL);
        if let Some(r) = try_reap(pid) {
            break (Some(r), Ended::Exited);
        }
        if cancel.is_cancelled() {
            break (None, Ended::Cancelled(cancel.reason().unwrap_or_default()));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break (None, Ended::TimedOut);
        }
    };
    let mut leftovers_killed = stop_group(pid, &mut reaped, spec.grace, &mut sink, &rx);
    if !spec.keep_detached {
        let tag = format!("{RUN_TAG_VAR}={tag}");
        leftovers_killed += stop_escapees(tag.as_bytes(), pid, since, spec.grace, &mut sink, &rx);
    }

    let drain_until = Instant::now() + DRAIN;
    while sink.open > 0 {
        let left = drain_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sink.pump(&rx, left.min(POLL));
    }

    let reaped = reaped.unwrap_or_else(Reaped::lost);
    let (code, signal) = match reaped.status {
        Some(s) if libc::WIFEXITED(s) => (Some(libc::WEXITSTATUS(s)), None),
        Some(s) if libc::WIFSIGNALED(s) => (None, Some(libc::WTERMSIG(s))),
        _ => (None, None),
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    let usage = reaped.usage;
    Ok(Outcome {
        code,
        signal,
        ended,
        truncated: sink.out.truncated || sink.err.truncated,
        stdout: sink.out.finish(),
        stderr: sink.err.finish(),
        wall: reaped.at.duration_since(start),
        user_cpu: usage.map_or(Duration::ZERO, |u| tv(u.ru_utime)),
        sys_cpu: usage.map_or(Duration::ZERO, |u| tv(u.ru_stime)),
        max_rss_kib: usage.map_or(0, |u| u.ru_maxrss.max(0) as u64),
        leftovers_killed,
    })
}

/// Finds `program` on `path` the way execvp would, so that a miss is reported as NotFound; a name with a
/// `/` is returned as it is.
pub fn resolve(program: &str, path: Option<&str>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    if program.is_empty() {
        return None;
    }
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    // Relative entries are skipped: they would resolve against whatever directory the engine happens to be in.
    path.unwrap_or("/usr/local/bin:/usr/bin:/bin")
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(program))
        .find(|p| executable(p))
}

type Msg = (Stream, Option<String>);

/// Reads one pipe to EOF, sending lines and then `None`; stops early once nobody listens.
fn read_lines(mut pipe: impl Read, stream: Stream, tx: SyncSender<Msg>) {
    let send = |bytes: &[u8]| {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        tx.send((stream, Some(String::from_utf8_lossy(bytes).into_owned())))
            .is_ok()
    };
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let n = match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut from = 0;
        loop {
            let rest = &buf[from..];
            let (line, used) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) if i <= MAX_LINE => (&rest[..i], i + 1),
                _ if rest.len() >= MAX_LINE => (&rest[..MAX_LINE], MAX_LINE),
                _ => break,
            };
            if !send(line) {
                return;
            }
            from += used;
        }
        buf.drain(..from);
    }
    if !buf.is_empty() && !send(&buf) {
        return;
    }
    let _ = tx.send((stream, None));
}

/// Delivers lines to the caller and keeps the captured tails.
struct Sink<'a> {
    on_line: &'a mut dyn FnMut(Stream, &str),
    out: Tail,
    err: Tail,
    open: usize,
    /// The next sleep while waiting for the exit status alone.
    nap: Duration,
}

impl Sink<'_> {
    /// Waits up to `wait` for output, then delivers whatever else is already queued (bounded, so polling goes on).
    fn pump(&mut self, rx: &Receiver<Msg>, wait: Duration) {
        if self.open == 0 {
            // Only the exit status is left to wait for, and it usually follows EOF within a millisecond:
            // back off from 1 ms rather than sleeping a whole poll interval on every short command.
            thread::sleep(wait.min(self.nap));
            self.nap = (self.nap * 2).min(POLL);
            return;
        }
        match rx.recv_timeout(wait) {
            Ok(first) => {
                for (stream, line) in std::iter::once(first).chain(rx.try_iter().take(4096)) {
                    self.deliver(stream, line);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Readers drop their sender only after sending EOF, or if they died: either way nothing more comes.
            Err(RecvTimeoutError::Disconnected) => self.open = 0,
        }
    }

    fn deliver(&mut self, stream: Stream, line: Option<String>) {
        let Some(line) = line else {
            self.open = self.open.saturating_sub(1);
            return;
        };
        (self.on_line)(stream, &line);
        match stream {
            Stream::Stdout => self.out.push(line),
            Stream::Stderr => self.err.push(line),
        }
    }
}

/// The last `limit` bytes of a stream, cut at a line boundary unless a single line is longer than that.
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    limit: usize,
    truncated: bool,
}

impl Tail {
    fn new(limit: usize) -> Self {
        Tail {
            lines: VecDeque::new(),
            bytes: 0,
            limit,
            truncated: false,
        }
    }

    fn push(&mut self, line: String) {
        if self.limit == 0 {
            self.truncated = true;
            return;
        }
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > self.limit && self.lines.len() > 1 {
            let first = self.lines.pop_front().unwrap_or_default();
            self.bytes -= first.len() + 1;
            self.truncated = true;
        }
        if self.bytes > self.limit
            && let Some(only) = self.lines.front_mut()
        {
            let mut cut = (self.bytes - self.limit).min(only.len());
            while !only.is_char_boundary(cut) {
                cut += 1;
            }
            only.drain(..cut);
            self.bytes = only.len() + 1;
            self.truncated = true;
        }
    }

    fn finish(&mut self) -> String {
        let mut s = String::with_capacity(self.bytes);
        for line in &self.lines {
            s.push_str(line);
            s.push('\n');
        }
        s
    }
}

/// The leader's wait status and resource usage, when known.
#[derive(Clone, Copy)]
struct Reaped {
    status: Option<i32>,
    usage: Option<libc::rusage>,
    at: Instant,
}

impl Reaped {
    /// Stands in for a leader we could not reap ourselves, so its status and usage are unknown.
    fn lost() -> Self {
        Reaped {
            status: None,
            usage: None,
            at: Instant::now(),
        }
    }
}

/// Reaps the leader if it has exited; ECHILD (someone else reaped it) counts as exited with no status.
fn try_reap(pid: libc::pid_t) -> Option<Reaped> {
    let mut status = 0;
    // SAFETY: rusage is plain old data of integers, for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers refer to live locals of the right types for the duration of the call.
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
    let at = Instant::now();
    match r {
        0 => None,
        r if r == pid => Some(Reaped {
            status: Some(status),
            usage: Some(usage),
            at,
        }),
        _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => None,
        _ => Some(Reaped::lost()),
    }
}

/// Polls for the leader's exit for at most `limit`.
fn wait_reap(pid: libc::pid_t, limit: Duration) -> Option<Reaped> {
    let until = Instant::now() + limit;
    loop {
        if let Some(r) = try_reap(pid) {
            return Some(r);
        }
        if Instant::now() >= until {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Sends `sig` to the group and, while the leader is unreaped (so its pid cannot be reused), to the leader itself.
fn signal_group(pgid: libc::pid_t, sig: libc::c_int, leader_alive: bool) {
    // SAFETY: kill takes plain integers; a negative pid addresses the process group we created.
    unsafe { libc::kill(-pgid, sig) };
    if leader_alive {
        // SAFETY: as above; the leader may have moved itself to another group.
        unsafe { libc::kill(pgid, sig) };
    }
}

/// Live (non-zombie) members of process group `pgid`, from /proc/<pid>/stat field 5.
fn group_members(pgid: libc::pid_t) -> Vec<libc::pid_t> {
    // SAFETY: signal 0 only checks whether the group exists; nothing is delivered.
    if unsafe { libc::kill(-pgid, 0) } != 0 {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|st| st.pgrp == pgid && st.alive()))
        .collect()
}

/// Stops whatever is left of the group: SIGTERM, up to `grace` to exit, then SIGKILL; returns how many non-leaders were killed.
fn stop_group(
    pgid: libc::pid_t,
    reaped: &mut Option<Reaped>,
    grace: Duration,
    sink: &mut Sink,
    rx: &Receiver<Msg>,
) -> usize {
    let others = group_members(pgid)
        .into_iter()
        .filter(|&p| p != pgid)
        .count();
    if reaped.is_some() && others == 0 {
        return 0;
    }
    signal_group(pgid, libc::SIGTERM, reaped.is_none());
    let until = Instant::now() + grace;
    loop {
        if reaped.is_none() {
            *reaped = try_reap(pgid);
        }
        if reaped.is_some() && group_members(pgid).is_empty() {
            return others;
        }
        if Instant::now() >= until {
            break;
        }
        sink.pump(
            rx,
            POLL.min(until.saturating_duration_since(Instant::now())),
        );
    }
    signal_group(pgid, libc::SIGKILL, reaped.is_none());
    if reaped.is_none() {
        *reaped = wait_reap(pgid, KILL_WAIT);
    }
    others
}

/// Live descendants of a run's `leader` started at or after `since` (clock ticks after boot) whose
/// environment holds `tag` (`VAR=value`): the processes of one run, wherever they moved.
fn tagged(tag: &[u8], leader: libc::pid_t, since: u64) -> Vec<(libc::pid_t, libc::pid_t)> {
    let me = std::process::id() as libc::pid_t;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    // Pids are handed out in increasing order until they wrap: unless they have wrapped since the
    // leader started, its descendants have higher pids, and older processes need not be read at all.
    let wrapped = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse::<libc::pid_t>().ok())
        .is_none_or(|last| last < leader);
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| pid != me && (wrapped || pid > leader))
        .filter_map(|pid| {
            let st = proc_stat(pid).filter(|st| st.alive() && st.start >= since)?;
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            env.split(|&b| b == 0)
                .any(|entry| entry == tag)
                .then_some((pid, st.pgrp))
        })
        .collect()
}

/// Signals each process and, when it leads a group of its own, that group: its children there may have
/// dropped the tag from their environment.
fn signal_each(found: &[(libc::pid_t, libc::pid_t)], sig: libc::c_int) {
    for &(pid, pgrp) in found {
        // SAFETY: kill takes plain integers; pid was just seen alive carrying this run's tag.
        unsafe { libc::kill(pid, sig) };
        if pgrp == pid {
            // SAFETY: as above; the group is the one that process leads.
            unsafe { libc::kill(-pid, sig) };
        }
    }
}

/// Stops the processes of a run that escaped its process group (a `setsid` daemon, a shell's job-control
/// group): SIGTERM, up to `grace` to exit, then SIGKILL until none is left. Returns how many there were.
/// A process that both leaves the group and scrubs its environment is not found; only a cgroup per run
/// would catch that.
fn stop_escapees(
    tag: &[u8],
    leader: libc::pid_t,
    since: u64,
    grace: Duration,
    sink: &mut Sink,
    rx: &Receiver<Msg>,
) -> usize {
    let found = tagged(tag, leader, since);
    if found.is_empty() {
        return 0;
    }
    let mut seen: std::collections::BTreeSet<libc::pid_t> = found.iter().map(|f| f.0).collect();
    signal_each(&found, libc::SIGTERM);
    let until = Instant::now() + grace;
    loop {
        let left = tagged(tag, leader, since);
        seen.extend(left.iter().map(|f| f.0));
        if left.is_empty() {
            return seen.len();
        }
        if Instant::now() >= until {
            break;
        }
        sink.pump(
            rx,
            POLL.min(until.saturating_duration_since(Instant::now())),
        );
    }
    for _ in 0..KILL_ROUNDS {
        let left = tagged(tag, leader, since);
        if left.is_empty() {
            break;
        }
        seen.extend(left.iter().map(|f| f.0));
        signal_each(&left, libc::SIGKILL);
        thread::sleep(Duration::from_millis(5));
    }
    seen.len()
}

/// The fields of `/proc/<pid>/stat` the supervisor needs.
struct ProcStat {
    state: char,
    pgrp: libc::pid_t,
    session: libc::pid_t,
    /// When the process started, in clock ticks after boot.
    start: u64,
}

impl ProcStat {
    /// Zombies and dead entries still show up in /proc but hold nothing open and can do nothing.
    fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

fn proc_stat(pid: libc::pid_t) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses, so fields are counted from the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    // Field 22 of the file; `session` was field 6.
    let start = fields.nth(15)?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        session,
        start,
    })
}

/// The job tag of a claimed trigger: its path in the work directory, unique while it is claimed.
pub fn job_tag(claimed: &Path) -> String {
    claimed.display().to_string()
}

/// Stops what the processes of a claimed trigger's jobs left running (see [`kill_tagged_groups`]);
/// returns how many process groups were stopped.
pub fn kill_job(claimed: &Path, grace: Duration) -> usize {
    kill_tagged_groups(JOB_TAG_VAR, &job_tag(claimed), grace)
}

/// Kills the process groups whose leader carries `var=value` in its environment and is not a session
/// leader: what a dead engine's steps left running. Daemons a step started (a unit's process, pm2's
/// daemon) detach into their own session and are spared. Returns how many groups were stopped.
pub fn kill_tagged_groups(var: &str, value: &str, grace: Duration) -> usize {
    let tag = format!("{var}={value}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let leaders: Vec<libc::pid_t> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|st| st.pgrp == pid && st.session != pid && st.alive())
        })
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|entry| entry == tag.as_bytes()))
        })
        .collect();
    for &pgid in &leaders {
        // SAFETY: kill takes plain integers; -pgid addresses a group whose leader we just identified.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
    }
    let until = Instant::now() + grace;
    while Instant::now() < until && leaders.iter().any(|&g| !group_members(g).is_empty()) {
        thread::sleep(POLL);
    }
    for &pgid in &leaders {
        if !group_members(pgid).is_empty() {
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
    leaders.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Spec {
        let mut spec = Spec::new("sh");
        spec.args = vec!["-c".into(), script.into()];
        spec
    }

    fn collect(spec: &Spec, cancel: &Cancel) -> (Outcome, Vec<(Stream, String)>) {
        let mut lines = Vec::new();
        let outcome = run(spec, cancel, &mut |s, l| lines.push((s, l.to_string()))).expect("spawn");
        (outcome, lines)
    }

    /// True once `pid` no longer exists or is only a zombie waiting for init.
    fn gone(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
    }

    fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
        let until = Instant::now() + limit;
        while !check() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn exit_code_and_streams() {
        let (o, lines) = collect(
            &sh("echo out; echo err >&2; echo out2; exit 3"),
            &Cancel::new(),
        );
        assert_eq!(
            (o.code, o.signal, o.ended.clone()),
            (Some(3), None, Ended::Exited)
        );
        assert_eq!(o.stdout, "out\nout2\n");
        assert_eq!(o.stderr, "err\n");
        assert!(!o.truncated);
        let out: Vec<_> = lines
            .iter()
            .filter(|(s, _)| *s == Stream::Stdout)
            .map(|(_, l)| l.as_str())
            .collect();
        assert_eq!(out, ["out", "out2"]);
        assert!(lines.contains(&(Stream::Stderr, "err".into())));
        assert_eq!(o.leftovers_killed, 0);
    }

    #[test]
    fn odd_output_does_not_panic() {
        let (o, lines) = collect(&sh("printf 'a\\r\\nb\\377\\000c'"), &Cancel::new());
        assert_eq!(o.code, Some(0));
        assert_eq!(lines[0].1, "a");
        assert_eq!(lines[1].1, "b\u{fffd}\0c");
        let (o, _) = collect(&sh("true"), &Cancel::new());
        assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("", ""));
        let (o, lines) = collect(&sh("head -c 200000 /dev/zero | tr '\\0' x"), &Cancel::new());
        let sizes: Vec<_> = lines.iter().map(|(_, l)| l.len()).collect();
        assert_eq!(
            sizes,
            [MAX_LINE, MAX_LINE, MAX_LINE, 200_000 - 3 * MAX_LINE]
        );
        assert_eq!(o.code, Some(0));
    }

    /// Re-runs itself in a child test process whose environment holds the variables to strip,
    /// because setting them in this multi-threaded process would race the other tests.
    #[test]
    fn environment_is_cleaned() {
        if std::env::var_os("SUPERVISE_ENV_PROBE").is_none() {
            let path = module_path!().split_once("::").map_or("", |(_, p)| p);
            let name = format!("{path}::environment_is_cleaned");
            let out = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", &name, "--test-threads=1"])
                .env("SUPERVISE_ENV_PROBE", "1")
                .env("NOTIFY_SOCKET", "/run/systemd/notify")
                .env("LISTEN_FDS", "3")
                .env("GIT_TERMINAL_PROMPT", "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success() && text.contains("1 passed"), "{text}");
            return;
        }
        assert!(std::env::var_os("NOTIFY_SOCKET").is_some());
        let mut spec = Spec::new("env");
        spec.env = vec![("CI".into(), "custom".into()), ("EXTRA".into(), "1".into())];
        let (o, lines) = collect(&spec, &Cancel::new());
        let vars: Vec<_> = lines.into_iter().map(|(_, l)| l).collect();
        assert_eq!(o.code, Some(0));
        assert!(
            !vars
                .iter()
                .any(|v| v.starts_with("NOTIFY_SOCKET=") || v.starts_with("LISTEN_FDS="))
        );
        assert!(vars.contains(&"GIT_TERMINAL_PROMPT=0".into()));
        assert!(vars.contains(&"CI=custom".into()) && !vars.contains(&"CI=true".into()));
        assert!(vars.contains(&"EXTRA=1".into()));
        assert!(base_env().contains(&("CI".into(), "true".into())));
    }

    #[test]
    fn timeout_kills_the_whole_tree() {
        let mut spec = sh("sleep 300 & echo $!; sleep 300");
        spec.timeout = Duration::from_millis(500);
        spec.grace = Duration::from_secs(2);
        let started = Instant::now();
        let (o, lines) = collect(&spec, &Cancel::new());
        assert!(started.elapsed() < spec.timeout + spec.grace + Duration::from_secs(2));
        assert_eq!(o.ended, Ended::TimedOut);
        assert_eq!(o.signal, Some(libc::SIGTERM));
        let grandchild = &lines.first().expect("grandchild pid").1;
        eventually("the grandchild to die", Duration::from_secs(5), || {
            gone(grandchild)
        });
    }

    #[test]
    fn term_trap_gets_sigkill() {
        let mut spec = sh("trap '' TERM; sleep 300");
        spec.timeout = Duration::from_millis(200);
        spec.grace = Duration::from_millis(300);
        let started = Instant::now();
        let (o, _) = collect(&spec, &Cancel::new());
        assert_eq!((o.ended, o.signal), (Ended::TimedOut, Some(libc::SIGKILL)));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn cancel_from_another_thread() {
        let cancel = Cancel::new();
        let remote = cancel.clone();
        let canceller = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            remote.cancel("operator abort");
        });
        let mut spec = Spec::new("sleep");
        spec.args = vec!["300".into()];
        spec.grace = Duration::from_secs(2);
        let started = Instant::now();
        let (o, _) = collect(&spec, &cancel.child());
        canceller.join().unwrap();
        assert_eq!(o.ended, Ended::Cancelled("operator abort".into()));
        assert_eq!(o.signal, Some(libc::SIGTERM));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn background_leftover_is_killed() {
        let mut spec = sh("sleep 300 &");
        spec.grace = Duration::from_millis(500);
        let started = Instant::now();
        let (o, _) = collect(&spec, &Cancel::new());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!((o.code, o.ended), (Some(0), Ended::Exited));
        assert!(o.leftovers_killed >= 1);
    }

    #[test]
    fn setsid_escapee_is_killed_unless_detaching_is_allowed() {
        // The escapee keeps the pipes open and ignores SIGTERM: only the tag finds it, only SIGKILL stops it.
        let script = "setsid sh -c 'trap \"\" TERM; echo $$; exec sleep 30' &";
        let mut spec = sh(script);
        spec.grace = Duration::from_millis(300);
        let started = Instant::now();
        let (o, lines) = collect(&spec, &Cancel::new());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!((o.code, o.leftovers_killed), (Some(0), 1));
        let escapee = &lines.first().expect("escapee pid").1;
        eventually("the escapee to die", Duration::from_secs(5), || {
            gone(escapee)
        });

        // A service manager's daemon detaches the same way and must survive.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("daemon.pid");
        spec.keep_detached = true;
        spec.args[1] = format!(
            "setsid sh -c 'echo $$ > {0}; exec sleep 30' > /dev/null 2>&1 &\nwhile [ ! -s {0} ]; do sleep 0.01; done",
            pidfile.display()
        );
        let (o, _) = collect(&spec, &Cancel::new());
        assert_eq!((o.code, o.leftovers_killed), (Some(0), 0));
        eventually("the daemon's pid", Duration::from_secs(5), || {
            std::fs::read_to_string(&pidfile).is_ok_and(|p| p.ends_with('\n'))
        });
        let daemon = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .to_string();
        assert!(!gone(&daemon), "the detached daemon was left running");
        // SAFETY: kill(2) on the daemon this test started.
        unsafe { libc::kill(daemon.parse().unwrap(), libc::SIGKILL) };
    }

    #[test]
    fn rusage_is_reported() {
        let mut spec = Spec::new("python3");
        spec.args = vec!["-c".into(), "b = b'x' * (100 << 20); print(len(b))".into()];
        let (o, _) = collect(&spec, &Cancel::new());
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        assert!(
            (50_000..2_000_000).contains(&o.max_rss_kib),
            "{}",
            o.max_rss_kib
        );
        assert!(o.user_cpu + o.sys_cpu > Duration::ZERO);
        assert!(o.wall > Duration::ZERO);
    }

    #[test]
    fn capture_keeps_the_tail() {
        let mut spec = Spec::new("seq");
        spec.args = vec!["10000".into()];
        spec.capture_limit = 1024;
        let (o, lines) = collect(&spec, &Cancel::new());
        assert_eq!(lines.len(), 10_000);
        assert!(o.truncated);
        assert!(o.stdout.len() <= 1024 && o.stdout.len() > 1000);
        assert!(o.stdout.ends_with("9999\n10000\n"));
        let first = o.stdout.lines().next().unwrap().parse::<u32>().unwrap();
        assert_eq!(first as usize + o.stdout.lines().count() - 1, 10_000);
        let mut tail = Tail::new(4);
        tail.push("abcdefé".into());
        assert_eq!((tail.finish().as_str(), tail.truncated), ("fé\n", true));
    }

    #[test]
    fn pump_delivers_every_queued_line() {
        let (tx, rx) = sync_channel(10_000);
        for i in 0..9_000 {
            tx.send((Stream::Stdout, Some(i.to_string()))).unwrap();
        }
        tx.send((Stream::Stdout, None)).unwrap();
        tx.send((Stream::Stderr, None)).unwrap();
        let mut seen = 0;
        let mut on_line = |_: Stream, _: &str| seen += 1;
        let mut sink = Sink {
            on_line: &mut on_line,
            out: Tail::new(10),
            err: Tail::new(10),
            open: 2,
            nap: Duration::from_millis(1),
        };
        while sink.open > 0 {
            sink.pump(&rx, Duration::ZERO);
        }
        assert_eq!(sink.out.finish(), "8998\n8999\n");
        assert_eq!(seen, 9_000);
    }

    #[test]
    fn missing_command_is_not_found() {
        let err = run(
            &Spec::new("t8k-no-such-command"),
            &Cancel::new(),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(
            matches!(err, SpawnError::NotFound(ref p) if p == "t8k-no-such-command"),
            "{err}"
        );
        let mut spec = Spec::new("/nonexistent/prog");
        spec.args = vec![];
        assert!(matches!(
            run(&spec, &Cancel::new(), &mut |_, _| {}),
            Err(SpawnError::NotFound(_))
        ));
        let mut spec = Spec::new("true");
        spec.cwd = Some("/nonexistent-dir".into());
        assert!(matches!(
            run(&spec, &Cancel::new(), &mut |_, _| {}),
            Err(SpawnError::Io { .. })
        ));
    }
}
