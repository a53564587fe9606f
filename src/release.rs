//! Owns switching releases on disk: moving a new build into the live path by an atomic exchange, keeping
//! previous ones for rollback, and the record of what was released; it never builds or restarts anything.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::queue::{sync_dir, write_durably};

/// `live.prev`, `live.prev.2`, ...: the n-th previous release of `live` (n from 1).
pub fn previous(live: &Path, n: usize) -> PathBuf {
    let mut name = live.file_name().unwrap_or_default().to_os_string();
    name.push(if n == 1 {
        ".prev".to_string()
    } else {
        format!(".prev.{n}")
    });
    live.with_file_name(name)
}

fn sibling(live: &Path, suffix: &str) -> PathBuf {
    let mut name = live.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    live.with_file_name(name)
}

/// Atomically swaps two paths (`renameat2(RENAME_EXCHANGE)`): neither is ever missing.
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (ac, bc) = (c(a)?, c(b)?);
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ac.as_ptr(),
            libc::AT_FDCWD,
            bc.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Moves `new` into `live` atomically; the release it replaces becomes `live.prev` (older ones shift to
/// `live.prev.2`... and beyond `keep` are deleted). Returns the path of the previous release, if any.
pub fn switch_in(new: &Path, live: &Path, keep: usize) -> Result<Option<PathBuf>> {
    if std::fs::symlink_metadata(new).is_err() {
        bail!(
            "cannot switch in {}: it does not exist (did the build write it?)",
            new.display()
        );
    }
    if new.parent() != live.parent() {
        bail!(
            "{} must be next to {} so that the switch is one rename on one filesystem",
            new.display(),
            live.display()
        );
    }
    let dir = live
        .parent()
        .context("the live path has no parent directory")?;
    if std::fs::symlink_metadata(live).is_err() {
        std::fs::rename(new, live)
            .with_context(|| format!("cannot move {} to {}", new.display(), live.display()))?;
        sync_dir(dir)?;
        return Ok(None);
    }
    // Make room: drop the oldest kept release, shift the others up by one.
    let keep = keep.max(1);
    remove_any(&previous(live, keep))
        .with_context(|| format!("cannot remove {}", previous(live, keep).display()))?;
    for n in (1..keep).rev() {
        let from = previous(live, n);
        if std::fs::symlink_metadata(&from).is_ok() {
            std::fs::rename(&from, previous(live, n + 1))
                .with_context(|| format!("cannot rotate {}", from.display()))?;
        }
    }
    exchange(new, live)
        .with_context(|| format!("cannot exchange {} with {}", new.display(), live.display()))?;
    // `new` now holds the release that was live.
    std::fs::rename(new, previous(live, 1)).with_context(|| {
        format!(
            "cannot keep the previous release as {}",
            previous(live, 1).display()
        )
    })?;
    sync_dir(dir)?;
    Ok(Some(previous(live, 1)))
}

/// Puts `live.prev` back into `live` atomically; the release that failed is kept as `live.failed`.
pub fn roll_back(live: &Path) -> Result<PathBuf> {
    let prev = previous(live, 1);
    if std::fs::symlink_metadata(&prev).is_err() {
        bail!(
            "cannot roll back {}: there is no previous release ({} is missing)",
            live.display(),
            prev.display()
        );
    }
    let dir = live
        .parent()
        .context("the live path has no parent directory")?;
    if std::fs::symlink_metadata(live).is_ok() {
        exchange(&prev, live).with_context(|| {
            format!("cannot exchange {} with {}", prev.display(), live.display())
        })?;
        let failed = sibling(live, ".failed");
        remove_any(&failed).with_context(|| format!("cannot remove {}", failed.display()))?;
        std::fs::rename(&prev, &failed)
            .with_context(|| format!("cannot keep the failed release as {}", failed.display()))?;
    } else {
        std::fs::rename(&prev, live).with_context(|| {
            format!("cannot move {} back to {}", prev.display(), live.display())
        })?;
    }
    // Older releases move down, so that a second rollback reaches further back.
    let mut n = 2;
    while std::fs::symlink_metadata(previous(live, n)).is_ok() {
        std::fs::rename(previous(live, n), previous(live, n - 1))?;
        n += 1;
    }
    sync_dir(dir)?;
    Ok(live.to_path_buf())
}

/// The record of the release live on one target, as JSON under the engine's directory.
pub fn record_path(releases_dir: &Path, target: &str) -> PathBuf {
    releases_dir.join(format!("{}.json", target.replace('/', "_")))
}

/// Reads a target's last release record; `None` when it never had one.
pub fn last(releases_dir: &Path, target: &str) -> Result<Option<serde_json::Value>> {
    let path = record_path(releases_dir, target);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("release record {} is not valid JSON", path.display())
        })?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes a target's release record atomically and appends it to the target's release history.
