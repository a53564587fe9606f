//! Owns the engine's own directories inside the inbox (`failed/`, `.t8k-engine/` and everything below it):
//! opens them one component at a time without following a link, refuses any that is not a real directory
//! of the engine's user writable by it alone, and creates, reads, renames and removes files in them relative
//! to the opened directory. It knows nothing of triggers, releases or history.
//!
//! Producers may write the inbox, so they may replace `state/failed` or `state/.t8k-engine` with a link
//! at any moment; everything here goes through a descriptor of the directory that was checked, never
//! through its path again.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};

use crate::error::Refused;

/// A checked directory of the engine's own, held open.
#[derive(Debug)]
pub struct OwnDir {
    fd: OwnedFd,
    path: PathBuf,
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);

/// Returns a `Refused` error with the formatted message.
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err(Refused(format!($($arg)*)).into())
    };
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// A file type in words, for refusals.
fn kind(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice | FileType::BlockDevice => "a device",
        FileType::Unknown => "a file of unknown type",
    }
}

impl OwnDir {
    /// Opens `dir`, whose last `own` components are the engine's own directories, creating any that is
    /// missing (mode 0755). The part above them belongs to the operator and is opened as it is.
    pub fn open(dir: &Path, own: usize) -> Result<OwnDir> {
        Self::walk(dir, own, true)?.context("an engine directory vanished while it was opened")
    }

    /// Opens `dir` like `open` for reading: nothing is created (`None` when a component is missing), and
    /// the owner is not checked, so that another user (root) may look; links are still refused.
    pub fn open_to_read(dir: &Path, own: usize) -> Result<Option<OwnDir>> {
        Self::walk(dir, own, false)
    }

