//! Owns the named crash and fault points of the claim, run, set-aside and release protocols; tests arm them
//! through `FAILPOINTS` in a build with the `failpoints` feature. It decides nothing: without the feature
//! every point compiles to nothing.
//!
//! Arm a point with `FAILPOINTS='claim.renamed=return(kill)'` (several separated by `;`). Actions:
//! `return(kill)` kills the engine with SIGKILL at that point (a crash); `return(enospc|eacces|eio|erofs)`
//! makes the operation fail with that error (a fault); `N*return(...)` does so only the first N times; the
//! `fail` crate's own `panic`, `sleep(ms)`, `pause` (block for good) and `off` work too. Errors are
//! injected where the real operation would fail (the points inside an I/O call); the others are meant for
//! crashes and hangs. The points, in protocol order:
//!
//! | point | where |
//! |---|---|
//! | `claim.rename`, `claim.renamed` | before / after the inbox→work rename, before the directories are synced |
//! | `attempt.write` | before a claimed trigger's attempt count is written |
//! | `job.started`, `job.finished` | after a job's start is journaled / after its script returned success |
//! | `complete.remove`, `complete.removed` | before / after a finished trigger is removed |
//! | `set_aside.reason`, `set_aside.reason_written`, `set_aside.renamed` | before / after the reason is written, after the move to `failed/` |
//! | `retry.renamed` | after a set-aside trigger is moved back to the inbox |
//! | `daemon.loop` | in the daemon's main loop, as it takes a finished job's result (`pause` hangs the loop) |
//! | `trigger.dropped` | after `trigger` dropped its file, before `--wait` follows it (`sleep(ms)`) |
//! | `run.drained` | after `run` found the inbox empty, before it exits (`sleep(ms)` widens that window) |
//! | `durable.write`, `durable.fsync`, `durable.rename`, `sync_dir` | inside every durable write and directory sync |
//! | `journal.append` | before a history record is written |
//! | `release.rotated`, `release.marked`, `release.exchanged`, `release.kept` | the steps of `switch_in` |
//! | `rollback.marked`, `rollback.exchanged`, `rollback.kept` | the steps of `roll_back` |
//! | `put_back.marked`, `put_back.exchanged` | the steps of `put_back` (a rollback to a kept release) |

use std::io;

/// A crash or fault point named `$name`: without the `failpoints` feature it is nothing. The enclosing
/// function must return a `Result` whose error converts from `std::io::Error`.
#[macro_export]
macro_rules! fault_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |arg: Option<String>| Err($crate::faults::injected(
            $name, arg
        )
        .into()));
    };
}

/// What an armed point does: kill the process, or the error the operation fails with.
pub fn injected(name: &str, arg: Option<String>) -> io::Error {
    let errno = match arg.as_deref() {
        Some("kill") => {
            // SAFETY: raising a signal on ourselves has no memory-safety preconditions.
            unsafe { libc::raise(libc::SIGKILL) };
            unreachable!("SIGKILL cannot be caught")
        }
        Some("enospc") => libc::ENOSPC,
        Some("eacces") => libc::EACCES,
        Some("erofs") => libc::EROFS,
        _ => libc::EIO,
    };
    let e = io::Error::from_raw_os_error(errno);
    io::Error::new(e.kind(), format!("{e} (injected at {name})"))
}
