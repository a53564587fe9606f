//! Owns the files of kept releases: which file or directory beside a live path belongs to which release
//! (by its identity on disk, which survives the renames and exchanges that keep it), putting one of them
//! back live, and removing the ones no kept release needs. It never decides which releases are kept.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{Note, PENDING_OWN, note_name, previous, remove_any};
use crate::fs::{OwnDir, exchange, sync_dir};
use crate::layout::Target;

/// What a release's file is on disk: device, inode and (where the file system keeps one) birth time. A
/// rename or an exchange keeps all three, so a release is found again wherever its file was moved; the
/// birth time tells a file from a later one that reuses a removed file's inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// Birth time in nanoseconds since 1970, where the file system records one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub born_ns: Option<u64>,
}

impl Identity {
    /// The identity of what is at `path` (never following a link); `None` when nothing is there.
    pub fn of(path: &Path) -> Option<Identity> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        let born_ns = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64);
        Some(Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            born_ns,
        })
    }

    /// The same file: device and inode equal, and birth times too where both are known.
    pub fn same(&self, other: &Identity) -> bool {
        self.dev == other.dev
            && self.ino == other.ino
            && match (self.born_ns, other.born_ns) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// The (device, inode) pair the pending notes use.
    pub(super) fn pair(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

/// The two parts of a TractStack release, each switched on its own: the backend binary and the frontend's
/// `dist/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `bin/tractstack-go`.
    Backend,
    /// `src/my-tractstack/dist`.
    Frontend,
}

impl Part {
    /// Both parts, backend first (the order restarts go in).
    pub const ALL: [Part; 2] = [Part::Backend, Part::Frontend];

    /// `backend` or `frontend`, as records and scripts name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Backend => "backend",
            Part::Frontend => "frontend",
        }
    }
}

/// The live paths of an install's two parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// The live backend binary.
    pub backend: PathBuf,
    /// The live frontend build.
    pub frontend: PathBuf,
}

impl Parts {
    /// The parts of a job's target.
    pub fn of(target: &Target) -> Parts {
        Parts {
            backend: target.binary.clone(),
            frontend: target.frontend_src.join("dist"),
        }
    }

    /// The parts of an install (`main`, `dedicated/SITE`) under a TractStack root, where
    /// `Layout::target` puts a target's binary and frontend (a test holds the two equal).
    pub fn of_install(root: &Path, install: &str) -> Parts {
        let base = match install.strip_prefix("dedicated/") {
            Some(site) => root.join("sites").join(site),
            None => root.to_path_buf(),
        };
        Parts {
            backend: base.join("bin").join("tractstack-go"),
            frontend: base.join("src").join("my-tractstack").join("dist"),
        }
    }

    /// The live path of one part.
    pub fn path(&self, part: Part) -> &Path {
        match part {
            Part::Backend => &self.backend,
            Part::Frontend => &self.frontend,
        }
    }

    /// Which part `live` is the live path of, if any.
    pub fn part_of(&self, live: &Path) -> Option<Part> {
        Part::ALL.into_iter().find(|p| self.path(*p) == live)
    }

    /// The identities of what is live now.
    pub fn live_files(&self) -> Files {
        Files {
            backend: Identity::of(&self.backend),
            frontend: Identity::of(&self.frontend),
        }
    }
}

/// The files a release was made of, by identity; a part it has no file for is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Files {
    /// The backend binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Identity>,
    /// The frontend's `dist/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<Identity>,
}

impl Files {
    /// The identity of one part.
    pub fn get(&self, part: Part) -> Option<Identity> {
        match part {
            Part::Backend => self.backend,
            Part::Frontend => self.frontend,
        }
    }

    /// Sets the identity of one part.
    pub fn set(&mut self, part: Part, id: Option<Identity>) {
        match part {
            Part::Backend => self.backend = id,
            Part::Frontend => self.frontend = id,
        }
    }
}

/// What one job switched, so that the release it records knows the files of the one it replaced: the
/// identity each live path had before the job first changed it.
#[derive(Debug, Default)]
pub struct Tracker {
    outgoing: Mutex<Vec<(PathBuf, Identity)>>,
    parts: Mutex<Option<Parts>>,
}

