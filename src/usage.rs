//! Owns the disk-usage report of `status`: what each target's live and kept releases and its dependency
//! tree take, and what the caches builds share take (the artifact cache with its hit rate, Go's build and
//! module caches, pnpm's store). It only reads; pruning is `release`'s, eviction `artifacts`'.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::artifacts::{Cache, Summary};
use crate::config::Config;
use crate::layout::Layout;
use crate::resources::{self, BuildCaches, Located, Usage};

/// Disk used per target and by the shared caches. Each file counts once, where it is met first: a release
/// (live, then kept), then a cache, then a target's `node_modules` (mostly links into pnpm's store).
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    /// Each install (main, each dedicated site): multi tenants share main's.
    pub targets: Vec<TargetDisk>,
    /// The artifact cache.
    pub artifacts: Summary,
    /// Bytes the artifact cache takes beyond what releases share with it.
    pub artifacts_own_bytes: u64,
    /// Go's build cache, Go's module cache and pnpm's store, where the steps' environment puts them.
    pub caches: Vec<CacheDisk>,
    /// Everything above.
    pub total_bytes: u64,
}

/// One install's releases.
#[derive(Debug, Clone, Serialize)]
pub struct TargetDisk {
    /// `main` or `dedicated/SITE`.
    pub target: String,
    /// The live binary and `dist/`.
    pub live_bytes: u64,
    /// Kept releases: `*.prev`, `*.prev.N`, `*.failed` and leftover `*.new` of both.
    pub kept_bytes: u64,
    /// How many kept releases there are.
    pub kept: usize,
    /// `node_modules` beyond the files it shares with pnpm's store.
    pub node_modules_bytes: u64,
}

/// One shared cache.
#[derive(Debug, Clone, Serialize)]
pub struct CacheDisk {
    /// `go build cache`, `go module cache` or `pnpm store`.
    pub name: String,
    /// Where, and which setting says so; `None` when it cannot be placed (no HOME, GOCACHE=off).
    pub at: Option<Located>,
    /// Bytes it takes.
    pub bytes: u64,
}

fn sum(u: Usage) -> u64 {
    u.bytes
}

/// The releases of one live path: the live one, and the kept ones beside it.
fn releases(live: &Path, seen: &mut HashSet<(u64, u64)>) -> (u64, u64, usize) {
    let live_bytes = sum(resources::usage(live, seen));
    let (Some(dir), Some(name)) = (live.parent(), live.file_name()) else {
        return (live_bytes, 0, 0);
    };
    let name = name.to_string_lossy();
    let mut kept: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.strip_prefix(name.as_ref()).is_some_and(|rest| {
                rest.starts_with(".prev") || rest == ".failed" || rest == ".new"
            })
        })
        .map(|e| e.path())
        .collect();
    kept.sort();
    let kept_bytes = kept.iter().map(|p| sum(resources::usage(p, seen))).sum();
    (live_bytes, kept_bytes, kept.len())
}

/// Where the steps' caches are: the configured step environment over the engine's own.
pub fn build_caches(config: &Config) -> BuildCaches {
    let env = config.step_env();
    resources::build_caches(&move |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    })
}

/// Measures everything; walks every tree once.
///
/// The order matters: a file is counted once, by the first tree that reaches it (hard links), so a
/// cached binary linked into a site counts as that site's release, not as the cache's.
pub fn collect(config: &Config, layout: &Layout) -> Disk {
    let mut seen = HashSet::new();
    let installs = installs(layout);
    let mut targets = Vec::new();
    for (target, base) in &installs {
        let binary = base.join("bin/tractstack-go");
        let dist = base.join("src/my-tractstack/dist");
        if !binary.exists() && !dist.exists() {
            continue;
        }
        let (bl, bk, bn) = releases(&binary, &mut seen);
        let (dl, dk, dn) = releases(&dist, &mut seen);
        targets.push(TargetDisk {
            target: target.clone(),
            live_bytes: bl + dl,
            kept_bytes: bk + dk,
            kept: bn + dn,
            node_modules_bytes: 0,
        });
    }
    let cache = Cache::new(
        layout.artifacts_dir.clone(),
        config.artifact_cache_max_bytes,
    );
    let artifacts = cache.summary().unwrap_or_else(|e| {
        tracing::warn!("cannot read the artifact cache: {e:#}");
        Summary::default()
    });
    let artifacts_own_bytes = sum(resources::usage(&layout.artifacts_dir, &mut seen));
    let caches = shared_caches(config, &mut seen);
    for t in &mut targets {
        let base = installs
            .iter()
            .find(|(name, _)| *name == t.target)
            .map(|(_, b)| b.clone())
            .unwrap_or_default();
        t.node_modules_bytes = sum(resources::usage(
            &base.join("src/my-tractstack/node_modules"),
            &mut seen,
        ));
    }
    let total_bytes = targets
        .iter()
        .map(|t| t.live_bytes + t.kept_bytes + t.node_modules_bytes)
        .sum::<u64>()
        + artifacts_own_bytes
        + caches.iter().map(|c| c.bytes).sum::<u64>();
    Disk {
        targets,
        artifacts,
        artifacts_own_bytes,
        caches,
        total_bytes,
    }
}

