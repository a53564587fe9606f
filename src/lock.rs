//! Owns the single-engine guarantee: an OS file lock on the engine directory, held for as long as the engine
//! processes; it never deletes the locked directory, so a crash can never leave a stale lock behind.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::fs::OwnDir;

/// Holds the engine lock until dropped.
#[derive(Debug)]
pub struct EngineLock {
    dir: File,
    own: OwnDir,
    path: PathBuf,
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
        let (own, dir) = open_dir(engine_dir)?;
        match dir.try_lock() {
            Ok(()) => Ok(Ok(Self::held(dir, own, engine_dir)?)),
            Err(TryLockError::WouldBlock) => Ok(Err(holder(&own))),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", engine_dir.display()))
            }
        }
    }

    /// Takes the lock, waiting for the current holder (named through `on_wait`) to finish.
    pub fn acquire(engine_dir: &Path, on_wait: impl FnOnce(&Holder)) -> Result<EngineLock> {
        let (own, dir) = open_dir(engine_dir)?;
        match dir.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                on_wait(&holder(&own));
                dir.lock()
                    .with_context(|| format!("cannot lock {}", engine_dir.display()))?;
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", engine_dir.display()));
            }
        }
        Self::held(dir, own, engine_dir)
    }

    /// Reports who holds the lock right now, without taking it (for status displays).
    pub fn probe(engine_dir: &Path) -> Result<Option<Holder>> {
        // Read-only: nothing is created, and another user (root) may look; a link is still refused.
        let Some(own) = OwnDir::open_to_read(engine_dir, 1)? else {
            return Ok(None);
        };
        // Read from /proc/locks, so that a status display (the web server polls) never takes the lock,
        // even for a moment: an engine starting then with `run --no-wait` would be turned away.
        match held_per_proc_locks(&own) {
            Some(true) => return Ok(Some(holder(&own))),
            Some(false) => return Ok(None),
            None => {}
        }
        let dir = File::from(own.fd().try_clone_to_owned()?);
        match dir.try_lock() {
            Ok(()) => Ok(None),
            Err(TryLockError::WouldBlock) => Ok(Some(holder(&own))),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", engine_dir.display()))
            }
        }
    }

    fn held(dir: File, own: OwnDir, engine_dir: &Path) -> Result<EngineLock> {
        // The pid file is for diagnostics only: the lock itself is the flock on the directory.
        own.write(
            "engine.pid",
            format!("{}\n{}\n", std::process::id(), jiff::Timestamp::now()).as_bytes(),
            false,
        )
        .context("the state directory must be writable by the engine's user (is it mounted read-only, or owned by another user?)")?;
        Ok(EngineLock {
            dir,
            own,
            path: engine_dir.to_path_buf(),
        })
    }

    /// Whether the locked directory is still the one at its path (not deleted or replaced).
    pub fn still_valid(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        // Not following a link: a link put in the directory's place is a replacement.
        match (self.dir.metadata(), std::fs::symlink_metadata(&self.path)) {
            (Ok(held), Ok(there)) => {
                held.dev() == there.dev() && held.ino() == there.ino() && held.nlink() > 0
            }
            _ => false,
        }
    }
}

impl Drop for EngineLock {
    fn drop(&mut self) {
        let _ = self.own.remove("engine.pid");
    }
}

/// The engine directory, checked (`.t8k-engine` inside the inbox is the engine's own), and a handle to lock.
fn open_dir(engine_dir: &Path) -> Result<(OwnDir, File)> {
    let own = OwnDir::open(engine_dir, 1)?;
    let dir = own
        .fd()
        .try_clone_to_owned()
        .with_context(|| format!("cannot open {} to lock it", engine_dir.display()))?;
    Ok((own, File::from(dir)))
}

/// Whether `/proc/locks` lists a granted flock on the directory: `None` when it cannot tell (no procfs,
/// or a lock on the same inode number whose device is shown differently, as on btrfs subvolumes).
fn held_per_proc_locks(dir: &OwnDir) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = File::from(dir.fd().try_clone_to_owned().ok()?)
        .metadata()
        .ok()?;
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let wanted = format!(
        "{:02x}:{:02x}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    let suffix = format!(":{}", meta.ino());
    let mut same_inode = false;
    // `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`; a waiter's line has `->` after the number.
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            continue;
        }
        match fields.get(5) {
            Some(id) if *id == wanted => return Some(true),
            Some(id) if id.ends_with(&suffix) => same_inode = true,
            _ => {}
        }
    }
    (!same_inode).then_some(false)
}

fn holder(dir: &OwnDir) -> Holder {
    let text = dir
        .read("engine.pid", 4096)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
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
        let own = OwnDir::open_to_read(&engine, 1).unwrap().unwrap();
        assert_eq!(held_per_proc_locks(&own), Some(true), "seen in /proc/locks");
        drop(first);
        assert_eq!(held_per_proc_locks(&own), Some(false));
        assert!(EngineLock::probe(&engine).unwrap().is_none());
        assert!(!engine.join("engine.pid").exists());
        assert!(engine.is_dir(), "the locked directory is never removed");
    }
}
