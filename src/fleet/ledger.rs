//! Owns the bridge's local record of what it handed to the engine: its own directory
//! (`state/.t8k-engine/fleet`, reached only through `fs::OwnDir`), the one-bridge lock, the ledger of job
//! ids already dropped (so each job gets exactly one trigger), its rebuild from the inbox, `work/`,
//! `failed/` and the journal after a crash, the last-chance record of a job on its final delivery, and the
//! durable writes of triggers into the inbox. It never claims, runs or removes a trigger, and never follows
//! a link in the engine's directories.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::names::job_id_of;
use crate::fs::{OwnDir, Symlinks};
use crate::layout::Layout;

/// Ids kept in the ledger: far more than can be waiting for redelivery, since a job leaves the stream once
/// acknowledged and the ledger is written before the acknowledgement.
const KEEP: usize = 20_000;

/// The ledger's file in the bridge's directory.
const LEDGER: &str = "delivered";

/// The bridge's directory under the engine's (`state/.t8k-engine/fleet`).
pub fn dir(layout: &Layout) -> PathBuf {
    layout.engine_dir.join("fleet")
}

/// The bridge's directory, checked and open: `.t8k-engine/fleet` below the inbox, both the engine's own.
pub fn open_dir(layout: &Layout) -> Result<OwnDir> {
    OwnDir::open(&dir(layout), 2)
}

/// What a bridge holds while it runs: its directory, the one-bridge lock and the ledger. Opening it checks
/// every engine directory the bridge writes or reads (`.t8k-engine/fleet`, `failed/`, `work/`), so that a
/// link or a directory of another user is refused before anything is pulled.
pub fn open_local(layout: &Layout) -> Result<(Arc<OwnDir>, BridgeLock, Ledger)> {
    let dir = Arc::new(open_dir(layout)?);
    let lock = BridgeLock::take(&dir)?;
    crate::queue::failed_dir(layout)?;
    OwnDir::open_to_read(&layout.work, 2)?;
    let ledger = Ledger::open(dir.clone())?;
    Ok((dir, lock, ledger))
}

/// Held while a bridge runs: a second bridge on one state directory would hand out jobs twice as fast but
/// share one ledger.
pub struct BridgeLock(#[allow(dead_code)] File);

impl BridgeLock {
    /// Takes the lock or says who holds it.
    pub fn take(dir: &OwnDir) -> Result<BridgeLock> {
        let file = dir.append("bridge.lock")?;
        match file.try_lock() {
            Ok(()) => Ok(BridgeLock(file)),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another `t8k-engine fleet` bridge runs on {}: stop it first (one bridge per host)",
                dir.path().display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", dir.path().display()))
            }
        }
    }
}

/// The ids of jobs whose trigger is already in the engine's hands.
pub struct Ledger {
    dir: Arc<OwnDir>,
    file: File,
    ids: HashSet<ulid::Ulid>,
    order: VecDeque<ulid::Ulid>,
    keep: usize,
}

impl Ledger {
    /// Opens the ledger in the bridge's directory; a line torn by a crash is ignored (its job is found again
    /// by `reconcile`).
    pub fn open(dir: Arc<OwnDir>) -> Result<Ledger> {
        // Two compactions' worth of lines at most (an id and a short note each).
        let bytes = dir.read(LEDGER, 256 << 20)?.unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let mut ledger = Ledger {
            file: dir.append(LEDGER)?,
            dir,
            ids: HashSet::new(),
            order: VecDeque::new(),
            keep: KEEP,
        };
        for line in text.lines() {
            if let Some(id) = line.split(' ').next().and_then(super::names::parse_job_id) {
                ledger.remember(id);
            }
        }
        Ok(ledger)
    }

