//! Owns releases on disk: switching a new build into the live path by an atomic exchange and keeping the
//! ones it replaces (here), the files of kept releases by identity and putting one back (`kept`), and the
//! record of every kept release of an install, its state and the commits that were rolled back
//! (`store`), and putting a kept release back (`rollback`). It never builds, restarts or checks
//! anything: scripts decide that.

mod kept;
mod rollback;
mod store;

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::fs::{OwnDir, exchange, sync_dir};

pub use kept::{Files, Identity, Part, Parts, Tracker, kept_siblings, locate, put_back};
pub use rollback::{Refused, RollbackPlan, ask, rollback_spec, rolled_back_to};
pub use store::{
    Bad, Ended, Recording, Release, STORE_VERSION, State, Store, install_of, install_of_target,
    installs, prune, record_release,
};

/// The listings (`Store::listing`) of every install with releases, or of `target`'s install only.
pub fn listings(
    dir: &Path,
    root: &Path,
    target: Option<&str>,
    keep: usize,
) -> std::result::Result<Vec<serde_json::Value>, Refused> {
    let installs = match target {
        Some(t) => vec![install_of(&rollback_spec(t)?)],
        None => installs(dir),
    };
    installs
        .iter()
        .map(|install| {
            let store =
                Store::load(dir, install).map_err(|e| Refused::Unreadable(format!("{e:#}")))?;
            Ok(store.listing(&Parts::of_install(root, install), keep))
        })
        .collect()
}

/// Kept positions beyond this are removed by a switch whatever else is kept: a bound on disk use when
/// nothing prunes (a script that switches and never records).
const MAX_KEPT: usize = 64;

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

pub(crate) fn sibling(live: &Path, suffix: &str) -> PathBuf {
    let mut name = live.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    live.with_file_name(name)
}

pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
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
pub(crate) struct Note {
    /// `switch`, `rollback` or `put_back`.
    pub op: String,
    pub live: PathBuf,
    /// Where the new release came from (a switch, a put back): after the exchange it holds the outgoing one.
    pub new: Option<PathBuf>,
    /// The identity (dev, inode) of the release being switched in (switch, put back) or rolled back
    /// (rollback).
    pub incoming: (u64, u64),
    /// The identity of the release that was live before a switch or a put back.
    pub outgoing: Option<(u64, u64)>,
    /// Its birth time, where known (a put back finds it by identity).
    #[serde(default)]
    pub outgoing_born_ns: Option<u64>,
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// `.t8k-engine/releases` and `.t8k-engine/releases/pending` below the inbox are the engine's own.
pub(crate) const RELEASES_OWN: usize = 2;
pub(crate) const PENDING_OWN: usize = 3;

pub(crate) fn note_name(live: &Path) -> String {
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
        "put_back" => Ok(kept::restore(note)?.then(|| {
            format!(
                "{}: the engine died before the release it put back was verified; the one that was live before is back",
                live.display()
            )
        })),
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
/// `live.prev.2`...). With `keep`, the ones shifted beyond `keep` are deleted; without, nothing is (the
/// engine prunes an install's parts by its records, [`prune`]) up to a bound of 64. Returns the path of
/// the previous release, if any. With `pending`, the switch is noted there until the job ends (see
/// [`pending_dir`]).
pub fn switch_in(
    new: &Path,
    live: &Path,
    keep: Option<usize>,
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
    // Make room: drop what would shift past the bound, shift the others up by one.
    let bound = keep.unwrap_or(MAX_KEPT).clamp(1, MAX_KEPT);
    for n in (1..=MAX_KEPT + 1).rev() {
        let from = previous(live, n);
        if std::fs::symlink_metadata(&from).is_err() {
            continue;
        }
        if n >= bound {
            remove_any(&from).with_context(|| format!("cannot remove {}", from.display()))?;
        } else {
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
            outgoing_born_ns: None,
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

/// `switch_in` as a job's script calls it: a part of the job's install is kept by record (pruned after the
/// job by [`prune`]), any other path by count (`keep`, else `default_keep` previous ones); what `live` was
/// before the job first changed it is noted in `tracker`.
pub fn switch_in_for_job(
    new: &Path,
    live: &Path,
    keep: Option<usize>,
    default_keep: usize,
    pending: Option<&Path>,
    tracker: &Tracker,
) -> Result<Option<PathBuf>> {
    let keep = match keep {
        Some(k) => Some(k),
        None if tracker.parts().is_some_and(|p| p.part_of(live).is_some()) => None,
        None => Some(default_keep),
    };
    tracker.note_outgoing(live, Identity::of(live));
    switch_in(new, live, keep, pending)
}

/// Puts the files of release `id` of `install` back live, part by part (see [`put_back`]); returns
/// which parts changed.
pub fn put_back_release(
    dir: &Path,
    install: &str,
    parts: &Parts,
    id: u64,
    pending: Option<&Path>,
    tracker: &Tracker,
) -> Result<Switched> {
    let store = Store::load(dir, install)?;
    let release = store.get(id).with_context(|| {
        format!(
            "release {id} of {install} is not kept (`t8k-engine releases {install}` lists them)"
        )
    })?;
    let files = release.files.with_context(|| {
        format!(
            "release {id} of {install} was recorded by an older t8k-engine, which did not keep track of its files"
        )
    })?;
    let mut changed = Switched::default();
    for part in Part::ALL {
        if let Some(ident) = files.get(part) {
            let did = put_back(parts.path(part), &ident, pending, tracker).with_context(|| {
                format!("cannot put back the {} of release {id}", part.as_str())
            })?;
            match part {
                Part::Backend => changed.backend = did,
                Part::Frontend => changed.frontend = did,
            }
        }
    }
    Ok(changed)
}

/// Which parts a put back changed (those that were live already did not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Switched {
    /// The backend binary.
    pub backend: bool,
    /// The frontend's `dist/`.
    pub frontend: bool,
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
            outgoing_born_ns: None,
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
            let prev = switch_in(&new, &live, Some(2), None).unwrap();
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
        switch_in(&new, &live, Some(1), None).unwrap();
        assert_eq!(read(&live.join("client/index.html")), "new");
        assert_eq!(read(&previous(&live, 1).join("client/index.html")), "old");
        assert!(
            switch_in(&new, &live, Some(1), None)
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir(elsewhere.path().join("dist.new")).unwrap();
        assert!(
            switch_in(&elsewhere.path().join("dist.new"), &live, Some(1), None)
                .unwrap_err()
                .to_string()
                .contains("next to")
        );
    }
}
