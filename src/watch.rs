//! Owns noticing that the inbox may have changed: a non-recursive notify watch whose events are only hints,
//! and the inbox's identity (device, inode) to detect a lost watch; it never reads or parses triggers.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

/// What the watcher reports; every hint means "scan the directory", the sorted scan is the truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// Something in the inbox changed.
    Changed,
    /// Events were lost (queue overflow): everything must be rescanned.
    Rescan,
    /// The inbox itself was removed or moved: the watch is dead.
    Lost,
}

/// A watch on the inbox.
pub struct InboxWatch {
    _watcher: RecommendedWatcher,
    dir: PathBuf,
    identity: Identity,
}

impl InboxWatch {
    /// Arms a non-recursive watch on `dir`, delivering hints to `deliver` from notify's thread. Removing
    /// `dir` or any of `vital` (directories inside it) is reported as `Lost`: while something holds a
    /// directory inside the inbox open, the kernel delays the inbox's own deletion event.
    pub fn arm(
        dir: &Path,
        vital: &[PathBuf],
        deliver: impl Fn(Hint) + Send + 'static,
    ) -> Result<InboxWatch> {
        let identity = identity(dir)
            .with_context(|| format!("cannot watch {}: it does not exist", dir.display()))?;
        let mut lost_if_removed = vital.to_vec();
        lost_if_removed.push(dir.to_path_buf());
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let hint = match res {
                // An overflow arrives as a rescan flag with no paths, so the flag is checked first.
                Ok(event) if event.need_rescan() => Hint::Rescan,
                Ok(event)
                    if matches!(event.kind, EventKind::Remove(_))
                        && event.paths.iter().any(|p| lost_if_removed.contains(p)) =>
                {
                    Hint::Lost
                }
                // A writer closing its file is the signal that matters; every other access, including
                // the engine's own scans opening the directory, would only cause another scan.
                Ok(event)
                    if matches!(
                        event.kind,
                        EventKind::Access(AccessKind::Close(AccessMode::Write))
                    ) =>
                {
                    Hint::Changed
                }
                Ok(event) if matches!(event.kind, EventKind::Access(_)) => return,
                Ok(_) => Hint::Changed,
                Err(_) => Hint::Rescan,
            };
            deliver(hint);
        })
        .context("cannot create an inotify watcher (check fs.inotify.max_user_instances)")?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| {
                format!(
                    "cannot watch {} (check fs.inotify.max_user_watches)",
                    dir.display()
                )
            })?;
        Ok(InboxWatch {
            _watcher: watcher,
            dir: dir.to_path_buf(),
            identity,
        })
    }

    /// Whether the watched directory is still the one at the inbox path.
    pub fn still_valid(&self) -> bool {
        identity(&self.dir).is_ok_and(|id| id == self.identity)
    }
}

/// Device, inode and birth time: filesystems reuse a freed inode number at once, so a recreated inbox can
/// have the old (device, inode) pair.
type Identity = (u64, u64, Option<std::time::SystemTime>);

fn identity(dir: &Path) -> std::io::Result<Identity> {
    let meta = std::fs::metadata(dir)?;
    Ok((meta.dev(), meta.ino(), meta.created().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn creation_and_rename_in_are_hinted_and_removal_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("state");
        std::fs::create_dir(&inbox).unwrap();
        let (tx, rx) = mpsc::channel();
        std::fs::create_dir(inbox.join(".engine")).unwrap();
        let watch = InboxWatch::arm(&inbox, &[inbox.join(".engine")], move |h| {
            let _ = tx.send(h);
        })
        .unwrap();
        std::fs::write(dir.path().join("elsewhere"), "x\n").unwrap();
        std::fs::rename(dir.path().join("elsewhere"), inbox.join("build-1.csv")).unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            Hint::Changed,
            "rename-into is seen"
        );
        assert!(watch.still_valid());
        for _ in 0..3 {
            std::fs::read_dir(&inbox).unwrap().for_each(drop);
        }
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "listing the inbox is not a change"
        );
        std::fs::remove_dir_all(&inbox).unwrap();
        let mut hints = Vec::new();
        while let Ok(h) = rx.recv_timeout(Duration::from_secs(5)) {
            hints.push(h);
            if h == Hint::Lost {
                break;
            }
        }
        assert_eq!(
            hints.last(),
            Some(&Hint::Lost),
            "removing the inbox is reported: {hints:?}"
        );
        std::fs::create_dir(&inbox).unwrap();
        assert!(
            !watch.still_valid(),
            "a recreated inbox is a different directory"
        );
    }
}
