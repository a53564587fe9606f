//! Runs child processes for build steps: owns spawning, output streaming, time limits and killing the
//! whole process group; it must never let a process outlive its step nor block forever on a pipe.
//!
//! duct builds and spawns every child (`spawn.rs`) and reaps it (`reap.rs`). What duct does not do stays
//! here: signals to the whole group and the sweep of processes that escaped it (`kill.rs`, `procfs.rs`),
//! reading both pipes line by line with a bound on how long they may stay open (`output.rs`: duct's
//! captured output would wait for a grandchild holding a pipe), and the CPU and memory of each step
//! (`reap.rs`: duct reaps without the resource usage, which is read before, from the zombie).

mod kill;
mod output;
mod procfs;
mod reap;
mod spawn;

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::thread;
use std::time::{Duration, Instant};

pub use kill::{job_tag, kill_job, kill_tagged_groups};
pub use spawn::{base_env, resolve};

use crate::cancel::Cancel;
use output::{Sink, read_lines};
use reap::Exit;

/// How often the main loop looks at the child, the clock and the cancel token.
const POLL: Duration = Duration::from_millis(25);
/// Longest wait for the pipes to close once the group is gone: a `setsid` escapee can hold them forever.
const DRAIN: Duration = Duration::from_secs(2);
/// Longest wait for the leader to exit after SIGKILL (it may be stuck in uninterruptible sleep).
const KILL_WAIT: Duration = Duration::from_secs(2);
/// The two tags a step's processes carry in their environment, so that those which leave the process group
/// can still be found. This one is unique to each run: those which leave the group (`setsid`, a group of
/// their own) are stopped when the run ends.
pub const RUN_TAG_VAR: &str = "T8K_ENGINE_RUN";
/// This one is a claimed trigger's [`job_tag`]: an engine started after one died stops what the dead one
/// left running for that trigger ([`kill_job`]).
pub const JOB_TAG_VAR: &str = "T8K_ENGINE_TRIGGER";

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
    pub cwd: Option<std::path::PathBuf>,
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
    /// Bytes read from and written to storage (see [`io_bytes`]).
    pub read_bytes: u64,
    pub written_bytes: u64,
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

/// Runs `spec` to completion, streaming each output line (without the newline) to `on_line` as it
/// arrives: spawn, watch (exit, cancel, timeout), stop what is left, drain the pipes, reap.
pub fn run(
    spec: &Spec,
    cancel: &Cancel,
    on_line: &mut dyn FnMut(Stream, &str),
) -> Result<Outcome, SpawnError> {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let tag = format!(
        "{}.{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let start = Instant::now();
    let spawned = spawn::spawn(spec, &tag)?;
    let leader = spawned.leader;
    // The leader is unreaped, so its /proc entry exists; its descendants all start at or after it.
    let since = procfs::proc_stat(leader.pid).map_or(0, |st| st.start);
    let (tx, rx) = sync_channel(1024);
    let pipes: [(Stream, Box<dyn Read + Send>); 2] = [
        (Stream::Stdout, Box::new(spawned.stdout)),
        (Stream::Stderr, Box::new(spawned.stderr)),
    ];
    for (stream, pipe) in pipes {
        let tx = tx.clone();
        if let Err(e) = thread::Builder::new()
            .name("supervise-reader".into())
            .spawn(move || read_lines(pipe, stream, tx))
        {
            kill::signal_group(leader.pid, libc::SIGKILL, true);
            leader.wait_exit(KILL_WAIT);
            leader.reap();
            return Err(SpawnError::Io {
                program: spec.program.clone(),
                source: e,
            });
        }
    }
    drop(tx);
    let mut sink = Sink::new(on_line, rx, spec.capture_limit);
    let deadline = start.checked_add(spec.timeout);
    let (mut exit, ended) = loop {
        sink.pump(POLL);
        if let Some(exit) = leader.exited() {
            break (Some(exit), Ended::Exited);
        }
        if cancel.is_cancelled() {
            break (None, Ended::Cancelled(cancel.reason().unwrap_or_default()));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break (None, Ended::TimedOut);
        }
    };
    let mut leftovers_killed = kill::stop_group(&leader, &mut exit, spec.grace, &mut sink);
    if !spec.keep_detached {
        let tag = format!("{RUN_TAG_VAR}={tag}");
        leftovers_killed +=
            kill::stop_escapees(tag.as_bytes(), leader.pid, since, spec.grace, &mut sink);
    }
    sink.drain(DRAIN);
    let exit = exit.unwrap_or_else(Exit::lost);
    let (code, signal) = leader.reap();
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    let usage = exit.usage;
    Ok(Outcome {
        code,
        signal,
        ended,
        truncated: sink.out.truncated || sink.err.truncated,
        stdout: sink.out.finish(),
        stderr: sink.err.finish(),
        wall: exit.at.duration_since(start),
        user_cpu: usage.map_or(Duration::ZERO, |u| tv(u.ru_utime)),
        sys_cpu: usage.map_or(Duration::ZERO, |u| tv(u.ru_stime)),
        max_rss_kib: usage.map_or(0, |u| u.ru_maxrss.max(0) as u64),
        read_bytes: usage.map_or(0, |u| io_bytes(&u).0),
        written_bytes: usage.map_or(0, |u| io_bytes(&u).1),
        leftovers_killed,
    })
}

/// Bytes the process and the descendants it waited for made the kernel read from and write to storage: what
/// `/proc/<pid>/io` calls `read_bytes` and `write_bytes` (less cancelled writes), which the leader's rusage
/// (see `reap::Leader::exited`) reports summed over the reaped tree as `ru_inblock` and `ru_oublock` in
/// 512-byte units. Page-cache hits and tmpfs are not storage, so they do not count; a kernel without task
/// I/O accounting reports 0.
fn io_bytes(usage: &libc::rusage) -> (u64, u64) {
    let blocks = |n: libc::c_long| n.max(0) as u64 * 512;
    (blocks(usage.ru_inblock), blocks(usage.ru_oublock))
}

#[cfg(test)]
mod tests;