    fn remember(&mut self, id: ulid::Ulid) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        true
    }

    /// Whether the job's trigger was already dropped.
    pub fn contains(&self, id: &ulid::Ulid) -> bool {
        self.ids.contains(id)
    }

    /// How many ids it holds.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Records a dropped job durably, before its acknowledgement.
    pub fn record(&mut self, id: ulid::Ulid, what: &str) -> Result<()> {
        if !self.remember(id) {
            return Ok(());
        }
        // A line torn by a crash leaves at most this id unread; `reconcile` finds its trigger again.
        let line = format!("{id} {what}\n");
        (|| -> io::Result<()> {
            crate::fault_point!("fleet.ledger");
            self.file.write_all(line.as_bytes())?;
            self.file.sync_data()
        })()
        .with_context(|| format!("cannot append to {}", self.dir.join(LEDGER).display()))?;
        if self.order.len() > 2 * self.keep {
            self.compact()?;
        }
        Ok(())
    }

    fn compact(&mut self) -> Result<()> {
        while self.order.len() > self.keep {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        let text: String = self.order.iter().map(|id| format!("{id}\n")).collect();
        self.dir.write(LEDGER, text.as_bytes(), true)?;
        self.file = self.dir.append(LEDGER)?;
        Ok(())
    }

    /// Adds every fleet job the engine already has: triggers in the inbox, in `work/` and in `failed/`, and
    /// those the journal says started or were superseded. Run before any job is pulled, so that a crash
    /// between a drop and its ledger line cannot make a redelivered job run twice. Returns how many ids
    /// were missing. `work/` and `failed/` are read without following a link.
    pub fn reconcile(&mut self, layout: &Layout) -> Result<usize> {
        let mut names = Vec::new();
        match std::fs::read_dir(&layout.state) {
            // The inbox is the operator's: a link to it is followed, as the engine follows it.
            Ok(entries) => names.extend(entries.flatten().map(|e| e.file_name())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot list {}", layout.state.display()));
            }
        }
        for (own, depth) in [(&layout.work, 2), (&layout.failed, 1)] {
            if let Some(dir) = OwnDir::open_to_read(own, depth)? {
                names.extend(dir.entries()?);
            }
        }
        let mut found: Vec<(ulid::Ulid, &str)> = names
            .iter()
            .filter_map(|n| n.to_str().and_then(job_id_of))
            .map(|id| (id, "file"))
            .collect();
        for event in crate::history::Journal::open(layout).read() {
            let trigger = match &event {
                crate::history::Event::JobStarted { trigger, .. } => trigger,
                crate::history::Event::Superseded { trigger, .. } => trigger,
                _ => continue,
            };
            if let Some(id) = job_id_of(trigger) {
                found.push((id, "journal"));
            }
        }
        let mut added = 0;
        for (id, source) in found {
            if !self.contains(&id) {
                self.record(id, &format!("reconciled from {source}"))?;
                added += 1;
            }
        }
        Ok(added)
    }
}

/// What became of a trigger written into the inbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Dropped {
    /// It is there now.
    Written,
    /// The same trigger (a regular file with the same bytes) was already there.
    AlreadyThere,
    /// Something else holds its name (a link, a FIFO, another file); nothing was written. Says what.
    Taken(String),
}

/// Writes a new trigger into the inbox durably without replacing anything: a temporary dot-file created
/// without following a link, fsync, rename without replace, directory fsync. Whatever already has the name is
/// looked at without following it.
pub fn drop_trigger(inbox: &Path, name: &str, bytes: &[u8]) -> Result<Dropped> {
    let path = inbox.join(name);
    let written = (|| -> Result<()> {
        (|| -> io::Result<()> {
            crate::fault_point!("fleet.drop");
            Ok(())
        })()
        .with_context(|| format!("cannot write {}", path.display()))?;
        crate::fs::write_new_durably(&path, bytes)
    })();
    let Err(e) = written else {
        return Ok(Dropped::Written);
    };
    let exists = e
        .downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::AlreadyExists);
    if !exists {
        return Err(e);
    }
    Ok(match crate::fs::open_regular(&path, Symlinks::Refuse) {
        Ok((mut file, meta)) if meta.len() == bytes.len() as u64 && meta.nlink() == 1 => {
            let mut there = Vec::new();
            let same = file.read_to_end(&mut there).is_ok() && there == bytes;
            if same {
                Dropped::AlreadyThere
            } else {
                Dropped::Taken("a file with other content".into())
            }
        }
        Ok((_, meta)) if meta.nlink() > 1 => {
            Dropped::Taken(format!("a hard link ({} names)", meta.nlink()))
        }
        Ok(_) => Dropped::Taken("a file with other content".into()),
        Err(crate::fs::OpenError::NotRegular(kind)) => match std::fs::read_link(&path) {
            Ok(target) => Dropped::Taken(format!("a symlink to {}", target.display())),
            Err(_) => Dropped::Taken(kind.to_string()),
        },
        Err(crate::fs::OpenError::Io(e)) => {
            Dropped::Taken(format!("an entry that cannot be read ({e})"))
        }
    })
}

