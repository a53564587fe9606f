//! Owns the on-disk life of a trigger file: finding it in the inbox, claiming it by rename, counting attempts,
//! and completing or setting it aside with a reason; it never parses triggers and never runs jobs.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::layout::Layout;
use crate::owndir::OwnDir;
use crate::trigger::is_trigger_name;

/// The inbox, the claimed work and the set-aside triggers of one state directory.
#[derive(Debug, Clone)]
pub struct Queue {
    inbox: PathBuf,
    work: PathBuf,
    failed: PathBuf,
    max_bytes: u64,
}

/// Trigger names ready to claim, in order, and the unsafe names set aside while listing them.
pub type Pending = (Vec<String>, Vec<(String, Reason)>);

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

/// A claimed trigger that cannot be read as a trigger file at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A symlink, FIFO, directory, device or socket.
    #[error("{0} is not a regular file")]
    NotRegular(&'static str),
    /// Larger than the configured cap.
    #[error("file is {size} bytes, larger than the {max}-byte limit for a trigger")]
    TooLarge {
        /// The file's size.
        size: u64,
        /// The cap.
        max: u64,
    },
    /// Has more than one name, so its content may belong to another file.
    #[error("file is a hard link ({0} names); write trigger files as new files")]
    HardLink(u64),
    /// Any other I/O failure.
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
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
        OwnDir::open(&self.failed, 1)
    }

    /// The inbox, open (it is the operator's: a link to it is followed).
    fn inbox_dir(&self) -> Result<std::os::fd::OwnedFd> {
        crate::owndir::open_base(&self.inbox)
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
                    bad.push((shown, reason));
                }
            }
        }
        good.sort();
        Ok((good, bad))
    }

    /// `*.csv` files in the inbox that are not named `build-*.csv` (see [`strays`]).
    pub fn strays(&self) -> Result<Vec<(String, String)>> {
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
        let text = format!("{}\n\n{}\n", reason.summary, reason.details.trim_end());
        let text = crate::redact::redact(&text);
        crate::fault_point!("set_aside.reason");
        failed.write(&format!("{final_name}.reason"), text.as_bytes(), true)?;
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
        // A reason without its trigger is the leftover of a crash mid-set-aside: its name is free again.
        let failed = self.failed_dir()?;
        if !failed.exists(name) {
            return Ok(name.to_string());
        }
        Ok((1..)
            .map(|i| format!("{name}.{i}"))
            .find(|n| !failed.exists(n))
            .expect("an unused name exists"))
    }
}

/// Opens a trigger file safely: no symlink following, no blocking on FIFOs, regular files only, within
/// the size cap and with a single name.
pub fn open_trigger(path: &Path, max_bytes: u64) -> std::result::Result<File, ReadError> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    opened_trigger(opened, max_bytes)
}

/// Checks a trigger file opened without following links or blocking (see `open_trigger`).
fn opened_trigger(
    opened: io::Result<File>,
    max_bytes: u64,
) -> std::result::Result<File, ReadError> {
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(ReadError::NotRegular("a symlink"));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(ReadError::NotRegular("a socket"));
        }
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        Some("a directory")
    } else if ft.is_fifo() {
        Some("a FIFO")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_block_device() || ft.is_char_device() {
        Some("a device")
    } else if !ft.is_file() {
        Some("an unknown file type")
    } else {
        None
    };
    if let Some(kind) = kind {
        return Err(ReadError::NotRegular(kind));
    }
    if meta.len() > max_bytes {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            max: max_bytes,
        });
    }
    if meta.nlink() > 1 {
        return Err(ReadError::HardLink(meta.nlink()));
    }
    Ok(file)
}

/// Reads an opened trigger, refusing more than `max_bytes` even if it grew after the check.
pub fn read_capped(file: File, max_bytes: u64) -> std::result::Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            max: max_bytes,
        });
    }
    Ok(bytes)
}

