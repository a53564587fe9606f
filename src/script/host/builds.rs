//! Owns the host functions that keep a server full of sites cheap and safe to build: the artifact cache
//! (`artifact_key`, `artifact_fetch`, `artifact_store`), the pre-build check (`check_resources`), and what
//! the scripts need to size it (`disk_usage`, `build_caches`). The mechanisms live in `artifacts` and
//! `resources`; which builds use the cache and the thresholds are the scripts' policy.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map};

use super::JobCtx;
use crate::artifacts::{Fetched, key_of};
use crate::resources::{self, Demand, Need, human};

type Res<T> = Result<T, Box<EvalAltResult>>;

/// The key's parts as JSON: a map of strings, numbers, booleans, arrays, maps and ().
fn parts_of(f: &str, parts: Map) -> Res<serde_json::Value> {
    if parts.is_empty() {
        return Err(format!(
            "{f}(): the key's parts are empty; give a map of what decides the artifact"
        )
        .into());
    }
    rhai::serde::from_dynamic(&Dynamic::from_map(parts))
        .map_err(|e| format!("{f}(): the key's parts cannot be read as data: {e}").into())
}

fn entry_map(entry: &crate::artifacts::Entry, linked: bool) -> Map {
    let mut m = Map::new();
    m.insert("key".into(), entry.key.clone().into());
    m.insert("digest".into(), entry.digest.clone().into());
    m.insert("size".into(), Dynamic::from_int(entry.size as i64));
    m.insert("linked".into(), linked.into());
    m.insert("hits".into(), Dynamic::from_int(entry.hits as i64));
    m
}

fn artifact_fetch(ctx: &JobCtx, parts: Map, dest: &str) -> Res<Dynamic> {
    ctx.refuse_in_check("artifact_fetch")?;
    let parts = parts_of("artifact_fetch", parts)?;
    let fetched = ctx
        .settings
        .artifacts
        .fetch(&parts, Path::new(dest))
        .map_err(|e| format!("artifact_fetch(): {e:#}"))?;
    Ok(match fetched {
        Fetched::Hit { entry, linked } => {
            tracing::info!(
                "artifact cache: hit {} -> {dest} ({}, {}, sha256 {} verified)",
                &entry.key[..12],
                human(entry.size),
                if linked { "hard link" } else { "copy" },
                &entry.digest[..12]
            );
            Dynamic::from_map(entry_map(&entry, linked))
        }
        Fetched::Miss { key } => {
            tracing::info!("artifact cache: no entry for key {}", &key[..12]);
            Dynamic::UNIT
        }
        Fetched::Corrupt { key, why } => {
            tracing::warn!(
                "artifact cache: entry {} was corrupt ({why}); it was removed and the artifact will be built",
                &key[..12]
            );
            Dynamic::UNIT
        }
    })
}

fn artifact_store(ctx: &JobCtx, parts: Map, path: &str) -> Res<Map> {
    ctx.refuse_in_check("artifact_store")?;
    let parts = parts_of("artifact_store", parts)?;
    let stored = ctx
        .settings
        .artifacts
        .store(&parts, Path::new(path))
        .map_err(|e| format!("artifact_store(): {e:#}"))?;
    tracing::info!(
        "artifact cache: stored {path} as {} ({}, {}){}",
        &stored.entry.key[..12],
        human(stored.entry.size),
        if stored.linked { "hard link" } else { "copy" },
        if stored.evicted.is_empty() {
            String::new()
        } else {
            format!(
                "; evicted {} least recently used entr(ies)",
                stored.evicted.len()
            )
        }
    );
    if let Some(over) = &stored.over_cap {
        tracing::warn!("{over}; raise artifact_cache_max_bytes or lower keep_releases");
    }
    let mut m = entry_map(&stored.entry, stored.linked);
    m.insert(
        "evicted".into(),
        Dynamic::from_array(stored.evicted.into_iter().map(Dynamic::from).collect()),
    );
    Ok(m)
}

/// Reads a whole non-negative number of bytes from an option map.
fn bytes(f: &str, map: &Map, key: &str) -> Res<u64> {
    match map.get(key) {
        None => Err(format!("{f}(): `{key}` is missing").into()),
        Some(v) => match v.as_int() {
            Ok(n) if n >= 0 => Ok(n as u64),
            _ => Err(format!(
                "{f}(): `{key}` must be a whole number of bytes (0 or more), got {v}"
            )
            .into()),
        },
    }
}

fn text(f: &str, map: &Map, key: &str) -> Res<String> {
    match map.get(key) {
        Some(v) if v.is_string() => Ok(v.to_string()),
        Some(v) => Err(format!("{f}(): `{key}` must be a string, got {}", v.type_name()).into()),
        None => Err(format!("{f}(): `{key}` is missing").into()),
    }
}