/// Removes temporary files a crashed bridge left in the inbox: `.<fleet trigger name>.<pid>.tmp`, a name only
/// the bridge writes.
pub fn remove_torn_drops(inbox: &Path) {
    let Ok(entries) = std::fs::read_dir(inbox) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let torn = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.rsplit_once('.'))
            .is_some_and(|(trigger, pid)| {
                pid.bytes().all(|b| b.is_ascii_digit()) && job_id_of(trigger).is_some()
            });
        if torn {
            // Unlinking a name never follows it.
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A job on its final delivery, kept on disk until it is dropped or set aside: if the bridge dies on it
/// once more, the server will not deliver it again, so the next bridge finishes it from this record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastChance {
    /// The job id.
    pub id: String,
    /// Its stream sequence.
    pub seq: u64,
    /// The inbox name it gets.
    pub name: String,
    /// The subject it was published on.
    pub subject: String,
    /// Its body, a trigger line.
    pub body: String,
    /// Its delivery count.
    pub delivered: i64,
    /// The subject that acknowledges it.
    pub reply: String,
}

/// The last-chance record's file in the bridge's directory.
const LAST_CHANCE: &str = "last-chance.json";

impl LastChance {
    /// Keeps the record durably.
    pub fn save(&self, dir: &OwnDir) -> Result<()> {
        dir.write(LAST_CHANCE, serde_json::to_string(self)?.as_bytes(), true)
    }

