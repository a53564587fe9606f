//! Owns the record of an install's releases (`releases/<install>.releases.json`): the kept releases newest
//! first with their facts, files and how each ended, the commits that were rolled back, and which ones are
//! kept (`prune`). Records of older engines (`<target>.json`, `<target>.history.jsonl`) are read when an
//! install has no store yet, and still written for them. It never switches files itself but through
//! `kept`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::RELEASES_OWN;
use super::kept::{self, Files, Identity, Part, Parts, Tracker};
use crate::fs::OwnDir;
use crate::history::StepRecord;
use crate::trigger::{JobSpec, Kind};

/// The store's format; a store of a newer format is refused, not misread.
pub const STORE_VERSION: u32 = 1;
/// Rolled-back commits remembered per install.
const MAX_BAD: usize = 50;
/// The largest store or legacy record read.
const MAX_BYTES: u64 = 64 << 20;

/// The install a job's target lives in: `main` (main and every `multi/TENANT` share its binary and
/// `dist/`) or `dedicated/SITE`.
pub fn install_of(spec: &JobSpec) -> String {
    match (&spec.kind, &spec.site) {
        (Kind::Dedicated, Some(site)) => format!("dedicated/{site}"),
        _ => "main".to_string(),
    }
}

/// The install of a target name (`main`, `multi/T`, `dedicated/S`); `None` for anything else.
pub fn install_of_target(target: &str) -> Option<String> {
    match target.split_once('/') {
        None if target == "main" => Some("main".into()),
        Some(("multi", t)) if !t.is_empty() => Some("main".into()),
        Some(("dedicated", s)) if !s.is_empty() => Some(format!("dedicated/{s}")),
        _ => None,
    }
}

pub(super) fn stem(name: &str) -> String {
    name.replace('/', "_")
}

fn store_name(install: &str) -> String {
    format!("{}.releases.json", stem(install))
}

/// How a release ended, or that it serves. A record of an older engine has none: it is `replaced` (the
/// newest of them is made `live` when they are read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// It serves now.
    Live,
    /// A later release (or a rollback to an older one) replaced it while it worked.
    #[default]
    Replaced,
    /// An operator rolled back from it: its commits are not built again without `force=true`.
    RolledBack,
    /// Switched in by its build, it failed its checks and the previous release was put back.
    Failed,
    /// A state this engine does not know (a newer engine's), kept as written.
    #[serde(untagged)]
    Other(String),
}

impl State {
    /// The name as records and `releases --json` spell it.
    pub fn as_str(&self) -> &str {
        match self {
            State::Live => "live",
            State::Replaced => "replaced",
            State::RolledBack => "rolled_back",
            State::Failed => "failed",
            State::Other(s) => s,
        }
    }
}

/// When, by which job and why a release stopped serving (or was restored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// RFC 3339 time.
    pub at: String,
    /// The job that did it.
    pub by: String,
    /// What happened.
    pub reason: String,
}

/// One release of an install: the script's facts (commits, digests, what was built) with the engine's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// Its number within the install, from 1.
    #[serde(default)]
    pub id: u64,
    /// How it ended, or `live`.
    #[serde(default)]
    pub state: State,
    /// The target of the job that built it (`main`, `multi/T`, `dedicated/S`).
    #[serde(default)]
    pub target: String,
    /// The job that built it.
    #[serde(default)]
    pub job_id: String,
    /// That job's trigger file.
    #[serde(default)]
    pub trigger: String,
    /// RFC 3339 time it was recorded.
    #[serde(default)]
    pub released_at: String,
    /// How long its job had run when it was recorded.
    #[serde(default)]
    pub duration_ms: u64,
    /// Every step of its job with time, CPU and memory.
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    /// Its files by identity (absent in records of older engines, which did not track them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Files>,
    /// When it stopped serving, or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
    /// Each time a rollback brought it back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<Ended>,
    /// What the script recorded: `backend`, `frontend` (commits), `lockfile`, `package_json`,
    /// `local_changes`, `env` (digests), `built`, and anything else it chose to.
    #[serde(flatten)]
    pub facts: Map<String, Value>,
}

/// The engine's own keys of a record, which a script's facts cannot set.
const RESERVED: &[&str] = &[
    "id",
    "state",
    "target",
    "job_id",
    "trigger",
    "released_at",
    "duration_ms",
    "steps",
    "files",
    "ended",
    "restored",
];

