//! Owns the bridge's local record of what it handed to the engine: the one-bridge lock, the ledger of job ids
//! already dropped (so each job gets exactly one trigger), its rebuild from the inbox, `work/`, `failed/` and
//! the journal after a crash, the last-chance record of a job on its final delivery, and the durable
//! writes into the inbox and `failed/`. It never claims, runs or removes a trigger.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::names::job_id_of;
use crate::fs::{rename_noreplace, sync_dir, write_durably};
use crate::layout::Layout;

/// Ids kept in the ledger: far more than can be waiting for redelivery, since a job leaves the stream once
/// acknowledged and the ledger is written before the acknowledgement.
const KEEP: usize = 20_000;

/// The bridge's directory under the engine's (`state/.t8k-engine/fleet`).
pub fn dir(layout: &Layout) -> PathBuf {
    layout.engine_dir.join("fleet")
}

/// Held while a bridge runs: a second bridge on one state directory would hand out jobs twice as fast but
/// share one ledger.
pub struct BridgeLock(#[allow(dead_code)] File);

impl BridgeLock {
    /// Takes the lock or says who holds it.
    pub fn take(dir: &Path) -> Result<BridgeLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("bridge.lock"))
            .with_context(|| format!("cannot open {}", dir.join("bridge.lock").display()))?;
        match file.try_lock() {
            Ok(()) => Ok(BridgeLock(file)),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another `t8k-engine fleet` bridge runs on {}: stop it first (one bridge per host)",
                dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", dir.display()))
            }
        }
    }
}

/// The ids of jobs whose trigger is already in the engine's hands.
pub struct Ledger {
    path: PathBuf,
    file: File,
    ids: HashSet<ulid::Ulid>,
    order: VecDeque<ulid::Ulid>,
    keep: usize,
}

impl Ledger {
    /// Opens the ledger in `dir`; a line torn by a crash is ignored (its job is found again by `reconcile`).
    pub fn open(dir: &Path) -> Result<Ledger> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("delivered");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut ledger = Ledger {
            file: Self::append_handle(&path)?,
            path,
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

    fn append_handle(path: &Path) -> Result<File> {
        File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))
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
        .with_context(|| format!("cannot append to {}", self.path.display()))?;
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
        write_durably(&self.path, text.as_bytes())?;
        self.file = Self::append_handle(&self.path)?;
        Ok(())
    }

    /// Adds every fleet job the engine already has: triggers in the inbox, in `work/` and in `failed/`, and
    /// those the journal says started or were superseded. Run before any job is pulled, so that a crash
    /// between a drop and its ledger line cannot make a redelivered job run twice. Returns how many ids
    /// were missing.
    pub fn reconcile(&mut self, layout: &Layout) -> Result<usize> {
        let mut found = Vec::new();
        for dir in [&layout.state, &layout.work, &layout.failed] {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
            };
            for entry in entries.flatten() {
                if let Some(id) = entry.file_name().to_str().and_then(job_id_of) {
                    found.push((id, "file"));
                }
            }
        }
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

/// Writes a new trigger into the inbox durably without replacing anything: temporary dot-file, fsync, rename
/// without replace, directory fsync. False when a file of that name is already there.
pub fn drop_trigger(inbox: &Path, name: &str, bytes: &[u8]) -> Result<bool> {
    let tmp = inbox.join(format!(".{name}.fleet-tmp"));
    let path = inbox.join(name);
    let written = (|| -> io::Result<()> {
        crate::fault_point!("fleet.drop");
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    let created = match rename_noreplace(&tmp, &path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&tmp);
            false
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot rename {} into place", tmp.display()));
        }
    };
    sync_dir(inbox)?;
    Ok(created)
}

