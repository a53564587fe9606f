//! Owns the step's leader process after duct spawned it: seeing it exit with its resource usage, and
//! having duct reap it. The exit is read with `waitid(WNOWAIT)`, which leaves the leader a zombie, so
//! its pid (and so its process group's id) cannot be reused while the supervisor still signals the group;
//! duct reaps it once the supervisor is done.

use std::os::unix::process::ExitStatusExt;
use std::thread;
use std::time::{Duration, Instant};

use super::POLL;

/// The leader's exit as seen before it is reaped: when, and what it cost.
#[derive(Clone, Copy)]
pub(super) struct Exit {
    /// Its CPU time and peak memory and those of the descendants it reaped; `None` when unknown.
    pub usage: Option<libc::rusage>,
    pub at: Instant,
}

impl Exit {
    /// Stands in for a leader whose exit we could not see, so its usage is unknown.
    pub fn lost() -> Self {
        Exit {
            usage: None,
            at: Instant::now(),
        }
    }
}

/// The process duct started for a step, until duct reaps it.
pub(super) struct Leader {
    handle: duct::Handle,
    pub pid: libc::pid_t,
}

impl Leader {
    pub fn new(handle: duct::Handle) -> Leader {
        let pid = handle.pids()[0] as libc::pid_t;
        Leader { handle, pid }
    }

    /// Whether the leader has exited, with its resource usage, leaving it unreaped. duct (through
    /// shared_child) reaps with `waitpid`, which reports no usage, and `getrusage(RUSAGE_CHILDREN)` sums
    /// every child of the engine, wrong under `parallel`: the kernel gives a zombie's own usage to a
    /// `waitid` with `WNOWAIT`, which only the raw system call takes. ECHILD (someone else reaped it)
    /// counts as exited with unknown usage.
    pub fn exited(&self) -> Option<Exit> {
        // SAFETY: siginfo_t and rusage are plain old data, for which all-zero bytes are valid values.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: the raw waitid(2) takes (idtype, id, *siginfo, options, *rusage); both pointers refer to
        // live locals of the right types for the duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_waitid,
                libc::P_PID,
                self.pid,
                &mut info as *mut libc::siginfo_t,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                &mut usage as *mut libc::rusage,
            )
        };
        if r == -1 {
            return match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => None,
                _ => Some(Exit::lost()),
            };
        }
        // SAFETY: waitid filled `info` (si_pid stays 0 while the child runs, with WNOHANG).
        let pid = unsafe { info.si_pid() };
        (pid != 0).then(|| Exit {
            usage: Some(usage),
            at: Instant::now(),
        })
    }

    /// Polls for the leader's exit for at most `limit`.
    pub fn wait_exit(&self, limit: Duration) -> Option<Exit> {
        let until = Instant::now() + limit;
        loop {
            if let Some(exit) = self.exited() {
                return Some(exit);
            }
            if Instant::now() >= until {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// Has duct reap the leader: its exit code or signal, `(None, None)` when it could not be reaped (one
    /// stuck past SIGKILL stays with duct, which reaps it at a later spawn; nothing here signals it again).
    pub fn reap(self) -> (Option<i32>, Option<i32>) {
        match self.handle.try_wait() {
            Ok(Some(output)) => (output.status.code(), output.status.signal()),
            _ => (None, None),
        }
    }
}
