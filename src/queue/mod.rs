//! Owns the on-disk life of a trigger file: finding it in the inbox, claiming it by rename, counting attempts,
//! and completing or setting it aside with a reason; it never parses triggers and never runs jobs.

mod names;
mod read;
pub mod ready;

use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::fs::{OwnDir, sync_dir, write_durably};
use crate::layout::Layout;
use crate::trigger::is_trigger_name;
pub use names::{Stray, new_trigger_name, strays, trigger_name_from};
use names::{original_name, safe_name, sanitize};
pub use read::{ReadError, open_trigger, opened_trigger, read_capped};

/// The inbox, the claimed work and the set-aside triggers of one state directory.
#[derive(Debug, Clone)]
pub struct Queue {
    inbox: PathBuf,
    work: PathBuf,
    failed: PathBuf,
    max_bytes: u64,
}

/// The inbox as [`Queue::pending`] lists it.
#[derive(Debug, Default)]
pub struct Pending {
    /// Trigger names to run, byte-wise sorted.
    pub names: Vec<String>,
    /// Files with unsafe names, set aside while listing: (set-aside name, reason).
    pub set_aside: Vec<SetAside>,
}

/// A file set aside, under the name it has in `failed/`.
#[derive(Debug)]
pub struct SetAside {
    /// Its name in `failed/`.
    pub name: String,
    /// Why.
    pub reason: Reason,
}

/// Where a trigger file is when it is set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Still in the inbox (never claimed).
    Inbox,
    /// Claimed into the engine's work directory.
    Work,
}

/// Why a trigger file was set aside: a one-line summary and the details below it.
#[derive(Debug, Clone)]
pub struct Reason {
    /// One line: file, line, step and what to do next.
    pub summary: String,
    /// The job, the failed step, the tail of its output.
    pub details: String,
}

/// The result of trying to claim one inbox file.
#[derive(Debug)]
pub enum Claim {
    /// Now in `work/` under the same name.
    Claimed,
    /// Gone before we got to it (its producer removed it).
    Vanished,
    /// `work/` already holds a trigger of that name.
    Duplicate,
}

impl Queue {
    /// Opens the queue, creating the engine's directories next to the inbox on the same filesystem; an
    /// engine directory that is a link, not a real directory, another user's or writable by others is refused.
    pub fn open(layout: &Layout, max_bytes: u64) -> Result<Queue> {
        std::fs::create_dir_all(&layout.state).with_context(|| {
            format!(
                "cannot create {}: check that the engine's user owns its parent",
                layout.state.display()
            )
        })?;
        let queue = Queue {
            inbox: layout.state.clone(),
            work: layout.work.clone(),
            failed: layout.failed.clone(),
            max_bytes,
        };
        let inbox = std::fs::metadata(&layout.state)
            .map(|m| m.dev())
            .with_context(|| format!("cannot stat {}", layout.state.display()))?;
        if inbox != queue.work_dir_open()?.dev()? || inbox != queue.failed_dir()?.dev()? {
            bail!(
                "{} and {} are on different filesystems, so a claim could not be an atomic rename; do not mount over them",
                layout.state.display(),
                layout.work.display()
            );
        }
        Ok(queue)
    }

    /// `work/`, checked and open (`.t8k-engine/work` below the inbox: both are the engine's own).
    fn work_dir_open(&self) -> Result<OwnDir> {
        OwnDir::open(&self.work, 2)
    }

    /// `failed/`, checked and open.
    fn failed_dir(&self) -> Result<OwnDir> {
        OwnDir::open(&self.failed, FAILED_OWN)
    }

    /// The inbox, open (it is the operator's: a link to it is followed).
    fn inbox_dir(&self) -> Result<std::os::fd::OwnedFd> {
        crate::fs::open_base(&self.inbox)
    }

