//! Owns the records older engines wrote and read: `<target>.json` (the live release) and
//! `<target>.history.jsonl` (every release), read into a store when an install has none yet, and still
//! written beside the store for tools and engines that read them.

use std::path::Path;

use anyhow::{Context, Result};

use super::{MAX_BYTES, Release, State, Store, stem};
use crate::fs::OwnDir;
use crate::release::RELEASES_OWN;

/// What an older engine recorded for the targets of an install, oldest first, numbered from 1; the newest
/// is live.
pub(super) fn legacy(own: &OwnDir, mut store: Store) -> Store {
    let install = store.install.clone();
    let mut records: Vec<Release> = Vec::new();
    let mut names: Vec<String> = own
        .entries()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .collect();
    names.sort();
    for name in &names {
        let Some(target_stem) = name.strip_suffix(".json") else {
            continue;
        };
        if target_stem.ends_with(".releases") || !legacy_target_in(target_stem, &install) {
            continue;
        }
        let history = format!("{target_stem}.history.jsonl");
        let lines = own
            .read(&history, MAX_BYTES)
            .ok()
            .flatten()
            .or_else(|| own.read(name, MAX_BYTES).ok().flatten())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&lines);
        if names.contains(&history) {
            records.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        } else if let Ok(r) = serde_json::from_str::<Release>(&text) {
            records.push(r);
        }
    }
    if records.is_empty() {
        return store;
    }
    records.sort_by_key(|r| r.released_at.parse::<jiff::Timestamp>().ok());
    let n = records.len() as u64;
    for (i, r) in records.iter_mut().enumerate() {
        r.id = i as u64 + 1;
        r.state = if r.id == n {
            State::Live
        } else {
            State::Replaced
        };
        r.files = None;
    }
    records.reverse();
    store.releases = records;
    store.next_id = n + 1;
    store.from_legacy = true;
    store
}

/// Whether a legacy record file stem (`main`, `multi_blue`, `dedicated_acme`) is a target of `install`.
fn legacy_target_in(stem: &str, install: &str) -> bool {
    match install.strip_prefix("dedicated/") {
        Some(site) => stem.strip_prefix("dedicated_") == Some(site),
        None => stem == "main" || stem.starts_with("multi_"),
    }
}

/// The record older engines read: `<target>.json`, and a line of `<target>.history.jsonl`.
pub(super) fn write_legacy(dir: &Path, target: &str, release: &Release) -> Result<()> {
    let own = OwnDir::open(dir, RELEASES_OWN)?;
    let value = release.to_json();
    let text = serde_json::to_string_pretty(&value)?;
    own.write(
        &format!("{}.json", stem(target)),
        format!("{text}\n").as_bytes(),
        true,
    )?;
    let history = format!("{}.history.jsonl", stem(target));
    let mut line = serde_json::to_string(&value)?;
    line.push('\n');
    use std::io::Write;
    let mut f = own.append(&history)?;
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot append to {}", own.join(&history).display()))?;
    Ok(())
}
