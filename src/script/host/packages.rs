//! Owns `pnpm_dependency()`: what a pnpm project's own files say of one of its dependencies — the range
//! package.json asks for, what pnpm-lock.yaml resolved it to and what node_modules holds — so that a script
//! can tell whether an update would change anything without asking a registry. It only reads.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use rhai::{Dynamic, Engine, Map};
use serde::Deserialize;
use serde_yaml_ng::Value;

use super::Res;

/// A lockfile larger than this is refused rather than read into memory (large monorepos stay far below).
const MAX_LOCKFILE_BYTES: u64 = 64 << 20;
/// package.json files are small; anything larger is not one.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

pub(super) fn register(engine: &mut Engine) {
    engine.register_fn("pnpm_dependency", pnpm_dependency);
}

/// What the project at `dir` says of dependency `name`: #{wanted, specifier, locked, installed}, each a
/// string or () when its file, or the entry in it, is missing.
fn pnpm_dependency(dir: &str, name: &str) -> Res<Map> {
    if !is_package_name(name) {
        return Err(format!(
            "pnpm_dependency(): `{name}` is not an npm package name (such as astro-tractstack or @scope/name)"
        )
        .into());
    }
    let dir = Path::new(dir);
    let found = Found {
        wanted: wanted(&dir.join("package.json"), name)?,
        lock: locked(&dir.join("pnpm-lock.yaml"), name)?,
        installed: installed(&dir.join("node_modules").join(name).join("package.json"))?,
    };
    let text = |v: Option<String>| v.map_or(Dynamic::UNIT, Dynamic::from);
    let (specifier, version) = found.lock.unzip();
    let mut map = Map::new();
    map.insert("wanted".into(), text(found.wanted));
    map.insert("specifier".into(), text(specifier.flatten()));
    map.insert("locked".into(), text(version));
    map.insert("installed".into(), text(found.installed));
    Ok(map)
}

struct Found {
    wanted: Option<String>,
    /// The lockfile's specifier (none in a v5 lockfile without `specifiers`) and resolved version.
    lock: Option<(Option<String>, String)>,
    installed: Option<String>,
}

/// npm's rules for a package name, as far as they matter here: it becomes a path under node_modules, so
/// it must not climb out of it.
fn is_package_name(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.starts_with('_')
            && p.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'-' | b'.' | b'_' | b'~')
            })
    };
    name.len() <= 214
        && match name.strip_prefix('@').map(|s| s.split_once('/')) {
            Some(Some((scope, pkg))) => part(scope) && part(pkg),
            Some(None) => false,
            None => part(name),
        }
}

/// A regular file's text, `None` when it does not exist.
fn read(path: &Path, cap: u64) -> Res<Option<String>> {
    let shown = path.display();
    let Some(file) = crate::fs::open_named(&path.to_string_lossy())
        .map_err(|e| format!("pnpm_dependency(): {e}"))?
    else {
        return Ok(None);
    };
    let mut text = String::new();
    let read = file
        .take(cap + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("pnpm_dependency(): cannot read {shown}: {e}"))?;
    if read as u64 > cap {
        return Err(format!(
            "pnpm_dependency(): {shown} is larger than {} MiB",
            cap >> 20
        )
        .into());
    }
    Ok(Some(text))
}

/// A package.json, parsed; `None` when it does not exist.
fn read_json(path: &Path) -> Res<Option<serde_json::Value>> {
    let Some(text) = read(path, MAX_MANIFEST_BYTES)? else {
        return Ok(None);
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        format!(
            "pnpm_dependency(): {} is not valid JSON: {e}; fix or reinstall it (`pnpm install`)",
            path.display()
        )
        .into()
    })
}

/// The range package.json asks for (dependencies, devDependencies or optionalDependencies).
fn wanted(path: &Path, name: &str) -> Res<Option<String>> {
    let Some(json) = read_json(path)? else {
        return Ok(None);
    };
    Ok(["dependencies", "devDependencies", "optionalDependencies"]
        .iter()
        .find_map(|section| json[section][name].as_str().map(str::to_string)))
}

