//! Owns reading a trigger file without trusting it: regular files only (never a symlink, FIFO, device or
//! socket), one name, within the size cap even when it grows while read; it never parses what it reads.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::fs::{self, OpenError, Symlinks};

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

/// Opens a trigger file safely: no symlink following, no blocking on FIFOs, regular files only, within
/// the size cap and with a single name.
pub fn open_trigger(path: &Path, max_bytes: u64) -> Result<File, ReadError> {
    let (file, meta) = fs::open_regular(path, Symlinks::Refuse).map_err(ReadError::from)?;
    checked(file, meta, max_bytes)
}

/// Checks a trigger file opened without following links or blocking (see [`open_trigger`]).
pub fn opened_trigger(opened: io::Result<File>, max_bytes: u64) -> Result<File, ReadError> {
    let (file, meta) = fs::regular(opened, Symlinks::Refuse).map_err(ReadError::from)?;
    checked(file, meta, max_bytes)
}

impl From<OpenError> for ReadError {
    fn from(e: OpenError) -> ReadError {
        match e {
            OpenError::NotRegular(kind) => ReadError::NotRegular(kind),
            OpenError::Io(e) => ReadError::Io(e),
        }
    }
}

/// A regular file is a trigger file when it is within the cap and has one name.
fn checked(file: File, meta: std::fs::Metadata, max_bytes: u64) -> Result<File, ReadError> {
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
pub fn read_capped(file: File, max_bytes: u64) -> Result<Vec<u8>, ReadError> {
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