/// `#{disk: [#{what, path, bytes}], keep_free, memory}` and the names of the settings behind the two
/// thresholds (`keep_free_setting`, `memory_setting`), as the pre-build check reads them.
fn demand_of(demand: &Map) -> Res<Demand> {
    const F: &str = "check_resources";
    let allowed = [
        "disk",
        "keep_free",
        "memory",
        "keep_free_setting",
        "memory_setting",
    ];
    if let Some(k) = demand.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "{F}(): unknown key `{k}` (expected one of: {})",
            allowed.join(", ")
        )
        .into());
    }
    let places: Array = match demand.get("disk") {
        Some(v) if v.is_array() => v.clone().into_array().unwrap_or_default(),
        _ => {
            return Err(format!("{F}(): `disk` must be an array of #{{what, path, bytes}}").into());
        }
    };
    let mut disk = Vec::new();
    for (i, p) in places.into_iter().enumerate() {
        let Some(place) = p.try_cast::<Map>() else {
            return Err(format!(
                "{F}(): disk entry {} must be a map #{{what, path, bytes}}",
                i + 1
            )
            .into());
        };
        let path = PathBuf::from(text(F, &place, "path")?);
        if !path.is_absolute() {
            return Err(format!(
                "{F}(): disk entry {} has the relative path {}",
                i + 1,
                path.display()
            )
            .into());
        }
        disk.push(Need {
            what: text(F, &place, "what")?,
            path,
            bytes: bytes(F, &place, "bytes")?,
        });
    }
    let setting = |key: &str, default: &str| match demand.get(key) {
        Some(v) => v.to_string(),
        None => default.to_string(),
    };
    Ok(Demand {
        disk,
        keep_free: bytes(F, demand, "keep_free")?,
        keep_free_setting: setting("keep_free_setting", "keep_free"),
        memory: bytes(F, demand, "memory")?,
        memory_setting: setting("memory_setting", "memory"),
    })
}

/// The pre-build check: throws, naming every shortage and by how much, before a build touches anything.
fn check_resources(ctx: &JobCtx, demand: Map) -> Res<Map> {
    ctx.refuse_in_check("check_resources")?;
    let demand = demand_of(&demand)?;
    let report = resources::check(&demand).map_err(|e| format!("check_resources(): {e}"))?;
    for fs in &report.filesystems {
        tracing::info!(
            "room: {} has {} free; the build writes about {} there and must leave {} free",
            fs.space.mount.display(),
            human(fs.space.avail),
            human(fs.needed),
            human(demand.keep_free)
        );
    }
    if !report.short.is_empty() {
        return Err(format!(
            "not enough room to build, so nothing was touched: {}; free space there (`t8k-engine status` shows what kept releases and caches take) or change the thresholds in lib/common.rhai",
            report.short.join("; ")
        )
        .into());
    }
    let mut m = Map::new();
    let filesystems: Array = report
        .filesystems
        .iter()
        .map(|fs| {
            let mut f = Map::new();
            f.insert("mount".into(), fs.space.mount.display().to_string().into());
            f.insert("fstype".into(), fs.space.fstype.clone().into());
            f.insert("free".into(), Dynamic::from_int(fs.space.avail as i64));
            f.insert("needed".into(), Dynamic::from_int(fs.needed as i64));
            Dynamic::from_map(f)
        })
        .collect();
    m.insert("filesystems".into(), Dynamic::from_array(filesystems));
    m.insert(
        "memory".into(),
        report
            .memory
            .map_or(Dynamic::UNIT, |mem| Dynamic::from_int(mem.available as i64)),
    );
    Ok(m)
}

/// The build caches for the steps' environment: the job's settings over the engine's own.
fn build_caches(ctx: &JobCtx) -> Map {
    let env = ctx.settings.env.clone();
    let caches = resources::build_caches(&move |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    });
    let dir = |l: Option<resources::Located>| {
        l.map_or(Dynamic::UNIT, |l| {
            Dynamic::from(l.path.display().to_string())
        })
    };
    let mut m = Map::new();
    m.insert("go_build".into(), dir(caches.go_build));
    m.insert("go_modules".into(), dir(caches.go_modules));
    m.insert("pnpm_store".into(), dir(caches.pnpm_store));
    m
}

/// Registers the functions on `engine`, bound to one job's context.
pub fn register(engine: &mut Engine, ctx: &Arc<JobCtx>) {
    engine.register_fn("artifact_key", |parts: Map| -> Res<String> {
        Ok(key_of(&parts_of("artifact_key", parts)?))
    });
    let c = ctx.clone();
    engine.register_fn("artifact_fetch", move |parts: Map, dest: &str| {
        artifact_fetch(&c, parts, dest)
    });
    let c = ctx.clone();
    engine.register_fn("artifact_store", move |parts: Map, path: &str| {
        artifact_store(&c, parts, path)
    });
    let c = ctx.clone();
    engine.register_fn("check_resources", move |demand: Map| {
        check_resources(&c, demand)
    });
    engine.register_fn("disk_usage", |path: &str| -> i64 {
        resources::usage(Path::new(path), &mut HashSet::new()).bytes as i64
    });
    let c = ctx.clone();
    engine.register_fn("build_caches", move || build_caches(&c));
}