    /// Removes what a crash can leave behind: temporary files of durable writes it cut short
    /// (`.NAME.PID.tmp`) and the attempt counts of triggers already completed or set aside (which would
    /// otherwise count against a later trigger of the same name). Only the lock holder may call this: another
    /// engine's write in progress would be among them.
    pub fn remove_torn_writes(&self) {
        let Ok(work) = self.work_dir_open() else {
            return;
        };
        let dirs = [Some(work), self.failed_dir().ok()];
        for dir in dirs.iter().flatten() {
            let Ok(entries) = dir.entries() else {
                continue;
            };
            for name in entries {
                let name = name.to_string_lossy();
                let orphan = name
                    .strip_prefix('.')
                    .and_then(|n| n.strip_suffix(".attempts"))
                    .is_some_and(|trigger| dirs[0].as_ref().is_some_and(|w| !w.exists(trigger)));
                if name.starts_with('.') && (name.ends_with(".tmp") || orphan) {
                    let _ = dir.remove(name.as_ref());
                }
            }
        }
    }

    /// The claimed directory.
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// Path of a claimed trigger.
    pub fn claimed_path(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    /// Trigger names in the inbox, byte-wise sorted. Names that match `build-*.csv` but are unsafe to
    /// handle (odd bytes, too long) are set aside on the way, with their reason returned beside the list.
    pub fn pending(&self) -> Result<Pending> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for entry in read_dir(&self.inbox)? {
            let raw = entry.file_name();
            let bytes = raw.as_bytes();
            if !(bytes.starts_with(b"build-") && bytes.ends_with(b".csv")) {
                continue;
            }
            match raw.to_str() {
                Some(name) if is_trigger_name(name) && safe_name(name) => {
                    good.push(name.to_string())
                }
                Some(name) if !is_trigger_name(name) => {}
                _ => {
                    let shown = self.free_failed_name(&sanitize(bytes))?;
                    let reason = Reason {
                        summary: format!(
                            "{shown}: unsafe file name; name triggers build-<letters, digits, '.', '_', '-', ':' or '+'>.csv (at most 128 bytes) and drop it again"
                        ),
                        details: format!(
                            "original name bytes: {:?}",
                            String::from_utf8_lossy(bytes)
                        ),
                    };
                    self.set_aside_as(Place::Inbox, &raw, &shown, &reason)?;
                    bad.push(SetAside {
                        name: shown,
                        reason,
                    });
                }
            }
        }
        good.sort();
        Ok(Pending {
            names: good,
            set_aside: bad,
        })
    }

    /// `*.csv` files in the inbox that are not named `build-*.csv` (see [`strays`]).
    pub fn strays(&self) -> Result<Vec<Stray>> {
        strays(&self.inbox)
    }

