//! Owns how `t8k-engine` ends: the one table of exit codes and the one way an error is shown. It knows
//! nothing of the commands: they return an [`Exit`] for what they reported themselves, or an error,
//! which `main` renders here.

use std::process::ExitCode;

/// The exit codes, as the README lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every job succeeded, or there was nothing to do.
    Ok = 0,
    /// A job failed, a trigger was set aside, a check found problems, or the command failed.
    Failed = 1,
    /// Bad usage or configuration.
    Usage = 2,
    /// `--no-wait` found another engine holding the lock (EX_TEMPFAIL).
    Locked = 75,
    /// `--wait --timeout` ran out before the job ended; the job goes on (as timeout(1) exits).
    TimedOut = 124,
}

impl Exit {
    /// `Ok` when `ok`, else `Failed`.
    pub fn ok_if(ok: bool) -> Exit {
        if ok { Exit::Ok } else { Exit::Failed }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// An error in how the engine was called or configured: exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Why an engine directory or file is not used: a link, not a directory, another user's, or writable by
/// others (see `fs::OwnDir`). The engine refuses to start (exit code 2) rather than work around it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Whether an error (anywhere in its chain) is a refusal: not transient, so retrying cannot help.
pub fn is_refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<Refused>().is_some())
}

/// An error that exits with the usage code.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// The exit code of an error: the operator's to fix (a usage error, a refused engine directory) is 2.
pub fn exit_of(e: &anyhow::Error) -> Exit {
    if e.is::<UsageError>() || is_refused(e) {
        Exit::Usage
    } else {
        Exit::Failed
    }
}

/// The one way an error is shown: `error: ` and its whole chain of causes on one line.
pub fn render(e: &anyhow::Error) -> String {
    format!("error: {e:#}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn usage_errors_exit_2_and_others_1_each_rendered_with_its_causes() {
        let bad = usage("config setting job_timeout must be greater than 0");
        assert_eq!(exit_of(&bad), Exit::Usage);
        assert_eq!(
            render(&bad),
            "error: config setting job_timeout must be greater than 0"
        );
        let io: anyhow::Result<()> = Err(std::io::Error::other("disk full").into());
        let failed = io.context("cannot write state/x").unwrap_err();
        assert_eq!(exit_of(&failed), Exit::Failed);
        assert_eq!(render(&failed), "error: cannot write state/x: disk full");
        let refused: anyhow::Error =
            Refused("refusing to use state/failed: it is a symlink".into()).into();
        assert_eq!(
            exit_of(&refused.context("cannot open the queue")),
            Exit::Usage
        );
        assert_eq!(
            [Exit::Ok, Exit::Failed, Exit::Usage, Exit::Locked].map(|e| e as u8),
            [0, 1, 2, 75]
        );
        assert_eq!(Exit::ok_if(true), Exit::Ok);
        assert_eq!(Exit::ok_if(false), Exit::Failed);
    }
}
