//! Owns switching releases on disk: moving a new build into the live path by an atomic exchange, keeping
//! previous ones for rollback, and the record of what was released; it never builds or restarts anything.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::fs::{OwnDir, exchange, sync_dir};

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

fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Where a job's switches and rollbacks are noted until the job ends: `releases_dir/pending/`. A note
/// still there when an engine starts means the engine died between switching a release in and the job's
/// end, so the release was never verified.
pub fn pending_dir(releases_dir: &Path) -> PathBuf {
    releases_dir.join("pending")
}

/// A note of a switch or rollback in progress, kept durably under the pending directory.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Note {
    /// `switch` or `rollback`.
    op: String,
    live: PathBuf,
    /// Where the new release came from (a switch): after the exchange it holds the outgoing one.
    new: Option<PathBuf>,
    /// The identity (dev, inode) of the release being switched in (switch) or rolled back (rollback).
    incoming: (u64, u64),
    /// The identity of the release that was live before a switch.
    outgoing: Option<(u64, u64)>,
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// `.t8k-engine/releases` and `.t8k-engine/releases/pending` below the inbox are the engine's own.
const RELEASES_OWN: usize = 2;
const PENDING_OWN: usize = 3;

fn note_name(live: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(live.as_os_str().as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.json")
}

fn write_note(pending: &Path, note: &Note) -> Result<()> {
    let text = serde_json::to_string(note)?;
    OwnDir::open(pending, PENDING_OWN)?.write(&note_name(&note.live), text.as_bytes(), true)
}

/// Forgets the notes of a job that ended: what it left live is what its script decided.
pub fn clear_pending(pending: &Path) -> Result<()> {
    let Some(dir) = OwnDir::open_to_read(pending, PENDING_OWN)? else {
        return Ok(());
    };
    for name in dir.entries()? {
        dir.remove(&name)
            .with_context(|| format!("cannot remove {}", dir.join(&name).display()))?;
    }
    dir.sync()
}

/// Puts back the previous release of every path an engine switched before it died mid-job, and finishes
/// rollbacks it had begun; returns one line per path for the log.
pub fn recover_pending(pending: &Path) -> Result<Vec<String>> {
    if OwnDir::open_to_read(pending, PENDING_OWN)?.is_none() {
        return Ok(Vec::new());
    }
    // Checked as the engine's own (owner and mode too) before anything in it is acted on.
    let dir = OwnDir::open(pending, PENDING_OWN)?;
    let mut done = Vec::new();
    for name in dir.entries()? {
        let path = dir.join(&name);
        let Some(name) = name.to_str().filter(|n| n.ends_with(".json")) else {
            // A note torn by a crash while it was written through its temporary name.
            let _ = dir.remove(&name);
            continue;
        };
        let bytes = dir.read(name, 1 << 20)?.unwrap_or_default();
        let note: Note = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a release note", path.display()))?;
        if let Some(line) = recover(&note)? {
            done.push(line);
        }
        dir.remove(name)
            .with_context(|| format!("cannot remove {}", path.display()))?;
    }
    dir.sync()?;
    Ok(done)
}

fn recover(note: &Note) -> Result<Option<String>> {
    let live = &note.live;
    let prev = previous(live, 1);
    match note.op.as_str() {
        "switch" => {
            if identity(live) != Some(note.incoming) {
                return Ok(None); // The exchange never happened: the previous release is still live.
            }
            if let (Some(outgoing), Some(staged)) = (note.outgoing, &note.new)
                && identity(&prev) != Some(outgoing)
                && identity(staged) == Some(outgoing)
            {
                // Died between the exchange and keeping the old release as `.prev`.
                std::fs::rename(staged, &prev).with_context(|| {
                    format!("cannot keep {} as {}", staged.display(), prev.display())
                })?;
            }
            roll_back_now(live)?;
            Ok(Some(format!(
                "{}: the engine died before the release switched in was verified; the previous release is back",
                live.display()
            )))
        }
        _ => {
            if identity(live) == Some(note.incoming) {
                roll_back_now(live)?; // Died before the exchange: do the rollback it had decided on.
            } else if identity(&prev) == Some(note.incoming) {
                finish_roll_back(live)?; // Died after the exchange: keep the failed release aside.
            }
            Ok(Some(format!(
                "{}: finished a rollback the engine had begun",
                live.display()
            )))
        }
    }
}

/// Moves `new` into `live` atomically; the release it replaces becomes `live.prev` (older ones shift to
/// `live.prev.2`... and beyond `keep` are deleted). Returns the path of the previous release, if any.
/// With `pending`, the switch is noted there until the job ends (see [`pending_dir`]).
pub fn switch_in(
    new: &Path,
    live: &Path,
    keep: usize,
    pending: Option<&Path>,
) -> Result<Option<PathBuf>> {
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
        // A first release: there is nothing to go back to, so nothing to note.
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
    sync_dir(dir)?;
    crate::fault_point!("release.rotated");
    if let Some(p) = pending {
        let note = Note {
            op: "switch".into(),
            live: live.to_path_buf(),
            new: Some(new.to_path_buf()),
            incoming: identity(new).context("the new release vanished")?,
            outgoing: identity(live),
        };
        write_note(p, &note)?;
    }
    crate::fault_point!("release.marked");
    exchange(new, live)
        .with_context(|| format!("cannot exchange {} with {}", new.display(), live.display()))?;
    crate::fault_point!("release.exchanged");
    // `new` now holds the release that was live.
    std::fs::rename(new, previous(live, 1)).with_context(|| {
        format!(
            "cannot keep the previous release as {}",
            previous(live, 1).display()
        )
    })?;
    sync_dir(dir)?;
    crate::fault_point!("release.kept");
    Ok(Some(previous(live, 1)))
}

/// Puts `live.prev` back into `live` atomically; the release that failed is kept as `live.failed`.
/// With `pending`, the rollback is noted there so that an engine dying halfway finishes it on start.
pub fn roll_back(live: &Path, pending: Option<&Path>) -> Result<PathBuf> {
    if let (Some(p), Some(failed)) = (pending, identity(live))
        && identity(&previous(live, 1)).is_some()
    {
        let note = Note {
            op: "rollback".into(),
            live: live.to_path_buf(),
            new: None,
            incoming: failed,
            outgoing: None,
        };
        write_note(p, &note)?;
        crate::fault_point!("rollback.marked");
    }
    roll_back_now(live)
}

fn roll_back_now(live: &Path) -> Result<PathBuf> {
    let prev = previous(live, 1);
    if std::fs::symlink_metadata(&prev).is_err() {
        bail!(
            "cannot roll back {}: there is no previous release ({} is missing)",
            live.display(),
            prev.display()
        );
    }
    if std::fs::symlink_metadata(live).is_ok() {
        exchange(&prev, live).with_context(|| {
            format!("cannot exchange {} with {}", prev.display(), live.display())
        })?;
        crate::fault_point!("rollback.exchanged");
        finish_roll_back(live)?;
    } else {
        std::fs::rename(&prev, live).with_context(|| {
            format!("cannot move {} back to {}", prev.display(), live.display())
        })?;
        shift_down(live)?;
    }
    Ok(live.to_path_buf())
}

/// After the exchange of a rollback: `live.prev` holds the failed release; keep it as `live.failed`.
fn finish_roll_back(live: &Path) -> Result<()> {
    let prev = previous(live, 1);
    let failed = sibling(live, ".failed");
    remove_any(&failed).with_context(|| format!("cannot remove {}", failed.display()))?;
    std::fs::rename(&prev, &failed)
        .with_context(|| format!("cannot keep the failed release as {}", failed.display()))?;
    crate::fault_point!("rollback.kept");
    shift_down(live)
}

/// Older releases move down, so that a second rollback reaches further back; a gap left by a crash
/// halfway through a shift closes too.
fn shift_down(live: &Path) -> Result<()> {
    let dir = live
        .parent()
        .context("the live path has no parent directory")?;
    let mut free = 1;
    for n in 1..=64 {
        let from = previous(live, n);
        if std::fs::symlink_metadata(&from).is_err() {
            continue;
        }
        if n != free {
            std::fs::rename(&from, previous(live, free))
                .with_context(|| format!("cannot move {} down", from.display()))?;
        }
        free += 1;
    }
    sync_dir(dir)
}

/// The record of the release live on one target, as JSON under the engine's directory.
pub fn record_path(releases_dir: &Path, target: &str) -> PathBuf {
    releases_dir.join(record_name(target))
}

fn record_name(target: &str) -> String {
    format!("{}.json", target.replace('/', "_"))
}

/// Reads a target's last release record; `None` when it never had one.
pub fn last(releases_dir: &Path, target: &str) -> Result<Option<serde_json::Value>> {
    let path = record_path(releases_dir, target);
    let Some(dir) = OwnDir::open_to_read(releases_dir, RELEASES_OWN)? else {
        return Ok(None);
    };
    match dir.read(&record_name(target), 64 << 20)? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("release record {} is not valid JSON", path.display())
        })?)),
        None => Ok(None),
    }
}