    /// Claimed trigger names left in `work/` (by a crash or a stop), byte-wise sorted.
    pub fn claimed(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .work_dir_open()?
            .entries()?
            .into_iter()
            .filter_map(|n| n.to_str().map(str::to_string))
            .filter(|n| is_trigger_name(n))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Moves one inbox file into `work/` atomically and durably.
    pub fn claim(&self, name: &str) -> Result<Claim> {
        let from = self.inbox.join(name);
        let (inbox, work) = (self.inbox_dir()?, self.work_dir_open()?);
        let renamed = (|| -> io::Result<()> {
            crate::fault_point!("claim.rename");
            work.rename_in(inbox.as_fd(), name, name)
        })();
        match renamed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Claim::Vanished),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Claim::Duplicate),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot claim {} into {}",
                        from.display(),
                        self.work.display()
                    )
                });
            }
        }
        crate::fault_point!("claim.renamed");
        // A record left by an engine that died inside `complete` or `set_aside` counts the starts of an
        // earlier trigger of this name (a retried one, say), never of this one, which nobody has started.
        let _ = work.remove(attempts_name(name));
        work.sync()?;
        sync_fd(&inbox, &self.inbox)?;
        Ok(Claim::Claimed)
    }

    /// Reads a claimed trigger without following symlinks or blocking on FIFOs, within the size cap.
    pub fn read_claimed(&self, name: &str) -> std::result::Result<Vec<u8>, ReadError> {
        let work = self
            .work_dir_open()
            .map_err(|e| ReadError::Io(io::Error::other(format!("{e:#}"))))?;
        let file = opened_trigger(work.open_read(name), self.max_bytes)?;
        read_capped(file, self.max_bytes)
    }

    /// Path of a trigger still in the inbox.
    pub fn inbox_path(&self, name: &str) -> PathBuf {
        self.inbox.join(name)
    }

    /// The size cap for trigger files.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Removes an unclaimed trigger whose job a newer trigger will run (coalescing).
    pub fn remove_superseded(&self, name: &str) -> Result<()> {
        let path = self.inbox.join(name);
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove superseded trigger {}", path.display()))?;
        sync_dir(&self.inbox)
    }

    /// Replaces an unclaimed, complete trigger's content atomically (coalescing carries a superseded
    /// trigger's `force=true` over to the one that runs); the file is never seen half-written.
    pub fn rewrite_pending(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_durably(&self.inbox.join(name), bytes)
    }

    /// Records one more start of a claimed trigger and returns how many starts came before it.
    pub fn begin_attempt(&self, name: &str) -> Result<u32> {
        let work = self.work_dir_open()?;
        let before = work
            .read(&attempts_name(name), 64)?
            .and_then(|b| String::from_utf8_lossy(&b).trim().parse::<u32>().ok())
            .unwrap_or(0);
        crate::fault_point!("attempt.write");
        work.write(
            &attempts_name(name),
            format!("{}\n", before + 1).as_bytes(),
            true,
        )?;
        Ok(before)
    }

    /// Restores the attempt count after a clean interruption, which is not a death of the engine.
    pub fn reset_attempts(&self, name: &str, count: u32) -> Result<()> {
        let work = self.work_dir_open()?;
        if count == 0 {
            let _ = work.remove(attempts_name(name));
            return work.sync();
        }
        work.write(&attempts_name(name), format!("{count}\n").as_bytes(), true)
    }

    /// Removes a trigger whose jobs all succeeded.
    pub fn complete(&self, name: &str) -> Result<()> {
        let work = self.work_dir_open()?;
        (|| -> io::Result<()> {
            crate::fault_point!("complete.remove");
            work.remove(name)
        })()
        .with_context(|| {
            format!(
                "cannot remove finished trigger {}",
                work.join(name).display()
            )
        })?;
        crate::fault_point!("complete.removed");
        let _ = work.remove(attempts_name(name));
        work.sync()
    }

    /// Moves a trigger to `failed/` with `<name>.reason` beside it; `reason` is told the set-aside name
    /// (which differs from `name` when an earlier copy is already there) so it can say how to retry it.
    pub fn set_aside(
        &self,
        name: &str,
        place: Place,
        reason: impl FnOnce(&str) -> Reason,
    ) -> Result<String> {
        let aside = self.free_failed_name(name)?;
        let final_name = self.set_aside_as(place, name.as_ref(), &aside, &reason(&aside))?;
        // The record counts the claimed trigger's starts: an inbox file of the same name (a duplicate, an
        // incomplete write) must leave it alone.
        if place == Place::Work {
            let _ = self.work_dir_open()?.remove(attempts_name(name));
        }
        Ok(final_name)
    }

    fn set_aside_as(
        &self,
        place: Place,
        name: &std::ffi::OsStr,
        final_name: &str,
        reason: &Reason,
    ) -> Result<String> {
        // The reason is written first: a crash in between leaves a stray reason, never an unexplained trigger.
        let final_name = final_name.to_string();
        let failed = self.failed_dir()?;
        crate::fault_point!("set_aside.reason");
        write_reason(&failed, &final_name, reason)?;
        crate::fault_point!("set_aside.reason_written");
        let (from_fd, from_path) = match place {
            Place::Inbox => (self.inbox_dir()?, self.inbox.clone()),
            Place::Work => {
                let work = self.work_dir_open()?;
                (work.fd().try_clone_to_owned()?, self.work.clone())
            }
        };
        failed
            .rename_in(from_fd.as_fd(), name, &final_name)
            .with_context(|| {
                format!(
                    "cannot move {} to {}",
                    from_path.join(name).display(),
                    failed.join(&final_name).display()
                )
            })?;
        crate::fault_point!("set_aside.renamed");
        failed.sync()?;
        sync_fd(&from_fd, &from_path)?;
        Ok(final_name)
    }

    /// Puts a set-aside trigger back into the inbox under its original name; returns the new path.
    pub fn retry(&self, name: &str) -> Result<PathBuf> {
        if name.contains('/') || name.starts_with('.') || name.ends_with(".reason") {
            bail!(
                "`{name}` is not the name of a set-aside trigger; `ls {}` lists them",
                self.failed.display()
            );
        }
        let failed = self.failed_dir()?;
        if !failed.exists(name) {
            bail!(
                "no set-aside trigger named `{name}` in {}",
                self.failed.display()
            );
        }
        let original = original_name(name);
        let to = self.inbox.join(original);
        let inbox = self.inbox_dir()?;
        // Into the inbox: renameat2 relative to its descriptor, so that it never replaces a trigger there.
        let renamed = rustix::fs::renameat_with(
            failed.fd(),
            name,
            &inbox,
            original,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(io::Error::from);
        match renamed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                bail!(
                    "the inbox already has {}; wait for it to finish, then retry",
                    to.display()
                )
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot move {} back to the inbox",
                        failed.join(name).display()
                    )
                });
            }
        }
        crate::fault_point!("retry.renamed");
        let _ = failed.remove(format!("{name}.reason"));
        sync_fd(&inbox, &self.inbox)?;
        failed.sync()?;
        Ok(to)
    }

    fn free_failed_name(&self, name: &str) -> Result<String> {
        Ok(free_name(&self.failed_dir()?, name))
    }
}