/// `*.csv` files in the inbox that are not named `build-*.csv`, so no engine runs them (the newest
/// TractStack docs say `state/main_build.csv`), byte-wise sorted; each with the warning to log.
pub fn strays(inbox: &Path) -> Result<Vec<(String, String)>> {
    let mut names: Vec<String> = read_dir(inbox)?
        .map(|e| e.file_name())
        .filter(|raw| {
            let b = raw.as_bytes();
            let csv = b.len() >= 4 && b[b.len() - 4..].eq_ignore_ascii_case(b".csv");
            // `build-*.csv` names are pending's: it runs them or sets them aside as unsafe.
            let trigger_shaped = b.starts_with(b"build-") && b.ends_with(b".csv") && b.len() > 10;
            csv && !b.starts_with(b".") && !trigger_shaped
        })
        .map(|raw| raw.to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| {
            let warning = stray_warning(inbox, &name);
            (name, warning)
        })
        .collect())
}

/// What to tell about a `*.csv` file that no engine runs: its name, the pattern, and how to run it.
fn stray_warning(inbox: &Path, name: &str) -> String {
    let mut text = format!(
        "ignored: {} does not match build-*.csv; rename it to build-….csv to run it",
        name.escape_debug()
    );
    // The command is offered only when nothing in it needs quoting, so that pasting it is safe.
    let plain = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:+".contains(&b))
    };
    if plain(name) && plain(&inbox.display().to_string()) {
        text.push_str(&format!(
            " (mv -n {dir}/{name} {dir}/build-$(date +%s).csv)",
            dir = inbox.display()
        ));
    }
    text
}

/// The inbox name of a set-aside trigger (`build-1.csv.2` was the second `build-1.csv` set aside).
fn original_name(name: &str) -> &str {
    match name.rsplit_once(".csv.") {
        Some((stem, n)) if n.chars().all(|c| c.is_ascii_digit()) => &name[..stem.len() + 4],
        _ => name,
    }
}

/// Names a trigger may have: ASCII letters, digits and `. _ - : +` (so `build-$(date -Iseconds).csv`,
/// `build-2026-01-01T10:00:00+00:00.csv`, is one), at most 128 bytes. No `/`, space, quote, control byte or
/// shell character ever reaches a log line, a reason file or a child's environment from a name.
fn safe_name(name: &str) -> bool {
    name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'+'))
}

fn sanitize(bytes: &[u8]) -> String {
    let mut out: String = bytes
        .iter()
        .take(120)
        .map(|&b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'+') {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    if !out.ends_with(".csv") {
        out.push_str(".csv");
    }
    out
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

/// Renames without replacing an existing target (`renameat2(RENAME_NOREPLACE)`).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) {
        // Filesystems without RENAME_NOREPLACE: we hold the engine lock, so check-then-rename cannot race another engine.
        if std::fs::symlink_metadata(to).is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        return std::fs::rename(from, to);
    }
    Err(err)
}

/// Makes a directory's entries (renames, creations, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    (|| -> io::Result<()> {
        crate::fault_point!("sync_dir");
        File::open(dir)?.sync_all()
    })()
    .with_context(|| format!("cannot sync directory {}", dir.display()))
}

/// A new trigger's name: seconds first, so that names sort with `build-$(date +%s).csv` from other
/// producers; the ULID keeps them unique.
pub fn new_trigger_name() -> String {
    let secs = jiff::Timestamp::now().as_second();
    format!("build-{secs}-{}.csv", ulid::Ulid::new())
}