/// Writes a target's release record atomically and appends it to the target's release history.
pub fn record(releases_dir: &Path, target: &str, value: &serde_json::Value) -> Result<()> {
    let dir = OwnDir::open(releases_dir, RELEASES_OWN)?;
    let text = serde_json::to_string_pretty(value)?;
    dir.write(&record_name(target), format!("{text}\n").as_bytes(), true)?;
    let history = format!("{}.history.jsonl", target.replace('/', "_"));
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    use std::io::Write;
    let mut f = dir.append(&history)?;
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot append to {}", dir.join(&history).display()))?;
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
            let prev = switch_in(&new, &live, 2, None).unwrap();
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
        roll_back(&live, None).unwrap();
        assert_eq!(read(&live), "v3");
        assert_eq!(read(&dir.path().join("tractstack-go.failed")), "v4");
        assert_eq!(read(&previous(&live, 1)), "v2");
        roll_back(&live, None).unwrap();
        assert_eq!(read(&live), "v2");
        let err = roll_back(&live, None).unwrap_err().to_string();
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
        switch_in(&new, &live, 1, None).unwrap();
        assert_eq!(read(&live.join("client/index.html")), "new");
        assert_eq!(read(&previous(&live, 1).join("client/index.html")), "old");
        assert!(
            switch_in(&new, &live, 1, None)
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir(elsewhere.path().join("dist.new")).unwrap();
        assert!(
            switch_in(&elsewhere.path().join("dist.new"), &live, 1, None)
                .unwrap_err()
                .to_string()
                .contains("next to")
        );
    }

    #[test]
    fn records_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(".t8k-engine/releases");
        assert!(last(&dir, "dedicated/acme").unwrap().is_none());
        let v = serde_json::json!({"backend_commit": "abc"});
        record(&dir, "dedicated/acme", &v).unwrap();
        record(&dir, "dedicated/acme", &v).unwrap();
        assert_eq!(last(&dir, "dedicated/acme").unwrap().unwrap(), v);
        assert_eq!(
            std::fs::read_to_string(dir.join("dedicated_acme.history.jsonl"))
                .unwrap()
                .lines()
                .count(),
            2
        );
    }
}