impl Release {
    /// A fact as a string (a commit, a digest).
    pub fn fact(&self, key: &str) -> Option<&str> {
        self.facts.get(key).and_then(Value::as_str)
    }

    /// The record as JSON, facts flattened in, as scripts and `releases --json` see it.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Whether every file the release has is still on disk beside the install's live paths.
    pub fn files_kept(&self, parts: &Parts) -> Option<bool> {
        let files = self.files?;
        Some(Part::ALL.into_iter().all(|p| {
            files
                .get(p)
                .is_none_or(|id| kept::locate(parts.path(p), &id).is_some())
        }))
    }
}

/// Commits that were rolled back: a later build of the same ones is refused unless forced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bad {
    /// The release that held them.
    pub release: u64,
    /// Its target.
    pub target: String,
    /// When it was rolled back.
    pub at: String,
    /// `rolled_back` or `failed`.
    pub how: State,
    /// Why.
    pub reason: String,
    /// The release's facts (commits and digests) as recorded.
    pub facts: Map<String, Value>,
}

/// Every kept release of one install, and its rolled-back commits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Store {
    /// [`STORE_VERSION`].
    pub version: u32,
    /// `main` or `dedicated/SITE`.
    pub install: String,
    /// The number the next release gets.
    pub next_id: u64,
    /// Newest first.
    pub releases: Vec<Release>,
    /// Newest first, at most 50.
    #[serde(default)]
    pub bad: Vec<Bad>,
    /// Read from an older engine's records, not saved yet.
    #[serde(skip)]
    pub from_legacy: bool,
}

pub(super) fn now() -> String {
    jiff::Timestamp::now().to_string()
}