/// Writes a new file (a producer's trigger) as a dot-file renamed into place, so that no reader ever sees
/// it half-written: created with O_EXCL (producers may write the inbox, and a link planted at the
/// temporary name is not followed), fsynced, renamed without replacing, the directory fsynced.
pub fn write_new_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent directory")?;
    let file_name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written.and_then(|()| rename_noreplace(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    sync_dir(dir)
}

/// Writes a file through a temporary name, fsyncs it, renames it into place and fsyncs the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent directory")?;
    let file_name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let write = || -> io::Result<()> {
        crate::fault_point!("durable.write");
        // A new file, never one found there: a link planted at the temporary name is not followed.
        let create = || OpenOptions::new().write(true).create_new(true).open(&tmp);
        let mut f = match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&tmp)?;
                create()?
            }
            other => other?,
        };
        f.write_all(bytes)?;
        crate::fault_point!("durable.fsync");
        f.sync_all()?;
        crate::fault_point!("durable.rename");
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn queue() -> (tempfile::TempDir, Queue, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(&Config {
            root: dir.path().to_path_buf(),
            ..Config::default()
        });
        let q = Queue::open(&layout, 4096).unwrap();
        (dir, q, layout)
    }

    #[test]
    fn pending_is_sorted_and_ignores_other_names() {
        let (_d, q, l) = queue();
        for n in [
            "build-2.csv",
            "build-10.csv",
            "build-1.csv",
            ".build-0.csv",
            "notes.txt",
            "build-3.csv.tmp",
        ] {
            std::fs::write(l.state.join(n), "x").unwrap();
        }
        let (names, bad) = q.pending().unwrap();
        assert_eq!(names, ["build-1.csv", "build-10.csv", "build-2.csv"]);
        assert!(bad.is_empty());
        // `date -Iseconds` names: `:` and `+` are as safe in a name as `-`.
        std::fs::write(l.state.join("build-2026-01-01T10:00:00+00:00.csv"), "x").unwrap();
        let (names, bad) = q.pending().unwrap();
        assert_eq!(names[3], "build-2026-01-01T10:00:00+00:00.csv");
        assert!(bad.is_empty());
    }

    #[test]
    fn other_csv_files_are_named_as_strays_with_what_to_do() {
        let (_d, q, l) = queue();
        for n in [
            "main_build.csv",
            "BUILD-1.CSV",
            "build-.csv",
            "build-1.csv",
            "build-a b.csv",
            ".build-2.csv",
            "notes.txt",
            "odd name.csv",
        ] {
            std::fs::write(l.state.join(n), "x").unwrap();
        }
        let strays = q.strays().unwrap();
        let names: Vec<&str> = strays.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "BUILD-1.CSV",
                "build-.csv",
                "main_build.csv",
                "odd name.csv"
            ]
        );
        let (_, main) = &strays[2];
        assert!(
            main.starts_with(
                "ignored: main_build.csv does not match build-*.csv; rename it to build-….csv"
            ),
            "{main}"
        );
        assert!(
            main.contains(&format!("mv -n {}/main_build.csv ", l.state.display())),
            "{main}"
        );
        assert!(
            !strays[3].1.contains("mv"),
            "no command for a name that needs quoting"
        );
    }

    #[test]
    fn unsafe_names_are_set_aside_with_a_reason() {
        let (_d, q, l) = queue();
        std::fs::write(
            l.state.join("build-a b;rm.csv"),
            "type=main,command=build\n",
        )
        .unwrap();
        let (names, bad) = q.pending().unwrap();
        assert!(names.is_empty());
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, "build-a_b_rm.csv");
        assert!(l.failed.join("build-a_b_rm.csv").is_file());
        let reason = std::fs::read_to_string(l.failed.join("build-a_b_rm.csv.reason")).unwrap();
        assert!(
            reason.starts_with("build-a_b_rm.csv: unsafe file name"),
            "{reason}"
        );
    }

    #[test]
    fn claim_complete_and_attempts() {
        let (_d, q, l) = queue();
        std::fs::write(l.state.join("build-1.csv"), "type=main,command=build\n").unwrap();
        assert!(matches!(q.claim("build-1.csv").unwrap(), Claim::Claimed));
        assert!(!l.state.join("build-1.csv").exists());
        assert_eq!(q.claimed().unwrap(), ["build-1.csv"]);
        assert_eq!(
            q.read_claimed("build-1.csv").unwrap(),
            b"type=main,command=build\n"
        );
        assert_eq!(q.begin_attempt("build-1.csv").unwrap(), 0);
        assert_eq!(q.begin_attempt("build-1.csv").unwrap(), 1);
        assert!(matches!(q.claim("build-1.csv").unwrap(), Claim::Vanished));
        std::fs::write(l.state.join("build-1.csv"), "again\n").unwrap();
        assert!(matches!(q.claim("build-1.csv").unwrap(), Claim::Duplicate));
        q.complete("build-1.csv").unwrap();
        assert!(q.claimed().unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(&l.work).unwrap().count(),
            0,
            "attempt record removed too"
        );
    }

    #[test]
    fn setting_aside_an_inbox_duplicate_keeps_the_claimed_triggers_attempts() {
        // Found by tests/props.rs: set_aside from the inbox removed the attempt record of the claimed
        // trigger of the same name, so a duplicate reset the count of engine deaths on it.
        let (_d, q, l) = queue();
        std::fs::write(l.state.join("build-1.csv"), "first\n").unwrap();
        q.claim("build-1.csv").unwrap();
        assert_eq!(q.begin_attempt("build-1.csv").unwrap(), 0);
        std::fs::write(l.state.join("build-1.csv"), "second\n").unwrap();
        assert!(matches!(q.claim("build-1.csv").unwrap(), Claim::Duplicate));
        let reason = |aside: &str| Reason {
            summary: aside.into(),
            details: String::new(),
        };
        q.set_aside("build-1.csv", Place::Inbox, reason).unwrap();
        assert_eq!(q.begin_attempt("build-1.csv").unwrap(), 1);
    }

    #[test]
    fn a_claimed_trigger_starts_at_attempt_zero_whatever_a_crash_left() {
        // Found by tests/props.rs: an engine that died inside set_aside (or complete) left the attempt
        // record behind, and a retried trigger of that name inherited its count.
        let (_d, q, l) = queue();
        std::fs::write(l.work.join(".build-1.csv.attempts"), "2\n").unwrap();
        std::fs::write(l.state.join("build-1.csv"), "retried\n").unwrap();
        assert!(matches!(q.claim("build-1.csv").unwrap(), Claim::Claimed));
        assert_eq!(q.begin_attempt("build-1.csv").unwrap(), 0);
    }

    #[test]
    fn set_aside_keeps_file_and_reason_and_retry_restores_it() {
        let (_d, q, l) = queue();
        for round in 0..2 {
            std::fs::write(l.state.join("build-1.csv"), format!("round {round}\n")).unwrap();
            q.claim("build-1.csv").unwrap();
            let reason = Reason {
                summary: format!("build-1.csv: failed {round}"),
                details: "tail".into(),
            };
            let name = q.set_aside("build-1.csv", Place::Work, |_| reason).unwrap();
            assert_eq!(
                name,
                if round == 0 {
                    "build-1.csv"
                } else {
                    "build-1.csv.1"
                }
            );
        }
        let reason = std::fs::read_to_string(l.failed.join("build-1.csv.1.reason")).unwrap();
        assert_eq!(reason, "build-1.csv: failed 1\n\ntail\n");
        assert_eq!(
            std::fs::read_to_string(l.failed.join("build-1.csv")).unwrap(),
            "round 0\n"
        );
        let back = q.retry("build-1.csv.1").unwrap();
        assert_eq!(back, l.state.join("build-1.csv"));
        assert_eq!(std::fs::read_to_string(&back).unwrap(), "round 1\n");
        assert!(!l.failed.join("build-1.csv.1.reason").exists());
        let err = q.retry("build-1.csv").unwrap_err().to_string();
        assert!(err.contains("already has"), "{err}");
        assert!(
            q.retry("nope.csv")
                .unwrap_err()
                .to_string()
                .contains("no set-aside trigger")
        );
        assert!(q.retry("../x").is_err());
    }

    #[test]
    fn non_regular_and_oversized_files_are_refused_without_blocking() {
        let (_d, q, l) = queue();
        std::os::unix::fs::symlink("/etc/hostname", l.work.join("build-l.csv")).unwrap();
        std::fs::create_dir(l.work.join("build-d.csv")).unwrap();
        let fifo = CString::new(l.work.join("build-f.csv").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::fs::write(l.work.join("build-big.csv"), vec![b'a'; 5000]).unwrap();
        std::fs::write(l.work.join("build-h.csv"), "type=main,command=build\n").unwrap();
        std::fs::hard_link(l.work.join("build-h.csv"), l.root.join("other")).unwrap();
        let msg = |n: &str| q.read_claimed(n).unwrap_err().to_string();
        assert_eq!(msg("build-l.csv"), "a symlink is not a regular file");
        assert_eq!(msg("build-d.csv"), "a directory is not a regular file");
        assert_eq!(msg("build-f.csv"), "a FIFO is not a regular file");
        assert!(msg("build-big.csv").contains("5000 bytes"));
        assert!(msg("build-h.csv").contains("hard link"));
        let name = q.set_aside("build-d.csv", Place::Work, |aside| Reason {
            summary: aside.into(),
            details: String::new(),
        });
        assert_eq!(name.unwrap(), "build-d.csv");
        assert!(l.failed.join("build-d.csv").is_dir());
    }

    #[test]
    fn original_names() {
        assert_eq!(original_name("build-1.csv"), "build-1.csv");
        assert_eq!(original_name("build-1.csv.12"), "build-1.csv");
        assert_eq!(original_name("build-1.csv.x"), "build-1.csv.x");
    }
}