pub fn record(releases_dir: &Path, target: &str, value: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(releases_dir)
        .with_context(|| format!("cannot create {}", releases_dir.display()))?;
    let text = serde_json::to_string_pretty(value)?;
    write_durably(
        &record_path(releases_dir, target),
        format!("{text}\n").as_bytes(),
    )?;
    let history = releases_dir.join(format!("{}.history.jsonl", target.replace('/', "_")));
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&history)
        .with_context(|| format!("cannot append to {}", history.display()))?;
    f.write_all(line.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn switch_keeps_previous_releases_and_rollback_restores_them() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("tractstack-go");
        let new = dir.path().join("tractstack-go.new");
        for (i, v) in ["v1", "v2", "v3", "v4"].iter().enumerate() {
            std::fs::write(&new, v).unwrap();
            let prev = switch_in(&new, &live, 2).unwrap();
            assert_eq!(prev.is_some(), i > 0);
            assert_eq!(read(&live), *v);
            assert!(!new.exists());
        }
        assert_eq!(read(&previous(&live, 1)), "v3");
        assert_eq!(read(&previous(&live, 2)), "v2");
        assert!(
            !previous(&live, 3).exists(),
            "only `keep` previous releases are kept"
        );
        roll_back(&live).unwrap();
        assert_eq!(read(&live), "v3");
        assert_eq!(read(&dir.path().join("tractstack-go.failed")), "v4");
        assert_eq!(read(&previous(&live, 1)), "v2");
        roll_back(&live).unwrap();
        assert_eq!(read(&live), "v2");
        let err = roll_back(&live).unwrap_err().to_string();
        assert!(err.contains("no previous release"), "{err}");
    }

    #[test]
    fn directories_switch_too() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("dist");
        let new = dir.path().join("dist.new");
        std::fs::create_dir_all(live.join("client")).unwrap();
        std::fs::write(live.join("client/index.html"), "old").unwrap();
        std::fs::create_dir_all(new.join("client")).unwrap();
        std::fs::write(new.join("client/index.html"), "new").unwrap();
        switch_in(&new, &live, 1).unwrap();
        assert_eq!(read(&live.join("client/index.html")), "new");
        assert_eq!(read(&previous(&live, 1).join("client/index.html")), "old");
        assert!(
            switch_in(&new, &live, 1)
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir(elsewhere.path().join("dist.new")).unwrap();
        assert!(
            switch_in(&elsewhere.path().join("dist.new"), &live, 1)
                .unwrap_err()
                .to_string()
                .contains("next to")
        );
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(last(dir.path(), "dedicated/acme").unwrap().is_none());
        let v = serde_json::json!({"backend_commit": "abc"});
        record(dir.path(), "dedicated/acme", &v).unwrap();
        record(dir.path(), "dedicated/acme", &v).unwrap();
        assert_eq!(last(dir.path(), "dedicated/acme").unwrap().unwrap(), v);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("dedicated_acme.history.jsonl"))
                .unwrap()
                .lines()
                .count(),
            2
        );
    }
}
