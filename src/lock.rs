//! Owns the single-engine guarantee: an OS file lock on the engine directory, held for as long as the engine
//! processes; it never deletes the locked directory, so a crash can never leave a stale lock behind.

use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Holds the engine lock until dropped.
#[derive(Debug)]
pub struct EngineLock {
    dir: File,
    path: PathBuf,
    pid_file: PathBuf,
}

/// What `acquire` found when the lock was taken by someone else.
#[derive(Debug, Clone)]
pub struct Holder {
    /// The holder's pid, from the diagnostic pid file, when readable.
    pub pid: Option<u32>,
    /// When it took the lock (RFC 3339), when recorded.
    pub since: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}"),
            None => f.write_str("an unknown process"),
        }
    }
}

impl EngineLock {
    /// Takes the lock without waiting; `Ok(Err(holder))` when another engine has it.
    pub fn try_acquire(engine_dir: &Path) -> Result<std::result::Result<EngineLock, Holder>> {
        let dir = open_dir(engine_dir)?;
        match dir.try_lock() {
            Ok(()) => Ok(Ok(Self::held(dir, engine_dir)?)),
            Err(TryLockError::WouldBlock) => Ok(Err(holder(engine_dir))),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", engine_dir.display()))
            }
        }
    }

    /// Takes the lock, waiting for the current holder (named through `on_wait`) to finish.
    pub fn acquire(engine_dir: &Path, on_wait: impl FnOnce(&Holder)) -> Result<EngineLock> {
        let dir = open_dir(engine_dir)?;
        match dir.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                on_wait(&holder(engine_dir));
                dir.lock()
                    .with_context(|| format!("cannot lock {}", engine_dir.display()))?;
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", engine_dir.display()));
            }
        }
        Self::held(dir, engine_dir)
    }

    /// Reports who holds the lock right now, without taking it (for status displays).
    pub fn probe(engine_dir: &Path) -> Result<Option<Holder>> {
        let dir = open_dir(engine_dir)?;
        match dir.try_lock() {
            Ok(()) => Ok(None),
            Err(TryLockError::WouldBlock) => Ok(Some(holder(engine_dir))),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", engine_dir.display()))
            }
        }
    }

    fn held(dir: File, engine_dir: &Path) -> Result<EngineLock> {
        // The pid file is for diagnostics only: the lock itself is the flock on the directory.
        let pid_file = engine_dir.join("engine.pid");
        let tmp = engine_dir.join(".engine.pid.tmp");
        let mut f = File::create(&tmp).with_context(|| {
            format!(
                "cannot write {}: the state directory must be writable by the engine's user (is it mounted read-only, or owned by another user?)",
                tmp.display()
            )
        })?;
        writeln!(f, "{}\n{}", std::process::id(), jiff::Timestamp::now())?;
        std::fs::rename(&tmp, &pid_file)
            .with_context(|| format!("cannot write {}", pid_file.display()))?;
        Ok(EngineLock {
            dir,
            path: engine_dir.to_path_buf(),
            pid_file,
        })
    }

    /// Whether the locked directory is still the one at its path (not deleted or replaced).
    pub fn still_valid(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.dir.metadata(), std::fs::metadata(&self.path)) {
            (Ok(held), Ok(there)) => {
                held.dev() == there.dev() && held.ino() == there.ino() && held.nlink() > 0
            }
            _ => false,
        }
    }
}

impl Drop for EngineLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

fn open_dir(engine_dir: &Path) -> Result<File> {
    std::fs::create_dir_all(engine_dir)
        .with_context(|| format!("cannot create {}", engine_dir.display()))?;
    File::open(engine_dir)
        .with_context(|| format!("cannot open {} to lock it", engine_dir.display()))
}

fn holder(engine_dir: &Path) -> Holder {
    let text = std::fs::read_to_string(engine_dir.join("engine.pid")).unwrap_or_default();
    let mut lines = text.lines();
    let pid = lines.next().and_then(|s| s.trim().parse().ok());
    let since = lines
        .next()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    Holder { pid, since }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_in_the_same_process_is_refused_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let engine = dir.path().join(".t8k-engine");
        let first = EngineLock::try_acquire(&engine).unwrap().unwrap();
        let holder = EngineLock::try_acquire(&engine).unwrap().unwrap_err();
        assert_eq!(holder.pid, Some(std::process::id()));
        assert!(EngineLock::probe(&engine).unwrap().is_some());
        drop(first);
        assert!(EngineLock::probe(&engine).unwrap().is_none());
        assert!(!engine.join("engine.pid").exists());
        assert!(engine.is_dir(), "the locked directory is never removed");
    }
}
