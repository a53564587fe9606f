//! t8k-engine: takes the trigger files a TractStack server receives and runs each job through an
//! operator-editable Rhai script, never losing or half-processing a trigger.
//!
//! Dependencies point one way, down [`LAYERS`]: a module uses only modules of the layers below its own,
//! never one beside or above it (a unit test reads every `crate::` path in `src/` and holds this true).
//! So the supervisor knows nothing of Rhai, the queue knows nothing of scripts, scripts never touch the
//! state directory, and the configuration imports nothing. `preflight` and `status` only read: the root,
//! the tools on the steps' PATH, systemd's unit directory. `queue`, `lock`, `history` and `release` reach
//! the engine's own directories only through `fs::OwnDir`, which never follows a link. The fleet
//! (`fleet`, behind the `fleet` feature) only drops trigger files and reads the journal: it never holds
//! the lock or runs builds, and tokio never leaves it. The web server (`web`, behind the `web` feature,
//! `t8k-engine serve`) is the same kind of neighbour: it reads the journal, the job logs, the release
//! records and the status (`status_doc`, the versioned document the engine writes to `log/status.json`
//! and `serve` makes from the same state), drops trigger files, appends its requests to a journal of its
//! own and signals a cancel, but never holds the lock or runs a build; its tokio stays in it.

pub mod artifacts;
pub mod cancel;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod faults;
#[cfg(feature = "fleet")]
pub mod fleet;
pub mod fs;
pub mod history;
pub mod http;
pub mod joblog;
pub mod layout;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod perms;
pub mod preflight;
pub mod queue;
pub mod redact;
pub mod release;
pub mod resources;
pub mod scope;
pub mod script;
pub mod status;
pub mod status_doc;
pub mod supervise;
pub mod trigger;
pub mod trim;
pub mod ui;
pub mod usage;
pub mod watch;
#[cfg(feature = "web")]
pub mod web;
pub mod whitelist;

/// The crate's modules by layer, bottom first; each may use only modules of the layers before it.
pub const LAYERS: &[&[&str]] = &[
    // Leaves: settings, formats, primitives.
    &[
        "error",
        "faults",
        "redact",
        "cancel",
        "config",
        "trigger",
        "perms",
        "watch",
        "whitelist",
    ],
    // Mechanisms: files, processes and their systemd scopes, HTTP, paths, log sinks, disk and memory.
    &[
        "fs",
        "http",
        "supervise",
        "scope",
        "joblog",
        "layout",
        "resources",
        "trim",
    ],
    // State on disk: the queue, the lock, the job history, the artifact cache.
    &["queue", "lock", "history", "artifacts"],
    // Releases on disk and their records (which hold a job's steps).
    &["release"],
    // What reads the history; the Rhai layer that runs a job; the status document the engine writes; what
    // the installs and caches take on disk.
    &["metrics", "script", "status_doc", "usage"],
    // Running the queue (one trigger, the order); the read-only checks of the surroundings.
    &["engine", "preflight"],
    // The daemon; the status snapshot.
    &["daemon", "status"],
    // What a person at a terminal sees: progress, a followed trigger, tables; the fleet's bridge and views.
    &["ui", "fleet"],
    // Where log lines go (stderr, or progress on a terminal; the build log; each job's log).
    &["logging"],
    // The web page, API and webhooks (`serve`): beside the engine, never holding its lock.
    &["web"],
    // The command line.
    &["cli"],
];

#[cfg(test)]
mod layering {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    use super::LAYERS;

    fn rank(module: &str) -> Option<usize> {
        LAYERS.iter().position(|layer| layer.contains(&module))
    }

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }

    /// The top-level modules a source text names through `crate::` paths, grouped `crate::{a, b::c}`
    /// ones included; `crate::fault_point!` is the `faults` module's macro.
    fn used(text: &str) -> BTreeSet<String> {
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        let mut found = BTreeSet::new();
        for (at, _) in text.match_indices("crate::") {
            if text[..at].ends_with('$') {
                continue;
            }
            let rest = &text[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 1;
                let mut start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 1 => break,
                        '}' => depth -= 1,
                        ',' if depth == 1 => start = true,
                        c if c.is_whitespace() => {}
                        _ if start && depth == 1 => {
                            found.insert(ident(&group[i..]));
                            start = false;
                        }
                        _ => start = false,
                    }
                }
            } else {
                found.insert(ident(rest));
            }
        }
        found
            .into_iter()
            .map(|m| {
                if m == "fault_point" {
                    "faults".into()
                } else {
                    m
                }
            })
            .filter(|m| !m.is_empty())
            .collect()
    }

    #[test]
    fn every_module_uses_only_the_layers_below_its_own() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut problems: BTreeMap<String, &str> = BTreeMap::new();
        let mut modules = BTreeSet::new();
        for file in files {
            let rel = file.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = top.trim_end_matches(".rs").to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            modules.insert(module.clone());
            let Some(own) = rank(&module) else {
                problems.insert(rel.display().to_string(), "is in no layer of LAYERS");
                continue;
            };
            for dep in used(&std::fs::read_to_string(&file).unwrap()) {
                if dep == module {
                    continue;
                }
                match rank(&dep) {
                    Some(r) if r < own => {}
                    Some(_) => {
                        problems.insert(
                            format!("{} uses {dep}", rel.display()),
                            "a module of its own layer or one above",
                        );
                    }
                    None => {
                        problems.insert(
                            format!("{} uses {dep}", rel.display()),
                            "which is in no layer",
                        );
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
        let listed: BTreeSet<String> = LAYERS
            .iter()
            .flat_map(|l| l.iter())
            .map(|m| m.to_string())
            .collect();
        assert_eq!(listed, modules, "LAYERS lists exactly the crate's modules");
    }

    #[test]
    fn the_scan_sees_plain_and_grouped_paths() {
        let text = "use crate::queue::Queue;\nuse crate::{config::Config, layout::{self, Layout}};\n\
                    crate::fault_point!(\"x\"); $crate::faults::injected(); let x = crate::fs::sync_dir;";
        let found: Vec<String> = used(text).into_iter().collect();
        assert_eq!(found, ["config", "faults", "fs", "layout", "queue"]);
    }
}
