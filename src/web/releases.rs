//! Owns the releases the web server can show and roll back to, from what the engine records today: each
//! target's live record (`releases/<target>.json`) and its release history (`<target>.history.jsonl`),
//! of which the `keep_releases` before the live one are still on disk (`.prev`, `.prev.2`, ...). It only
//! reads, never following a link into the engine's directory. The releases half of issue 14 replaces
//! this with the engine's own release store; the JSON keeps its shape.

use anyhow::Result;
use serde::Serialize;

use crate::layout::Layout;
use crate::status_doc::ReleaseDoc;

/// How many records of a target's history are shown.
const SHOWN: usize = 20;

/// `live`: serving now; `kept`: its files are kept for a rollback; `replaced`: no longer on disk.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    /// Serving now.
    Live,
    /// Kept beside the live one (`.prev`, `.prev.2`, ...): a rollback can put it back.
    Kept,
    /// Older than what is kept.
    Replaced,
}

/// One release of a target.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    /// Where it stands.
    pub state: ReleaseState,
    /// Its record.
    #[serde(flatten)]
    pub release: ReleaseDoc,
}

/// One target's releases, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReleases {
    /// `main`, `multi/TENANT` or `dedicated/SITE`.
    pub target: String,
    /// The live release's id.
    pub live: Option<String>,
    /// Newest first, at most 20.
    pub releases: Vec<Release>,
}

/// Every target with a release record.
pub fn all(layout: &Layout, keep: usize) -> Result<Vec<TargetReleases>> {
    let dir_path = layout.engine_dir.join("releases");
    // `.t8k-engine/releases` is the engine's own: read without following a link.
    let Some(dir) = crate::fs::OwnDir::open_to_read(&dir_path, 2)? else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = dir
        .entries()?
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let Some(live) = dir
            .read(&name, 16 << 20)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            continue;
        };
        let Some(target) = live["target"].as_str().map(str::to_string) else {
            continue;
        };
        let live = ReleaseDoc::from_record(live);
        let history = format!("{}.history.jsonl", name.trim_end_matches(".json"));
        let text = dir
            .read(&history, 64 << 20)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let mut records: Vec<ReleaseDoc> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter_map(ReleaseDoc::from_record)
            .collect();
        records.reverse();
        // The live record comes first even if the history lost it (an engine older than the history file).
        if let Some(l) = &live
            && records.first().is_none_or(|r| r.id != l.id)
        {
            records.retain(|r| r.id != l.id);
            records.insert(0, l.clone());
        }
        let releases = records
            .into_iter()
            .take(SHOWN)
            .enumerate()
            .map(|(i, release)| Release {
                state: match i {
                    0 if live.is_some() => ReleaseState::Live,
                    i if i <= keep => ReleaseState::Kept,
                    _ => ReleaseState::Replaced,
                },
                release,
            })
            .collect();
        out.push(TargetReleases {
            target,
            live: live.map(|l| l.id),
            releases,
        });
    }
    Ok(out)
}