    fn walk(dir: &Path, own: usize, create: bool) -> Result<Option<OwnDir>> {
        let names: Vec<&OsStr> = dir
            .components()
            .rev()
            .take(own)
            .map(|c| match c {
                Component::Normal(n) => Ok(n),
                _ => Err(anyhow::anyhow!(
                    "{} must end in {own} plain directory names",
                    dir.display()
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let base = dir
            .ancestors()
            .nth(own)
            .filter(|b| !b.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if create {
            // The part above is the operator's, made as asked (the inbox, when it does not exist yet).
            std::fs::create_dir_all(base).with_context(|| {
                format!(
                    "cannot create {}: the engine's user must be able to write its parent",
                    base.display()
                )
            })?;
        }
        let mut fd = match rustix::fs::open(base, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if e == rustix::io::Errno::NOENT && !create => return Ok(None),
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("cannot open {}", base.display()));
            }
        };
        let mut path = base.to_path_buf();
        for name in names.into_iter().rev() {
            let parent = path.clone();
            path.push(name);
            if create {
                match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) => {}
                    Err(e) if e == rustix::io::Errno::EXIST => {}
                    Err(e) => {
                        return Err(io::Error::from(e)).with_context(|| {
                            format!(
                                "cannot create {}: the engine's user must be able to write {}",
                                path.display(),
                                parent.display()
                            )
                        });
                    }
                }
            }
            let sub =
                match rustix::fs::openat(&fd, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty()) {
                    Ok(sub) => sub,
                    Err(e) if e == rustix::io::Errno::NOENT && !create => return Ok(None),
                    Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR => {
                        return Err(Refused(not_a_directory(&fd, name, &path)).into());
                    }
                    Err(e) => {
                        return Err(io::Error::from(e))
                            .with_context(|| format!("cannot open {}", path.display()));
                    }
                };
            let st = rustix::fs::fstat(&sub)
                .map_err(io::Error::from)
                .with_context(|| format!("cannot stat {}", path.display()))?;
            if create {
                check_owner_and_mode(&path, st.st_uid, st.st_mode)?;
            }
            fd = sub;
        }
        Ok(Some(OwnDir { fd, path }))
    }

    /// The directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of an entry, for messages.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// The open directory, for renames between directories.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The device the directory is on.
    pub fn dev(&self) -> Result<u64> {
        let st = rustix::fs::fstat(&self.fd)
            .map_err(io::Error::from)
            .with_context(|| format!("cannot stat {}", self.path.display()))?;
        Ok(st.st_dev)
    }

    /// Makes the directory's entries (renames, creations, removals) durable.
    pub fn sync(&self) -> Result<()> {
        (|| -> io::Result<()> {
            crate::fault_point!("sync_dir");
            rustix::fs::fsync(&self.fd).map_err(io::Error::from)
        })()
        .with_context(|| format!("cannot sync directory {}", self.path.display()))
    }

    /// Names in the directory (without `.` and `..`).
    pub fn entries(&self) -> Result<Vec<OsString>> {
        let list = || -> io::Result<Vec<OsString>> {
            let mut names = Vec::new();
            for entry in rustix::fs::Dir::read_from(&self.fd)? {
                let name = entry?.file_name().to_bytes().to_vec();
                if name != b"." && name != b".." {
                    names.push(OsString::from(OsStr::from_bytes(&name)));
                }
            }
            Ok(names)
        };
        list().with_context(|| format!("cannot list {}", self.path.display()))
    }

    /// Whether an entry exists (whatever it is; links are not followed).
    pub fn exists(&self, name: impl AsRef<Path>) -> bool {
        rustix::fs::statat(&self.fd, name.as_ref(), AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// Opens an entry for reading: no link followed, no blocking on a FIFO. The caller checks its type.
    pub fn open_read(&self, name: impl AsRef<Path>) -> io::Result<File> {
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = rustix::fs::openat(&self.fd, name.as_ref(), flags, Mode::empty())?;
        Ok(File::from(fd))
    }

    /// Opens a regular file with one name for reading; `None` when it does not exist. A link, a FIFO, a
    /// device or a hard link is refused.
    pub fn open_regular(&self, name: &str) -> Result<Option<File>> {
        let path = self.join(name);
        let file = match self.open_read(name) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(refused(e, &path)),
        };
        regular(&file, &path)?;
        Ok(Some(file))
    }

    /// Reads a regular file of at most `max` bytes; `None` when it does not exist.
    pub fn read(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let path = self.join(name);
        let Some(file) = self.open_regular(name)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if bytes.len() as u64 > max {
            bail!("{} is larger than {max} bytes", path.display());
        }
        Ok(Some(bytes))
    }

    /// Opens a regular file for appending (and reading), creating it; a link, a FIFO or a file with more
    /// than one name is refused.
    pub fn append(&self, name: &str) -> Result<File> {
        let path = self.join(name);
        let flags = OFlags::RDWR
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC
            | OFlags::NOCTTY;
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o644))
            .map_err(io::Error::from)
            .map_err(|e| refused(e, &path))?;
        let file = File::from(fd);
        regular(&file, &path)?;
        Ok(file)
    }

    /// Replaces `name` with `bytes` through a temporary file renamed over it. `durable` fsyncs the file
    /// and the directory (with the `durable.*` fault points); otherwise a crash may leave the old content.
    pub fn write(&self, name: &str, bytes: &[u8], durable: bool) -> Result<()> {
        self.write_through(name, bytes, durable, true)
    }

    /// Writes `name` durably like [`OwnDir::write`], but never replaces an entry of that name: the write
    /// then fails with [`io::ErrorKind::AlreadyExists`] and leaves it alone.
    pub fn write_new(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.write_through(name, bytes, true, false)
    }

    fn write_through(&self, name: &str, bytes: &[u8], durable: bool, replace: bool) -> Result<()> {
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        let write = || -> io::Result<()> {
            if durable {
                crate::fault_point!("durable.write");
            }
            let mut f = self.create_new(&tmp)?;
            f.write_all(bytes)?;
            if durable {
                crate::fault_point!("durable.fsync");
                f.sync_all()?;
                crate::fault_point!("durable.rename");
            }
            if !replace {
                return self.rename_in(self.fd(), &tmp, name);
            }
            // rename replaces whatever has the name, a link included, and never follows it.
            rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name)?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = self.remove(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", self.join(name).display()));
        }
        if durable {
            self.sync()?;
        }
        Ok(())
    }