impl Store {
    /// An install's store; without one, the records an older engine wrote for its targets (not saved
    /// until something is recorded).
    pub fn load(dir: &Path, install: &str) -> Result<Store> {
        let empty = Store {
            version: STORE_VERSION,
            install: install.to_string(),
            next_id: 1,
            releases: Vec::new(),
            bad: Vec::new(),
            from_legacy: false,
        };
        let Some(own) = OwnDir::open_to_read(dir, RELEASES_OWN)? else {
            return Ok(empty);
        };
        let name = store_name(install);
        let Some(bytes) = own.read(&name, MAX_BYTES)? else {
            return Ok(legacy::legacy(&own, empty));
        };
        let path = own.join(&name);
        let version: Value = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "release store {} is not valid JSON; move it aside and the engine starts a new one from {}'s older records",
                path.display(),
                install
            )
        })?;
        if version["version"].as_u64().unwrap_or(0) > u64::from(STORE_VERSION) {
            bail!(
                "release store {} was written by a newer t8k-engine (format {}); use that version",
                path.display(),
                version["version"]
            );
        }
        serde_json::from_value(version)
            .with_context(|| format!("release store {} cannot be read", path.display()))
    }

    /// Writes the store durably.
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        let own = OwnDir::open(dir, RELEASES_OWN)?;
        let text = serde_json::to_string_pretty(self)?;
        own.write(
            &store_name(&self.install),
            format!("{text}\n").as_bytes(),
            true,
        )?;
        self.from_legacy = false;
        Ok(())
    }

    /// Whether the install has a store on disk.
    pub fn exists(dir: &Path, install: &str) -> bool {
        OwnDir::open_to_read(dir, RELEASES_OWN)
            .ok()
            .flatten()
            .is_some_and(|own| own.exists(store_name(install)))
    }

    /// What `t8k-engine releases --json` prints of the install (and `GET /api/releases` serves): its
    /// releases newest first, each marked live or not and whether its files are still kept, and the
    /// commits a build refuses.
    pub fn listing(&self, parts: &Parts, keep: usize) -> Value {
        let releases: Vec<Value> = self
            .releases
            .iter()
            .map(|r| {
                let mut v = r.to_json();
                v["live"] = Value::Bool(r.state == State::Live);
                v["files_kept"] = serde_json::json!(r.files_kept(parts));
                v
            })
            .collect();
        serde_json::json!({
            "install": self.install,
            "keep_releases": keep,
            "live": self.live().map(|r| r.id),
            "previous": self.previous().map(|r| r.id),
            "releases": releases,
            "rolled_back": self.bad,
            "recorded_by_older_engine": self.from_legacy,
        })
    }

    /// The release that serves.
    pub fn live(&self) -> Option<&Release> {
        self.releases.iter().find(|r| r.state == State::Live)
    }

    pub(super) fn live_mut(&mut self) -> Option<&mut Release> {
        self.releases.iter_mut().find(|r| r.state == State::Live)
    }

    /// The release a rollback goes back to by default: the newest that was replaced while it worked.
    pub fn previous(&self) -> Option<&Release> {
        self.releases.iter().find(|r| r.state == State::Replaced)
    }

    /// A kept release by number.
    pub fn get(&self, id: u64) -> Option<&Release> {
        self.releases.iter().find(|r| r.id == id)
    }

    /// Sets the files of a release (the live one of an older engine's records learns them from disk).
    pub fn set_files(&mut self, id: u64, files: Option<Files>) {
        if let Some(r) = self.get_mut(id) {
            r.files = files;
        }
    }

    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut Release> {
        self.releases.iter_mut().find(|r| r.id == id)
    }

    pub(super) fn kept_ids(&self) -> String {
        if self.releases.is_empty() {
            return "none".into();
        }
        let ids: Vec<String> = self.releases.iter().map(|r| r.id.to_string()).collect();
        ids.join(", ")
    }

    /// The newest rolled-back release whose facts equal `query` on every key it gives.
    pub fn bad_for(&self, query: &Map<String, Value>) -> Option<&Bad> {
        self.bad.iter().find(|b| {
            query
                .iter()
                .all(|(k, v)| b.facts.get(k).unwrap_or(&Value::Null) == v)
        })
    }

    pub(super) fn remember_bad(&mut self, r: &Release, how: State, reason: &str, at: &str) {
        let facts: Map<String, Value> = r
            .facts
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "built" | "local_files"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.bad.insert(
            0,
            Bad {
                release: r.id,
                target: r.target.clone(),
                at: at.to_string(),
                how,
                reason: reason.to_string(),
                facts,
            },
        );
        self.bad.truncate(MAX_BAD);
    }

    /// Which releases stay: the newest `keep`, the live one and the previous one whatever `keep` says.
    /// Returns the ones dropped.
    pub fn prune_records(&mut self, keep: usize) -> Vec<Release> {
        let previous = self.previous().map(|r| r.id);
        let mut dropped = Vec::new();
        let mut kept = Vec::new();
        for (i, r) in std::mem::take(&mut self.releases).into_iter().enumerate() {
            if i < keep.max(1) || r.state == State::Live || Some(r.id) == previous {
                kept.push(r);
            } else {
                dropped.push(r);
            }
        }
        self.releases = kept;
        dropped
    }

    /// Per part, the files the kept releases need (with what is live now and, where the previous
    /// release's file is unknown, `live.prev`); `None` for a part whose needs cannot be told because a
    /// kept release that served has no record of its file (an older engine's), which is then left alone.
    fn wanted(&self, parts: &Parts) -> Vec<(Part, Option<Vec<Identity>>)> {
        Part::ALL
            .into_iter()
            .map(|part| {
                let live = parts.path(part);
                let mut ids: Vec<Identity> = Identity::of(live).into_iter().collect();
                for r in &self.releases {
                    match r.files.and_then(|f| f.get(part)) {
                        Some(id) => ids.push(id),
                        None if r.state == State::Failed => {}
                        None => return (part, None),
                    }
                }
                if self.previous().is_none_or(|p| p.files.is_none()) {
                    ids.extend(kept::first_previous(live));
                }
                (part, Some(ids))
            })
            .collect()
    }
}