/// The version node_modules holds.
fn installed(path: &Path) -> Res<Option<String>> {
    let Some(json) = read_json(path)? else {
        return Ok(None);
    };
    Ok(json["version"].as_str().map(str::to_string))
}

/// The parts of pnpm-lock.yaml that name a project's direct dependencies; `packages` and `snapshots`
/// (most of the file) are skipped unread. Lockfile v6 and v9 list the projects under `importers` (`.` is
/// the one at the lockfile's directory); v6 of a single project, and v5, at the top level.
/// (Not `#[serde(flatten)]` for the top level: that would buffer every other entry, `packages` too.)
#[derive(Deserialize)]
struct Lockfile {
    importers: Option<BTreeMap<String, Importer>>,
    specifiers: Option<BTreeMap<String, Value>>,
    dependencies: Option<BTreeMap<String, Value>>,
    #[serde(rename = "devDependencies")]
    dev_dependencies: Option<BTreeMap<String, Value>>,
    #[serde(rename = "optionalDependencies")]
    optional_dependencies: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize)]
struct Importer {
    /// v5: the ranges, apart from the versions.
    specifiers: Option<BTreeMap<String, Value>>,
    dependencies: Option<BTreeMap<String, Value>>,
    #[serde(rename = "devDependencies")]
    dev_dependencies: Option<BTreeMap<String, Value>>,
    #[serde(rename = "optionalDependencies")]
    optional_dependencies: Option<BTreeMap<String, Value>>,
}

/// A scalar as text: pnpm writes versions as strings, but YAML reads `1.0` as a number.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Importer {
    /// `(specifier, version)` of a direct dependency; the version without the peers pnpm appends in
    /// parentheses (`9.5.5(astro@5.18.2)`) or, before v6, after an underscore.
    fn entry(&self, name: &str) -> Option<(Option<String>, String)> {
        let entry = [
            &self.dependencies,
            &self.dev_dependencies,
            &self.optional_dependencies,
        ]
        .into_iter()
        .flatten()
        .find_map(|deps| deps.get(name))?;
        let (specifier, version) = match entry {
            Value::Mapping(m) => (
                m.get("specifier").and_then(scalar),
                m.get("version").and_then(scalar)?,
            ),
            other => (
                self.specifiers
                    .as_ref()
                    .and_then(|s| s.get(name))
                    .and_then(scalar),
                scalar(other)?,
            ),
        };
        let bare = version
            .split('(')
            .next()
            .unwrap_or_default()
            .split('_')
            .next()
            .unwrap_or_default()
            .to_string();
        Some((specifier, bare))
    }
}