/// Removes temporary files a crashed bridge left in the inbox.
pub fn remove_torn_drops(inbox: &Path) {
    let Ok(entries) = std::fs::read_dir(inbox) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".build-") && name.ends_with(".fleet-tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Sets a job aside in `failed` (the engine's `failed/`, or the outbox's) as the engine does a bad trigger:
/// the reason first (so a crash leaves a stray reason, never an unexplained trigger), then the job's bytes
/// under a free name. Returns that name.
pub fn set_aside(
    failed: &Path,
    name: &str,
    bytes: &[u8],
    summary: impl Fn(&str) -> String,
    details: &str,
) -> Result<String> {
    std::fs::create_dir_all(failed)
        .with_context(|| format!("cannot create {}", failed.display()))?;
    let taken = |n: &str| std::fs::symlink_metadata(failed.join(n)).is_ok();
    let aside = std::iter::once(name.to_string())
        .chain((1..).map(|i| format!("{name}.{i}")))
        .find(|n| !taken(n))
        .expect("an unused name exists");
    let text = format!("{}\n\n{}\n", summary(&aside), details.trim_end());
    let text = crate::redact::redact(&text);
    write_durably(&failed.join(format!("{aside}.reason")), text.as_bytes())?;
    let tmp = failed.join(format!(".{aside}.fleet-tmp"));
    let mut f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    rename_noreplace(&tmp, &failed.join(&aside))
        .with_context(|| format!("cannot move {} into place", tmp.display()))?;
    sync_dir(failed)?;
    Ok(aside)
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

impl LastChance {
    fn path(dir: &Path) -> PathBuf {
        dir.join("last-chance.json")
    }

    /// Keeps the record durably.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_durably(&Self::path(dir), serde_json::to_string(self)?.as_bytes())
    }

    /// The record a bridge left, if any.
    pub fn load(dir: &Path) -> Result<Option<LastChance>> {
        match std::fs::read(Self::path(dir)) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("cannot read the last-chance record"),
        }
    }

    /// Forgets the record once its job is dropped or set aside and acknowledged.
    pub fn clear(dir: &Path) -> Result<()> {
        match std::fs::remove_file(Self::path(dir)) {
            Ok(()) => sync_dir(dir),
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

    #[test]
    fn the_ledger_survives_reopening_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (ulid::Ulid::new(), ulid::Ulid::new());
        let mut l = Ledger::open(dir.path()).unwrap();
        l.record(a, "1").unwrap();
        l.record(a, "1").unwrap();
        let mut f = File::options()
            .append(true)
            .open(dir.path().join("delivered"))
            .unwrap();
        f.write_all(&b.to_string().as_bytes()[..10]).unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        assert!(l.contains(&a) && !l.contains(&b));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn compaction_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        l.keep = 10;
        let ids: Vec<ulid::Ulid> = (0..21).map(|_| ulid::Ulid::new()).collect();
        for id in &ids {
            l.record(*id, "").unwrap();
        }
        assert_eq!(l.len(), 10);
        let l = Ledger::open(dir.path()).unwrap();
        assert_eq!(l.len(), 10);
        assert!(l.contains(ids.last().unwrap()) && !l.contains(&ids[0]));
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
        let mut ledger = Ledger::open(&dir(&l)).unwrap();
        assert_eq!(ledger.reconcile(&l).unwrap(), 4);
        assert!((0..4).all(|i| ledger.contains(&ids[i])));
        assert!(!ledger.contains(&ids[4]));
        assert_eq!(ledger.reconcile(&l).unwrap(), 0);
    }

    #[test]
    fn a_drop_never_replaces_and_set_aside_finds_a_free_name() {
        let root = tempfile::tempdir().unwrap();
        let l = layout(root.path());
        std::fs::create_dir_all(&l.state).unwrap();
        assert!(drop_trigger(&l.state, "build-1.csv", b"type=main,command=build\n").unwrap());
        assert!(!drop_trigger(&l.state, "build-1.csv", b"other\n").unwrap());
        assert_eq!(
            std::fs::read_to_string(l.state.join("build-1.csv")).unwrap(),
            "type=main,command=build\n"
        );
        let names: Vec<_> = std::fs::read_dir(&l.state).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");
        let first = set_aside(
            &l.failed,
            "build-2.csv",
            b"x\n",
            |n| format!("{n}: why"),
            "d",
        )
        .unwrap();
        let second = set_aside(
            &l.failed,
            "build-2.csv",
            b"y\n",
            |n| format!("{n}: why"),
            "d",
        )
        .unwrap();
        assert_eq!(
            (first.as_str(), second.as_str()),
            ("build-2.csv", "build-2.csv.1")
        );
        assert_eq!(
            std::fs::read_to_string(l.failed.join("build-2.csv.1.reason")).unwrap(),
            "build-2.csv.1: why\n\nd\n"
        );
    }
}