/// Every install with releases: a store, or an older engine's records.
pub fn installs(dir: &Path) -> Vec<String> {
    let Ok(Some(own)) = OwnDir::open_to_read(dir, RELEASES_OWN) else {
        return Vec::new();
    };
    let mut out: Vec<String> = own
        .entries()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .filter_map(|n| {
            let stem = n
                .strip_suffix(".releases.json")
                .or_else(|| n.strip_suffix(".json"))?;
            if stem == "main" || stem.starts_with("multi_") {
                Some("main".to_string())
            } else {
                stem.strip_prefix("dedicated_")
                    .map(|s| format!("dedicated/{s}"))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The files of the release that served when a job began, where an older engine did not record them: what
/// each part was before the job changed it, or is still.
pub(super) fn adopt(files: Option<Files>, parts: &Parts, tracker: &Tracker) -> Files {
    let mut files = files.unwrap_or_default();
    for part in Part::ALL {
        let path = parts.path(part);
        if files.get(part).is_none() {
            files.set(part, tracker.outgoing(path).or_else(|| Identity::of(path)));
        }
    }
    files
}

/// What a job records as its release.
pub struct Recording {
    /// The job's install.
    pub install: String,
    /// Its target.
    pub target: String,
    /// The install's live paths.
    pub parts: Parts,
    /// The job.
    pub job_id: String,
    /// Its trigger.
    pub trigger: String,
    /// How long it has run.
    pub duration_ms: u64,
    /// Its steps so far.
    pub steps: Vec<StepRecord>,
    /// The script's facts.
    pub facts: Map<String, Value>,
    /// `Some(why)`: the release failed its checks and was rolled back.
    pub failed: Option<String>,
    /// `keep_releases`.
    pub keep: usize,
}

/// Records a job's release in its install's store: a good one becomes live (the one it replaces keeps
/// the files it had, learnt from `tracker` when an older engine did not record them), a failed one has
/// its commits remembered as rolled back; then the store is pruned to `keep`. Also written as an older
/// engine's `<target>.json` record, for tools and engines that read that.
pub fn record_release(dir: &Path, rec: Recording, tracker: &Tracker) -> Result<Release> {
    let mut store = Store::load(dir, &rec.install)?;
    let at = now();
    let id = store.next_id;
    let mut facts = rec.facts;
    facts.retain(|k, _| !RESERVED.contains(&k.as_str()));
    let mut release = Release {
        id,
        state: State::Live,
        target: rec.target.clone(),
        job_id: rec.job_id.clone(),
        trigger: rec.trigger,
        released_at: at.clone(),
        duration_ms: rec.duration_ms,
        steps: rec.steps,
        files: None,
        ended: None,
        restored: Vec::new(),
        facts,
    };
    match &rec.failed {
        Some(why) => {
            release.state = State::Failed;
            release.ended = Some(Ended {
                at: at.clone(),
                by: rec.job_id.clone(),
                reason: why.clone(),
            });
            store.remember_bad(&release, State::Failed, why, &at);
        }
        None => {
            if let Some(prev) = store.live_mut() {
                prev.files = Some(adopt(prev.files, &rec.parts, tracker));
                prev.state = State::Replaced;
                prev.ended = Some(Ended {
                    at: at.clone(),
                    by: rec.job_id.clone(),
                    reason: format!("replaced by release {id}"),
                });
            }
            release.files = Some(rec.parts.live_files());
        }
    }
    store.releases.insert(0, release.clone());
    store.next_id = id + 1;
    store.prune_records(rec.keep);
    store.save(dir)?;
    if rec.failed.is_none() {
        legacy::write_legacy(dir, &rec.target, &release)?;
        prune_files(&store, &rec.parts)?;
    }
    Ok(release)
}

/// Keeps an install's newest `keep` releases with their files, and always the live and the previous
/// one: older records are dropped, and the files beside the live paths that no kept release needs are
/// removed. Returns the paths removed. Nothing happens to an install without a store (whose records
/// an older engine wrote).
pub fn prune(dir: &Path, install: &str, parts: &Parts, keep: usize) -> Result<Vec<PathBuf>> {
    if !Store::exists(dir, install) {
        return Ok(Vec::new());
    }
    let mut store = Store::load(dir, install)?;
    if !store.prune_records(keep).is_empty() {
        store.save(dir)?;
    }
    prune_files(&store, parts)
}

pub(super) fn prune_files(store: &Store, parts: &Parts) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for (part, wanted) in store.wanted(parts) {
        if let Some(wanted) = wanted {
            removed.extend(kept::remove_unwanted(parts.path(part), &wanted)?);
        }
    }
    for path in &removed {
        tracing::info!(
            "removed {}: no kept release of {} needs it",
            path.display(),
            store.install
        );
    }
    Ok(removed)
}

mod legacy;
#[cfg(test)]
mod tests;