/// Each install the server has: main at the root, then every site under `sites/` by name.
fn installs(layout: &Layout) -> Vec<(String, PathBuf)> {
    let mut installs = vec![("main".to_string(), layout.root.clone())];
    let sites = layout.root.join("sites");
    let mut names: Vec<String> = std::fs::read_dir(&sites)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    installs.extend(
        names
            .into_iter()
            .map(|n| (format!("dedicated/{n}"), sites.join(n))),
    );
    installs
}

/// The build caches shared by every install, measured where the engine's builds find them.
fn shared_caches(config: &Config, seen: &mut HashSet<(u64, u64)>) -> Vec<CacheDisk> {
    let found = build_caches(config);
    [
        ("go build cache", found.go_build),
        ("go module cache", found.go_modules),
        ("pnpm store", found.pnpm_store),
    ]
    .into_iter()
    .map(|(name, at)| CacheDisk {
        name: name.into(),
        bytes: at
            .as_ref()
            .map_or(0, |l| sum(resources::usage(&l.path, seen))),
        at,
    })
    .collect()
}

/// Warnings about caches builds cannot keep: none at all (no HOME and no setting), or one in a
/// temporary directory that a reboot or the unit's PrivateTmp empties.
pub fn cache_warnings(config: &Config) -> Vec<String> {
    let found = build_caches(config);
    let fix = "set it in the service's environment (README: \"Build caches\")";
    let mut out = Vec::new();
    for (name, var, at) in [
        ("Go's build cache", "GOCACHE", &found.go_build),
        ("Go's module cache", "GOMODCACHE", &found.go_modules),
        ("pnpm's store", "npm_config_store_dir", &found.pnpm_store),
    ] {
        match at {
            None => out.push(format!(
                "{name} has no place: neither {var} nor HOME is set for the steps, so builds cannot keep it; {fix}"
            )),
            Some(l) if ["/tmp", "/var/tmp", "/dev/shm"].iter().any(|t| l.path.starts_with(t)) => {
                out.push(format!(
                    "{name} is in {} ({}), which a reboot or a unit's PrivateTmp empties, so every build starts cold; {fix}",
                    l.path.display(),
                    l.from
                ))
            }
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_releases_and_shared_files_are_counted_once_where_met_first() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            root: dir.path().to_path_buf(),
            ..Config::default()
        };
        let layout = Layout::new(&config);
        let bin = dir.path().join("sites/acme/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("tractstack-go"), vec![1u8; 64 << 10]).unwrap();
        std::fs::write(bin.join("tractstack-go.prev"), vec![2u8; 64 << 10]).unwrap();
        std::fs::write(bin.join("tractstack-go.prev.2"), vec![3u8; 64 << 10]).unwrap();
        // A second site whose live binary is the same file (a hard link, as the artifact cache places it).
        let other = dir.path().join("sites/beta/bin");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::hard_link(bin.join("tractstack-go"), other.join("tractstack-go")).unwrap();
        let disk = collect(&config, &layout);
        let names: Vec<&str> = disk.targets.iter().map(|t| t.target.as_str()).collect();
        assert_eq!(names, ["dedicated/acme", "dedicated/beta"]);
        let acme = &disk.targets[0];
        assert_eq!(acme.kept, 2);
        assert!(
            acme.kept_bytes >= 128 << 10 && acme.live_bytes >= 64 << 10,
            "{acme:?}"
        );
        assert_eq!(
            disk.targets[1].live_bytes, 0,
            "the shared binary counts once"
        );
        assert!(disk.total_bytes >= 192 << 10);
    }

    #[test]
    fn the_shipped_units_name_the_caches_t8ks_own_builds_use() {
        for unit in ["t8k-engine.service", "t8k-build-watcher.service"] {
            let text = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("examples/systemd")
                    .join(unit),
            )
            .unwrap();
            let vars: Vec<(String, String)> = text
                .lines()
                .filter_map(|l| l.strip_prefix("Environment="))
                .flat_map(|l| l.split_whitespace())
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let lookup = |vars: Vec<(String, String)>| {
                resources::build_caches(&move |name: &str| {
                    vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
                })
            };
            // Whatever HOME the unit runs with (none, another), the caches are t8k's...
            let named = lookup(vars.clone());
            // ...the ones a build as t8k (HOME=/home/t8k) uses, the installer's included.
            let home = lookup(vec![("HOME".into(), "/home/t8k".into())]);
            let path = |l: &Option<Located>| l.as_ref().map(|l| l.path.clone());
            assert_eq!(path(&named.go_build), path(&home.go_build), "{unit}");
            assert_eq!(path(&named.go_modules), path(&home.go_modules), "{unit}");
            assert_eq!(path(&named.pnpm_store), path(&home.pnpm_store), "{unit}");
            assert!(
                named.go_build.unwrap().from.contains("in the environment"),
                "{unit}"
            );
        }
    }

    #[test]
    fn caches_without_a_place_or_in_tmp_are_warned_about() {
        let config = Config {
            env: crate::config::StepEnv {
                vars: [
                    ("GOCACHE".to_string(), "/tmp/go-build".to_string()),
                    ("HOME".to_string(), "/home/t8k".to_string()),
                ]
                .into(),
                ..Default::default()
            },
            ..Config::default()
        };
        let warnings = cache_warnings(&config);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("/tmp/go-build")
                && warnings[0].contains("GOCACHE in the environment")
        );
    }
}