/// How many trailing components of `state/failed` are the engine's own: `failed` itself.
const FAILED_OWN: usize = 1;

/// The engine's `failed/` of a layout, checked and open: for setting aside what never was a trigger file
/// in the inbox (a fleet job the bridge cannot hand over) with [`set_aside_bytes`].
pub fn failed_dir(layout: &Layout) -> Result<OwnDir> {
    OwnDir::open(&layout.failed, FAILED_OWN)
}

/// Sets aside `bytes` that never were a file here (a job from elsewhere that cannot run) in `failed` as the
/// queue sets aside a trigger: `<name>.reason` first, in the same format, then the bytes, under the first
/// free name of `name`, `name.1`, … (`reason` is told it). The bytes are written durably and never replace
/// an entry; nothing needs the engine's lock. Returns the name they got.
pub fn set_aside_bytes(
    failed: &OwnDir,
    name: &str,
    bytes: &[u8],
    mut reason: impl FnMut(&str) -> Reason,
) -> Result<String> {
    if !safe_name(name) || name.starts_with('.') {
        bail!(
            "cannot set aside `{}`: not a plain file name",
            name.escape_debug()
        );
    }
    let mut taken = 0;
    loop {
        let aside = free_name(failed, name);
        write_reason(failed, &aside, &reason(&aside))?;
        match failed.write_new(&aside, bytes) {
            Ok(()) => return Ok(aside),
            // Someone else set aside a file of this name between the look and the write: take the next.
            Err(e) if already_exists(&e) && taken < 100 => taken += 1,
            Err(e) => return Err(e),
        }
    }
}

fn already_exists(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::AlreadyExists)
}

/// `<name>.reason` in `failed`: the summary, a blank line, the details, with credentials redacted.
fn write_reason(failed: &OwnDir, name: &str, reason: &Reason) -> Result<()> {
    let text = format!("{}\n\n{}\n", reason.summary, reason.details.trim_end());
    let text = crate::redact::redact(&text);
    failed.write(&format!("{name}.reason"), text.as_bytes(), true)
}

/// The first of `name`, `name.1`, … that `failed` has no entry of. A reason without its file is the
/// leftover of a crash mid-set-aside: its name is free again.
fn free_name(failed: &OwnDir, name: &str) -> String {
    if !failed.exists(name) {
        return name.to_string();
    }
    (1..)
        .map(|i| format!("{name}.{i}"))
        .find(|n| !failed.exists(n))
        .expect("an unused name exists")
}

fn read_dir(dir: &Path) -> Result<impl Iterator<Item = std::fs::DirEntry>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    Ok(entries.filter_map(|e| e.ok()))
}

/// The attempt count of a claimed trigger, beside it in `work/`.
fn attempts_name(name: &str) -> String {
    format!(".{name}.attempts")
}

/// Makes the entries of a directory open as `fd` durable (the inbox, after a rename out of or into it).
fn sync_fd(fd: &std::os::fd::OwnedFd, path: &Path) -> Result<()> {
    (|| -> io::Result<()> {
        crate::fault_point!("sync_dir");
        rustix::fs::fsync(fd).map_err(io::Error::from)
    })()
    .with_context(|| format!("cannot sync directory {}", path.display()))
}

#[cfg(test)]
mod tests;