    /// Creates a new file; an entry of that name left by a dead process with our pid is removed first.
    fn create_new(&self, name: &str) -> io::Result<File> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let open = || rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o644));
        let fd = match open() {
            Err(e) if e == rustix::io::Errno::EXIST => {
                self.remove(name)?;
                open()?
            }
            other => other?,
        };
        Ok(File::from(fd))
    }

    /// Removes a file (or a link, never what it points to).
    pub fn remove(&self, name: impl AsRef<Path>) -> io::Result<()> {
        rustix::fs::unlinkat(&self.fd, name.as_ref(), AtFlags::empty()).map_err(io::Error::from)
    }

    /// Renames an entry of `from` (a directory open as `from`) into this directory, never replacing an
    /// entry that exists (`renameat2(RENAME_NOREPLACE)`, AlreadyExists when it does).
    pub fn rename_in(
        &self,
        from: BorrowedFd<'_>,
        from_name: impl AsRef<Path>,
        to_name: impl AsRef<Path>,
    ) -> io::Result<()> {
        renameat_noreplace(from, from_name.as_ref(), self.fd(), to_name.as_ref())
    }
}

/// `renameat2(RENAME_NOREPLACE)` between two directories (or `CWD` for paths); AlreadyExists when `to`
/// exists.
pub(super) fn renameat_noreplace(
    from_dir: BorrowedFd<'_>,
    from: &Path,
    to_dir: BorrowedFd<'_>,
    to: &Path,
) -> io::Result<()> {
    match rustix::fs::renameat_with(from_dir, from, to_dir, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL => {
            // Filesystems without RENAME_NOREPLACE: the engine holds its lock, so check-then-rename
            // races no other engine.
            if rustix::fs::statat(to_dir, to, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            rustix::fs::renameat(from_dir, from, to_dir, to).map_err(io::Error::from)
        }
        Err(e) => Err(e.into()),
    }
}

impl OwnDir {
    /// Any directory, opened as it is (links followed, owner and mode not checked), so that files the
    /// operator's directories hold are written by the same descriptor-relative code (see `fs::write_durably`).
    pub(super) fn as_given(dir: &Path) -> Result<OwnDir> {
        Ok(OwnDir {
            fd: open_base(dir)?,
            path: dir.to_path_buf(),
        })
    }
}

/// A small file in one of the engine's own directories (the last `own` components of `dir`), read without
/// following a link or blocking on a FIFO; `None` when it cannot be read as a regular file.
pub fn read_small(dir: &Path, own: usize, name: &str) -> Option<String> {
    let bytes = OwnDir::open_to_read(dir, own)
        .ok()??
        .read(name, 16 << 20)
        .ok()??;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Opens a directory of the operator's (the inbox), following links as the operator set them up.
pub fn open_base(dir: &Path) -> Result<OwnedFd> {
    rustix::fs::open(dir, DIR_FLAGS, Mode::empty())
        .map_err(io::Error::from)
        .with_context(|| format!("cannot open {}", dir.display()))
}

/// What to tell about an engine directory that is not a directory.
fn not_a_directory(parent: &OwnedFd, name: &OsStr, path: &Path) -> String {
    let shown = path.display();
    let what = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let t = FileType::from_raw_mode(st.st_mode);
            if t == FileType::Symlink {
                let target = rustix::fs::readlinkat(parent, name, Vec::new())
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "?".into());
                format!("a symlink to {target}")
            } else {
                kind(t).to_string()
            }
        }
        Err(_) => "not a directory".to_string(),
    };
    format!(
        "refusing to use {shown}: it is {what}, not a directory; the engine keeps its own files only in real directories it owns, never behind a link (whoever can write {} could have put it there). Move it aside (`mv {shown} {shown}.suspect`) and start again: the engine creates a new directory",
        path.parent()
            .map_or_else(String::new, |p| p.display().to_string())
    )
}

