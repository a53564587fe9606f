//! Owns the file helpers: existence, size, digest, the tail of a log, subdirectories and `.env` files.
//! They only read, and read only regular files: a FIFO would block the job and a device never ends.

use rhai::{Array, Dynamic, Engine, Map};

use super::Res;

pub(super) fn register(engine: &mut Engine) {
    engine.register_fn("file_exists", |path: &str| {
        std::path::Path::new(path).is_file()
    });
    engine.register_fn("dir_exists", |path: &str| {
        std::path::Path::new(path).is_dir()
    });
    engine.register_fn("file_size", |path: &str| -> i64 {
        std::fs::metadata(path).map_or(0, |m| m.len() as i64)
    });
    engine.register_fn("file_digest", file_digest);
    engine.register_fn("read_from", read_from);
    engine.register_fn("list_dirs", list_dirs);
    engine.register_fn("dotenv", |path: &str| -> Map {
        crate::layout::read_dotenv(std::path::Path::new(path))
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    });
}

/// Opens a regular file for reading, `None` when it does not exist. Anything else is refused before
/// it is read: a FIFO would block the job forever and a device such as /dev/zero never ends.
fn open_regular(f: &str, path: &str) -> Res<Option<std::fs::File>> {
    crate::fs::open_named(path).map_err(|e| format!("{f}(): {e}").into())
}

/// SHA-256 of a regular file in hex, () when it does not exist; streamed, so that a large file is not
/// held in memory.
fn file_digest(path: &str) -> Res<Dynamic> {
    use sha2::Digest;
    let Some(mut f) = open_regular("file_digest", path)? else {
        return Ok(Dynamic::UNIT);
    };
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut f, &mut hasher)
        .map_err(|e| format!("file_digest(): cannot read {path}: {e}"))?;
    Ok(Dynamic::from(format!("{:x}", hasher.finalize())))
}

/// What a log file gained after `offset` (at most the last 64 KiB of it), for checks after a restart.
fn read_from(path: &str, offset: i64) -> Res<String> {
    use std::io::{Read, Seek, SeekFrom};
    const CAP: u64 = 64 * 1024;
    let Some(mut f) = open_regular("read_from", path)? else {
        return Ok(String::new());
    };
    let len = f.metadata().map_or(0, |m| m.len());
    // A log that shrank was rotated: everything in it is new.
    let from = if (offset as u64) > len {
        0
    } else {
        offset.max(0) as u64
    };
    let from = from.max(len.saturating_sub(CAP));
    f.seek(SeekFrom::Start(from))
        .map_err(|e| format!("read_from(): {path}: {e}"))?;
    let mut bytes = Vec::new();
    f.take(CAP)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("read_from(): {path}: {e}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The subdirectories of `dir`, sorted, without dot-directories.
fn list_dirs(dir: &str) -> Res<Array> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("list_dirs(): cannot list {dir}: {e}"))?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names.into_iter().map(Dynamic::from).collect())
}
