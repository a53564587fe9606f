//! Owns deciding whether an inbox file is complete enough to claim: nobody holds it open for writing, it ends
//! with a newline and it parses; it never claims, moves or deletes anything.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{ReadError, open_trigger, read_capped};
use crate::config::{self, Config};
use crate::trigger::{self, JobSpec};

/// How to tell that a producer still has a file open for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterProbe {
    /// An `F_SETLEASE` read-lease probe, which fails while any writer has the file open; needs the engine to
    /// own the file or hold `CAP_LEASE`, and falls back to `Settle` when it cannot be used.
    Lease,
    /// Treat a file changed within this window as still being written.
    Settle(Duration),
}

impl WriterProbe {
    /// The probe the configuration asks for (`writer_check`, `settle_ms`).
    pub fn from_config(config: &Config) -> WriterProbe {
        match config.writer_check {
            config::WriterCheck::Lease => WriterProbe::Lease,
            config::WriterCheck::Settle => WriterProbe::Settle(config.settle()),
        }
    }
}

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Complete and valid: claim it.
    Ready(Vec<JobSpec>),
    /// Complete but unusable (not a regular file, too large, does not parse): claim it so that the normal
    /// path sets it aside with its reason.
    Invalid,
    /// A writer may still be at work.
    Writing,
    /// Nobody is writing, but it is not complete yet (empty, or no final newline); stale after a timeout.
    Incomplete(&'static str),
    /// It disappeared.
    Gone,
}

/// Probes one inbox file.
pub fn probe(path: &Path, max_bytes: u64, check: WriterProbe) -> Readiness {
    let file = match open_trigger(path, max_bytes) {
        Ok(f) => f,
        Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Readiness::Gone;
        }
        Err(_) => return Readiness::Invalid,
    };
    let settle = match check {
        WriterProbe::Lease => match lease_probe(&file) {
            Some(true) => return Readiness::Writing,
            Some(false) => None,
            None => Some(Duration::from_millis(250)),
        },
        WriterProbe::Settle(d) => Some(d),
    };
    if let Some(window) = settle {
        let modified = file
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        // An mtime in the future means the clock jumped backwards after the last write: a writer still at
        // work would have stamped it with the new time since, so the file is quiet.
        let recent = SystemTime::now()
            .duration_since(modified)
            .is_ok_and(|age| age < window);
        if recent {
            return Readiness::Writing;
        }
    }
    let bytes = match read_capped(file, max_bytes) {
        Ok(b) => b,
        Err(_) => return Readiness::Invalid,
    };
    if bytes.is_empty() {
        return Readiness::Incomplete("the file is empty");
    }
    if !bytes.ends_with(b"\n") {
        return Readiness::Incomplete("the last line has no newline");
    }
    match trigger::parse(&bytes) {
        Ok(specs) => Readiness::Ready(specs),
        Err(_) => Readiness::Invalid,
    }
}

/// `Some(true)` when a writer has the file open, `Some(false)` when none does, `None` when leases are
/// unavailable here (not the file's owner and no `CAP_LEASE`, or a filesystem without leases).
fn lease_probe(file: &std::fs::File) -> Option<bool> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an fd we own; F_SETLEASE takes an int argument.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) };
    if rc == 0 {
        // SAFETY: as above; releases the lease we just took.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        return Some(false);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_open_for_writing_is_not_ready_until_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("build-1.csv");
        let mut writer = std::fs::File::create(&path).unwrap();
        writer.write_all(b"type=main,command=build\n").unwrap();
        assert_eq!(
            probe(&path, 4096, WriterProbe::Lease),
            Readiness::Writing,
            "newline written but still open"
        );
        drop(writer);
        assert!(
            matches!(probe(&path, 4096, WriterProbe::Lease), Readiness::Ready(ref j) if j.len() == 1)
        );
    }

    #[test]
    fn incomplete_invalid_and_gone() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("a.csv"), "type=main,").unwrap();
        std::fs::write(p("b.csv"), "").unwrap();
        std::fs::write(p("c.csv"), "type=main,bogus=1\n").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", p("d.csv")).unwrap();
        assert_eq!(
            probe(&p("a.csv"), 4096, WriterProbe::Lease),
            Readiness::Incomplete("the last line has no newline")
        );
        assert_eq!(
            probe(&p("b.csv"), 4096, WriterProbe::Lease),
            Readiness::Incomplete("the file is empty")
        );
        assert_eq!(
            probe(&p("c.csv"), 4096, WriterProbe::Lease),
            Readiness::Invalid
        );
        assert_eq!(
            probe(&p("d.csv"), 4096, WriterProbe::Lease),
            Readiness::Invalid
        );
        assert_eq!(
            probe(&p("e.csv"), 4096, WriterProbe::Lease),
            Readiness::Gone
        );
    }

    #[test]
    fn settle_mode_waits_for_quiet_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("build-1.csv");
        std::fs::write(&path, "type=main,command=build\n").unwrap();
        assert_eq!(
            probe(&path, 4096, WriterProbe::Settle(Duration::from_secs(3600))),
            Readiness::Writing
        );
        assert!(matches!(
            probe(&path, 4096, WriterProbe::Settle(Duration::ZERO)),
            Readiness::Ready(_)
        ));
        // Written an hour "later" than now: the clock has since jumped back an hour.
        let future = SystemTime::now() + Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(future)
            .unwrap();
        assert!(matches!(
            probe(&path, 4096, WriterProbe::Settle(Duration::from_secs(1))),
            Readiness::Ready(_)
        ));
    }
}