/// An engine directory must be the engine user's and writable by nobody else.
fn check_owner_and_mode(path: &Path, uid: u32, mode: u32) -> Result<()> {
    let shown = path.display();
    let me = euid();
    if uid != me {
        let (owner, me) = (crate::perms::user_name(uid), crate::perms::user_name(me));
        refuse!(
            "refusing to use {shown}: it is owned by {owner}, not by {me}, the user this engine runs as; only the engine's user may own it, or another user could put files in it for the engine or take them out. If {owner} is the engine's user, run t8k-engine as {owner} (`sudo -u {owner} t8k-engine ...`); if not, move it aside (`mv {shown} {shown}.suspect`), look through it before using anything from it, and start the engine again: it creates a new directory"
        );
    }
    let perm = mode & 0o7777;
    if perm & 0o022 != 0 {
        let who = if perm & 0o002 != 0 {
            "every local user"
        } else {
            "its group"
        };
        refuse!(
            "refusing to use {shown}: {who} can write it (mode {perm:04o}), and so replace the engine's files in it. Run `chmod go-w {shown}` and start again"
        );
    }
    Ok(())
}

/// Only regular files with one name are the engine's files.
fn regular(file: &File, path: &Path) -> Result<()> {
    let st = rustix::fs::fstat(file)
        .map_err(io::Error::from)
        .with_context(|| format!("cannot stat {}", path.display()))?;
    let t = FileType::from_raw_mode(st.st_mode);
    if t != FileType::RegularFile {
        refuse!(
            "refusing to use {}: it is {}, not a regular file; move it aside and start again",
            path.display(),
            kind(t)
        );
    }
    if st.st_nlink > 1 {
        refuse!(
            "refusing to use {}: it is a hard link ({} names), so writing it would change another file too; move it aside and start again",
            path.display(),
            st.st_nlink
        );
    }
    Ok(())
}

/// An open that met a link (ELOOP) or a FIFO without a reader (ENXIO) says so.
fn refused(e: io::Error, path: &Path) -> anyhow::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) => anyhow::Error::new(Refused(format!(
            "refusing to use {}: it is a symlink; the engine never follows a link in its own directories. Move it aside and start again",
            path.display()
        ))),
        Some(libc::ENXIO) => anyhow::Error::new(Refused(format!(
            "refusing to use {}: it is a FIFO or a socket, not a regular file; move it aside and start again",
            path.display()
        ))),
        _ => anyhow::Error::new(e).context(format!("cannot open {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_checks_and_refuses_links_and_loose_modes() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let work = OwnDir::open(&state.join(".t8k-engine/work"), 2).unwrap();
        assert!(state.join(".t8k-engine/work").is_dir());
        work.write("a", b"1\n", true).unwrap();
        assert_eq!(work.read("a", 10).unwrap().unwrap(), b"1\n");
        assert_eq!(work.entries().unwrap(), [OsString::from("a")]);

        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), state.join("failed")).unwrap();
        let err = OwnDir::open(&state.join("failed"), 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("it is a symlink to") && err.contains(".suspect"),
            "{err}"
        );

        std::fs::set_permissions(
            state.join(".t8k-engine"),
            std::fs::Permissions::from_mode(0o775),
        )
        .unwrap();
        let err = OwnDir::open(&state.join(".t8k-engine/work"), 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("its group can write it (mode 0775)") && err.contains("chmod go-w"),
            "{err}"
        );

        std::os::unix::fs::symlink("/etc/hostname", work.join("link")).unwrap();
        let err = work.append("link").unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        work.write("link", b"replaced\n", false).unwrap();
        assert!(
            std::fs::symlink_metadata(work.join("link"))
                .unwrap()
                .is_file(),
            "the link itself was replaced"
        );
    }
}
