//! Owns the file-system primitives every durable change is made of: writes through a temporary name and
//! fsync, directory syncs, `renameat2` without replacing or as an atomic exchange, and opening regular files
//! without blocking on a FIFO or following a symlink one did not ask for; `own` does the same relative to
//! a checked descriptor of one of the engine's own directories. It decides nothing about what is written
//! where.

mod own;

pub use own::{OwnDir, open_base, read_small};

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{CWD, RenameFlags};

/// Makes a directory's entries (renames, creations, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    (|| -> io::Result<()> {
        crate::fault_point!("sync_dir");
        File::open(dir)?.sync_all()
    })()
    .with_context(|| format!("cannot sync directory {}", dir.display()))
}

/// Writes a file through a temporary name, fsyncs it, renames it into place and fsyncs the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, name) = split(path)?;
    OwnDir::as_given(dir)?.write(name, bytes, true)
}

/// Replaces a file through a temporary name renamed over it, without fsync: readers see the old content or
/// the new, never a part, but a crash may leave the old one (for files rewritten often and at start).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, name) = split(path)?;
    OwnDir::as_given(dir)?.write(name, bytes, false)
}

/// Like [`write_durably`], but a file already at `path` is never replaced: the write then fails with
/// [`io::ErrorKind::AlreadyExists`] and leaves it alone.
pub fn write_new_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, name) = split(path)?;
    OwnDir::as_given(dir)?.write_new(name, bytes)
}

/// A path's directory and file name.
fn split(path: &Path) -> Result<(&Path, &str)> {
    let dir = path.parent().context("path has no parent directory")?;
    let name = path.file_name().and_then(|n| n.to_str());
    let name = name.with_context(|| format!("{} has no UTF-8 file name", path.display()))?;
    Ok((dir, name))
}

/// Renames without replacing an existing target (`renameat2(RENAME_NOREPLACE)`); AlreadyExists when it
/// exists.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    own::renameat_noreplace(CWD, from, CWD, to)
}

/// Atomically swaps two paths (`renameat2(RENAME_EXCHANGE)`): neither is ever missing.
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    rustix::fs::renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(io::Error::from)
}

/// Whether [`open_regular`] may follow a symlink at the path itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symlinks {
    /// A symlink is refused as "a symlink" (the engine's own files: never follow one).
    Refuse,
    /// A symlink is followed to what it names (files a script names).
    Follow,
}

/// Why a path could not be opened as a regular file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A symlink (when refused), FIFO, directory, device or socket, as "a FIFO".
    #[error("{0} is not a regular file")]
    NotRegular(&'static str),
    /// Any other failure, including that nothing is there.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Opens a regular file for reading. Anything else is refused before it is read: opening never waits
/// for a FIFO's writer (`O_NONBLOCK`), never takes a controlling terminal, and a device such as
/// /dev/zero is refused rather than read forever.
pub fn open_regular(path: &Path, symlinks: Symlinks) -> Result<(File, Metadata), OpenError> {
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if symlinks == Symlinks::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    regular(
        OpenOptions::new().read(true).custom_flags(flags).open(path),
        symlinks,
    )
}

/// Checks what an open without blocking (and, with `Symlinks::Refuse`, without following a link) gave:
/// a regular file, or why not.
pub fn regular(
    opened: io::Result<File>,
    symlinks: Symlinks,
) -> Result<(File, Metadata), OpenError> {
    let file = match opened {
        Ok(f) => f,
        Err(e) if symlinks == Symlinks::Refuse && e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(OpenError::NotRegular("a symlink"));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(OpenError::NotRegular("a socket"));
        }
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else if !ft.is_file() {
        "an unknown file type"
    } else {
        return Ok((file, meta));
    };
    Err(OpenError::NotRegular(kind))
}

/// Opens a file a script names (following symlinks), `None` when nothing is there; the error is a
/// message naming the path.
pub fn open_named(path: &str) -> std::result::Result<Option<File>, String> {
    if path.contains('\0') {
        return Err(format!("the path {path:?} contains a NUL byte"));
    }
    match open_regular(Path::new(path), Symlinks::Follow) {
        Ok((file, _)) => Ok(Some(file)),
        Err(OpenError::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(OpenError::Io(e)) => Err(format!("cannot open {path}: {e}")),
        Err(OpenError::NotRegular(_)) => Err(format!(
            "{path} is not a regular file; give it the path of a file"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn a_new_write_never_replaces_and_a_durable_one_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_new_durably(&path, b"one").unwrap();
        let err = write_new_durably(&path, b"two").unwrap_err();
        assert_eq!(
            err.downcast_ref::<io::Error>().map(io::Error::kind),
            Some(io::ErrorKind::AlreadyExists),
            "{err:#}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        write_durably(&path, b"three").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn exchange_swaps_and_rename_noreplace_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "A").unwrap();
        std::fs::write(&b, "B").unwrap();
        exchange(&a, &b).unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "B");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "A");
        assert!(exchange(&a, &dir.path().join("missing")).is_err());
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        rename_noreplace(&a, &dir.path().join("c")).unwrap();
        assert!(!a.exists() && dir.path().join("c").exists());
    }

    #[test]
    fn only_regular_files_open_and_symlinks_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let fifo = dir.path().join("p");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let kind = |p: &Path, s| match open_regular(p, s) {
            Ok(_) => "regular".to_string(),
            Err(e) => e.to_string(),
        };
        assert_eq!(kind(&file, Symlinks::Refuse), "regular");
        assert_eq!(
            kind(&link, Symlinks::Refuse),
            "a symlink is not a regular file"
        );
        assert_eq!(kind(&link, Symlinks::Follow), "regular");
        assert_eq!(
            kind(&fifo, Symlinks::Follow),
            "a FIFO is not a regular file"
        );
        assert_eq!(
            kind(dir.path(), Symlinks::Follow),
            "a directory is not a regular file"
        );
        assert_eq!(
            kind(Path::new("/dev/zero"), Symlinks::Follow),
            "a device is not a regular file"
        );
        assert!(
            open_named(dir.path().join("missing").to_str().unwrap())
                .unwrap()
                .is_none()
        );
        assert_eq!(
            open_named("/dev/zero").unwrap_err(),
            "/dev/zero is not a regular file; give it the path of a file"
        );
    }
}