fn locked(path: &Path, name: &str) -> Res<Option<(Option<String>, String)>> {
    let Some(text) = read(path, MAX_LOCKFILE_BYTES)? else {
        return Ok(None);
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let lock: Lockfile = serde_yaml_ng::from_str(&text).map_err(|e| {
        format!(
            "pnpm_dependency(): {} is not a pnpm lockfile: {e}",
            path.display()
        )
    })?;
    Ok(match lock.importers {
        Some(mut importers) => importers.remove(".").and_then(|p| p.entry(name)),
        None => Importer {
            specifiers: lock.specifiers,
            dependencies: lock.dependencies,
            dev_dependencies: lock.dev_dependencies,
            optional_dependencies: lock.optional_dependencies,
        }
        .entry(name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn found(dir: &tempfile::TempDir, name: &str) -> Vec<Option<String>> {
        let map = pnpm_dependency(dir.path().to_str().unwrap(), name).unwrap();
        ["wanted", "specifier", "locked", "installed"]
            .iter()
            .map(|k| map[*k].clone().into_string().ok())
            .collect()
    }

    fn some(v: &[&str]) -> Vec<Option<String>> {
        v.iter().map(|s| Some(s.to_string())).collect()
    }

    const MANIFEST: &str = r#"{"dependencies": {"astro": "5.18.2", "astro-tractstack": "^2.0.0"}}"#;

    #[test]
    fn the_fixture_frontends_lockfile_is_read() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/site/frontend");
        let lock = std::fs::read_to_string(fixture.join("pnpm-lock.yaml")).unwrap();
        let manifest = std::fs::read_to_string(fixture.join("package.json")).unwrap();
        let dir = project(&[
            ("package.json", &manifest),
            ("pnpm-lock.yaml", &lock),
            (
                "node_modules/astro-tractstack/package.json",
                r#"{"name": "astro-tractstack", "version": "2.0.0"}"#,
            ),
        ]);
        assert_eq!(
            found(&dir, "astro-tractstack"),
            some(&["^2.0.0", "^2.0.0", "2.0.0", "2.0.0"])
        );
        // Peers are cut from the version; nothing installed is ().
        assert_eq!(
            found(&dir, "@astrojs/node"),
            [
                Some("9.5.5".into()),
                Some("9.5.5".into()),
                Some("9.5.5".into()),
                None
            ]
        );
        assert_eq!(found(&dir, "left-pad"), [None, None, None, None]);
    }

    #[test]
    fn lockfiles_of_pnpm_8_and_7_are_read_too() {
        let v6 = "lockfileVersion: '6.0'\n\ndependencies:\n  astro-tractstack:\n    specifier: ^2.0.0\n    version: 2.0.1(astro@5.18.2)\n\npackages:\n\n  /astro-tractstack@2.0.1(astro@5.18.2):\n    resolution: {integrity: sha512-x}\n";
        let dir = project(&[("package.json", MANIFEST), ("pnpm-lock.yaml", v6)]);
        assert_eq!(
            found(&dir, "astro-tractstack")[..3],
            some(&["^2.0.0", "^2.0.0", "2.0.1"])
        );
        let v5 = "lockfileVersion: 5.4\n\nspecifiers:\n  astro-tractstack: ^2.0.0\n\ndependencies:\n  astro-tractstack: 2.0.1_astro@5.18.2\n";
        let dir = project(&[("package.json", MANIFEST), ("pnpm-lock.yaml", v5)]);
        assert_eq!(
            found(&dir, "astro-tractstack")[..3],
            some(&["^2.0.0", "^2.0.0", "2.0.1"])
        );
        // A workspace whose root project does not list it: not locked for this project.
        let workspace = "lockfileVersion: '9.0'\n\nimporters:\n\n  packages/site:\n    dependencies:\n      astro-tractstack:\n        specifier: ^2.0.0\n        version: 2.0.1\n";
        let dir = project(&[("pnpm-lock.yaml", workspace)]);
        assert_eq!(found(&dir, "astro-tractstack"), [None, None, None, None]);
    }

    #[test]
    fn what_cannot_be_read_is_an_error_naming_the_file_and_bad_names_are_refused() {
        let dir = project(&[
            ("package.json", MANIFEST),
            ("pnpm-lock.yaml", "{ not: [yaml"),
        ]);
        let err = pnpm_dependency(dir.path().to_str().unwrap(), "astro-tractstack")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pnpm-lock.yaml is not a pnpm lockfile"),
            "{err}"
        );
        let dir = project(&[("package.json", "{")]);
        let err = pnpm_dependency(dir.path().to_str().unwrap(), "astro-tractstack")
            .unwrap_err()
            .to_string();
        assert!(err.contains("package.json is not valid JSON"), "{err}");
        for bad in ["../x", "a/b", "@scope", "@a/../b", ".bin", "", "A"] {
            assert!(
                pnpm_dependency("/nonexistent", bad).is_err(),
                "`{bad}` is refused"
            );
        }
        assert!(is_package_name("@astrojs/node") && is_package_name("astro-tractstack"));
    }
}