    /// The record a bridge left, if any.
    pub fn load(dir: &OwnDir) -> Result<Option<LastChance>> {
        let bytes = dir
            .read(LAST_CHANCE, 1 << 20)
            .context("cannot read the last-chance record")?;
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Forgets the record once its job is dropped or set aside and acknowledged.
    pub fn clear(dir: &OwnDir) -> Result<()> {
        match dir.remove(LAST_CHANCE) {
            Ok(()) => dir.sync(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("cannot remove the last-chance record"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(root: &Path) -> Layout {
        crate::layout::of_root(root)
    }

    fn own(dir: &Path) -> Arc<OwnDir> {
        Arc::new(OwnDir::open(&dir.join("fleet"), 1).unwrap())
    }

    #[test]
    fn the_ledger_survives_reopening_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (ulid::Ulid::new(), ulid::Ulid::new());
        let mut l = Ledger::open(own(dir.path())).unwrap();
        l.record(a, "1").unwrap();
        l.record(a, "1").unwrap();
        let mut f = File::options()
            .append(true)
            .open(dir.path().join("fleet/delivered"))
            .unwrap();
        f.write_all(&b.to_string().as_bytes()[..10]).unwrap();
        let l = Ledger::open(own(dir.path())).unwrap();
        assert!(l.contains(&a) && !l.contains(&b));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn compaction_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(own(dir.path())).unwrap();
        l.keep = 10;
        let ids: Vec<ulid::Ulid> = (0..21).map(|_| ulid::Ulid::new()).collect();
        for id in &ids {
            l.record(*id, "").unwrap();
        }
        assert_eq!(l.len(), 10);
        let l = Ledger::open(own(dir.path())).unwrap();
        assert_eq!(l.len(), 10);
        assert!(l.contains(ids.last().unwrap()) && !l.contains(&ids[0]));
    }

    #[test]
    fn a_ledger_or_record_that_is_a_link_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep\n").unwrap();
        let fleet = own(dir.path());
        std::os::unix::fs::symlink(&victim, dir.path().join("fleet/delivered")).unwrap();
        let err = format!("{:#}", Ledger::open(fleet.clone()).err().unwrap());
        assert!(err.contains("it is a symlink"), "{err}");
        std::os::unix::fs::symlink(&victim, dir.path().join("fleet/last-chance.json")).unwrap();
        assert!(LastChance::load(&fleet).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    }

    #[test]
    fn reconcile_finds_triggers_in_every_place_and_in_the_journal() {
        let root = tempfile::tempdir().unwrap();
        let l = layout(root.path());
        for d in [&l.state, &l.work, &l.failed] {
            std::fs::create_dir_all(d).unwrap();
        }
        let ids: Vec<ulid::Ulid> = (0..5).map(|_| ulid::Ulid::new()).collect();
        let name = |i: usize| super::super::names::trigger_name(1, i as u64, &ids[i]);
        std::fs::write(l.state.join(name(0)), "x").unwrap();
        std::fs::write(l.work.join(name(1)), "x").unwrap();
        std::fs::write(l.failed.join(format!("{}.1", name(2))), "x").unwrap();
        let journal = crate::history::Journal::open(&l);
        journal
            .append(&crate::history::Event::Superseded {
                trigger: name(3),
                by: "build-9.csv".into(),
                at: "2026-01-01T00:00:00Z".into(),
            })
            .unwrap();
        std::fs::write(l.state.join("build-17.csv"), "local").unwrap();
        let (_dir, _lock, mut ledger) = open_local(&l).unwrap();
        assert_eq!(ledger.reconcile(&l).unwrap(), 4);
        assert!((0..4).all(|i| ledger.contains(&ids[i])));
        assert!(!ledger.contains(&ids[4]));
        assert_eq!(ledger.reconcile(&l).unwrap(), 0);
        assert!(
            open_local(&l).is_err(),
            "a second bridge on the same state directory is refused"
        );
    }

    #[test]
    fn a_drop_never_replaces_nor_follows_what_has_its_name() {
        let root = tempfile::tempdir().unwrap();
        let l = layout(root.path());
        std::fs::create_dir_all(&l.state).unwrap();
        let body = b"type=main,command=build\n";
        assert_eq!(
            drop_trigger(&l.state, "build-1.csv", body).unwrap(),
            Dropped::Written
        );
        assert_eq!(
            drop_trigger(&l.state, "build-1.csv", body).unwrap(),
            Dropped::AlreadyThere
        );
        assert_eq!(
            drop_trigger(&l.state, "build-1.csv", b"other\n").unwrap(),
            Dropped::Taken("a file with other content".into())
        );
        assert_eq!(std::fs::read(l.state.join("build-1.csv")).unwrap(), body);
        let victim = root.path().join("victim");
        std::fs::write(&victim, "keep\n").unwrap();
        std::os::unix::fs::symlink(&victim, l.state.join("build-2.csv")).unwrap();
        assert_eq!(
            drop_trigger(&l.state, "build-2.csv", body).unwrap(),
            Dropped::Taken(format!("a symlink to {}", victim.display()))
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
        let names: Vec<_> = std::fs::read_dir(&l.state).unwrap().flatten().collect();
        assert_eq!(names.len(), 2, "no temporary file is left");
    }

    #[test]
    fn only_the_bridges_own_torn_drops_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let id = ulid::Ulid::new();
        let fleet = super::super::names::trigger_name(1, 2, &id);
        let keep = [
            ".build-1-01ARZ3NDEKTSV4RRFFQ69G5FAV.csv.12.tmp".to_string(),
            format!(".{fleet}.x.tmp"),
            fleet.clone(),
        ];
        for n in keep.iter().chain([&format!(".{fleet}.4242.tmp")]) {
            std::fs::write(root.path().join(n), "x").unwrap();
        }
        remove_torn_drops(root.path());
        let mut left: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = keep.to_vec();
        want.sort();
        assert_eq!(left, want);
    }
}