impl Tracker {
    /// Tells the tracker the job's install, whose parts the engine keeps by record rather than by count.
    pub fn set_parts(&self, parts: Parts) {
        *self.parts.lock().unwrap() = Some(parts);
    }

    /// The job's parts, when the engine runs it.
    pub fn parts(&self) -> Option<Parts> {
        self.parts.lock().unwrap().clone()
    }

    /// Notes what `live` was before this job first changed it.
    pub fn note_outgoing(&self, live: &Path, before: Option<Identity>) {
        let Some(before) = before else { return };
        let mut out = self.outgoing.lock().unwrap();
        if !out.iter().any(|(p, _)| p == live) {
            out.push((live.to_path_buf(), before));
        }
    }

    /// What `live` was before this job changed it; `None` when the job left it alone.
    pub fn outgoing(&self, live: &Path) -> Option<Identity> {
        let out = self.outgoing.lock().unwrap();
        out.iter().find(|(p, _)| p == live).map(|(_, id)| *id)
    }
}

/// The kept siblings of `live`: `live.prev`, `live.prev.2`, ... that exist, in that order.
pub fn kept_siblings(live: &Path) -> Vec<PathBuf> {
    let Some(dir) = live.parent() else {
        return Vec::new();
    };
    let Some(name) = live.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let entry = e.file_name().into_string().ok()?;
                    let rest = entry.strip_prefix(name)?.strip_prefix(".prev")?;
                    let n = match rest {
                        "" => 1,
                        r => r.strip_prefix('.')?.parse().ok().filter(|n| *n >= 2)?,
                    };
                    Some((n, dir.join(&entry)))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// Where the file of identity `id` is now: `live` itself or one of its kept siblings.
pub fn locate(live: &Path, id: &Identity) -> Option<PathBuf> {
    std::iter::once(live.to_path_buf())
        .chain(kept_siblings(live))
        .find(|p| Identity::of(p).is_some_and(|have| have.same(id)))
}

/// Makes the file of identity `id` live at `live` by one atomic exchange; the file that was live takes its
/// place among the kept ones. Returns whether anything changed (false when it already was live). With
/// `pending`, the first change of `live` in a job is noted there, so that an engine dying before the job
/// ends puts back what was live when the job began (later changes in the same job keep that note).
pub fn put_back(
    live: &Path,
    id: &Identity,
    pending: Option<&Path>,
    tracker: &Tracker,
) -> Result<bool> {
    let now = Identity::of(live);
    if now.is_some_and(|n| n.same(id)) {
        return Ok(false);
    }
    let Some(kept) = locate(live, id) else {
        bail!(
            "the release's file for {} is no longer kept beside it (looked at {} and its .prev files)",
            live.display(),
            live.display()
        );
    };
    let Some(outgoing) = now else {
        bail!(
            "{} does not exist: there is no live release to exchange with",
            live.display()
        );
    };
    if let Some(p) = pending {
        let dir = OwnDir::open(p, PENDING_OWN)?;
        if !dir.exists(note_name(live)) {
            let note = Note {
                op: "put_back".into(),
                live: live.to_path_buf(),
                new: Some(kept.clone()),
                incoming: id.pair(),
                outgoing: Some(outgoing.pair()),
                outgoing_born_ns: outgoing.born_ns,
            };
            dir.write(
                &note_name(live),
                serde_json::to_string(&note)?.as_bytes(),
                true,
            )?;
        }
    }
    tracker.note_outgoing(live, Some(outgoing));
    crate::fault_point!("put_back.marked");
    exchange(&kept, live)
        .with_context(|| format!("cannot exchange {} with {}", kept.display(), live.display()))?;
    if let Some(dir) = live.parent() {
        sync_dir(dir)?;
    }
    crate::fault_point!("put_back.exchanged");
    Ok(true)
}

/// After a crash during a job that put an older release back: makes the file that was live before the job
/// (`outgoing`) live again, wherever the job's exchanges left it. Returns whether it did.
pub(super) fn restore(note: &Note) -> Result<bool> {
    let Some(pair) = note.outgoing else {
        return Ok(false);
    };
    let outgoing = Identity {
        dev: pair.0,
        ino: pair.1,
        born_ns: note.outgoing_born_ns,
    };
    let live = &note.live;
    if Identity::of(live).is_some_and(|n| n.same(&outgoing)) {
        return Ok(false);
    }
    let Some(kept) = locate(live, &outgoing).or_else(|| {
        let failed = super::sibling(live, ".failed");
        Identity::of(&failed)
            .is_some_and(|f| f.same(&outgoing))
            .then_some(failed)
    }) else {
        bail!(
            "{}: the release that was live before the engine died is no longer beside it; check what serves",
            live.display()
        );
    };
    exchange(&kept, live)
        .with_context(|| format!("cannot exchange {} with {}", kept.display(), live.display()))?;
    if let Some(dir) = live.parent() {
        sync_dir(dir)?;
    }
    Ok(true)
}

/// Removes the kept siblings of `live` whose file is in none of `wanted` (the files of the releases kept,
/// the live file and the previous release's). `live` itself is never touched. Returns what was removed.
pub fn remove_unwanted(live: &Path, wanted: &[Identity]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for path in kept_siblings(live) {
        let Some(id) = Identity::of(&path) else {
            continue;
        };
        if wanted.iter().any(|w| w.same(&id)) {
            continue;
        }
        remove_any(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        removed.push(path);
    }
    if !removed.is_empty()
        && let Some(dir) = live.parent()
    {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// The file kept as `live.prev` when a record of the previous release's files is missing (a release
/// recorded by an older engine): kept whatever the records say, so that the previous release survives.
pub fn first_previous(live: &Path) -> Option<Identity> {
    Identity::of(&previous(live, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installs_parts_are_where_the_layout_puts_its_targets() {
        let config = crate::config::Config::default();
        let layout = crate::layout::Layout::new(&config);
        for line in [
            "type=main,command=build",
            "type=multi,tenant=blue,command=build",
            "type=dedicated,site=acme,command=build",
        ] {
            let spec = crate::trigger::parse_line(line, 1).unwrap();
            let target = layout.target(&spec).unwrap();
            let install = super::super::install_of(&spec);
            assert_eq!(
                Parts::of(&target),
                Parts::of_install(&layout.root, &install),
                "{line}"
            );
        }
    }

    #[test]
    fn a_release_is_found_by_identity_wherever_it_was_moved() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app");
        std::fs::write(&live, "v1").unwrap();
        let v1 = Identity::of(&live).unwrap();
        std::fs::rename(&live, previous(&live, 3)).unwrap();
        std::fs::write(&live, "v2").unwrap();
        std::fs::write(dir.path().join("app.prevx"), "not kept").unwrap();
        assert_eq!(locate(&live, &v1), Some(previous(&live, 3)));
        assert_eq!(kept_siblings(&live), [previous(&live, 3)]);
        let tracker = Tracker::default();
        let v2 = Identity::of(&live).unwrap();
        assert!(put_back(&live, &v1, None, &tracker).unwrap());
        assert_eq!(std::fs::read_to_string(&live).unwrap(), "v1");
        assert_eq!(std::fs::read_to_string(previous(&live, 3)).unwrap(), "v2");
        assert_eq!(tracker.outgoing(&live), Some(v2));
        assert!(
            !put_back(&live, &v1, None, &tracker).unwrap(),
            "already live"
        );
        // v2 is wanted, nothing else beside it is: nothing removed; then v2 is not wanted.
        assert!(remove_unwanted(&live, &[v2]).unwrap().is_empty());
        assert_eq!(remove_unwanted(&live, &[v1]).unwrap(), [previous(&live, 3)]);
        assert!(live.exists() && dir.path().join("app.prevx").exists());
        let gone = put_back(&live, &v2, None, &tracker)
            .unwrap_err()
            .to_string();
        assert!(gone.contains("no longer kept"), "{gone}");
    }
}
