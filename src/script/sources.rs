//! Owns where script text comes from: the operator's scripts directory first, the built-in copies second,
//! and `import` paths confined to that set; it never evaluates anything itself.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope, Shared};

/// The shipped scripts, compiled into the binary as defaults.
pub const BUILTIN: &[(&str, &str)] = &[
    ("main.rhai", include_str!("../../scripts/main.rhai")),
    ("multi.rhai", include_str!("../../scripts/multi.rhai")),
    (
        "dedicated.rhai",
        include_str!("../../scripts/dedicated.rhai"),
    ),
    (
        "lib/common.rhai",
        include_str!("../../scripts/lib/common.rhai"),
    ),
];

/// Where scripts are looked up.
#[derive(Debug, Clone)]
pub struct Scripts {
    dir: PathBuf,
}

/// One script's text and where it came from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The script text.
    pub text: String,
    /// How errors name it: the operator's file path, or `<built-in>/NAME`.
    pub origin: String,
}

impl Scripts {
    /// Scripts in `dir` override the built-in ones of the same relative name.
    pub fn new(dir: &Path) -> Scripts {
        Scripts {
            dir: dir.to_path_buf(),
        }
    }

    /// The operator's scripts directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads `rel` (e.g. `main.rhai`, `lib/common.rhai`); `Ok(None)` when neither copy exists.
    pub fn load(&self, rel: &str) -> Result<Option<Source>> {
        let path = self.dir.join(rel);
        // A link to a script is followed (the operator's choice); anything but a regular file in its place
        // is an error, never a silent fall-back to the built-in script (and a FIFO is never read).
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "cannot read script {}: check its permissions",
                        path.display()
                    )
                })?;
                return Ok(Some(Source {
                    text,
                    origin: path.display().to_string(),
                }));
            }
            Ok(_) => anyhow::bail!(
                "script {} is not a regular file: put the script there, or remove it to use the built-in one",
                path.display()
            ),
            Err(e) if std::fs::symlink_metadata(&path).is_ok() => {
                return Err(e).with_context(|| {
                    format!(
                        "script {} is a link to nothing that can be read: fix or remove the link",
                        path.display()
                    )
                });
            }
            Err(_) => {}
        }
        Ok(BUILTIN
            .iter()
            .find(|(name, _)| *name == rel)
            .map(|(name, text)| Source {
                text: (*text).to_string(),
                origin: format!("<built-in>/{name}"),
            }))
    }

    /// Every script name in effect: the built-in ones plus the operator's `*.rhai` files (top level and `lib/`).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
        for sub in ["", "lib"] {
            let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".rhai") && entry.path().is_file() {
                    names.push(if sub.is_empty() {
                        name
                    } else {
                        format!("{sub}/{name}")
                    });
                }
            }
        }
        names.sort();
        names.dedup();
        names
    }

    /// Writes the built-in scripts into the operator's directory; existing files are kept unless `force`.
    /// Each copy written records the built-in it came from (see `copies`), for `check` and `scripts diff`.
    pub fn write_defaults(&self, force: bool) -> Result<Vec<(PathBuf, bool)>> {
        let mut written = Vec::new();
        for (name, text) in BUILTIN {
            let path = self.dir.join(name);
            if path.exists() && !force {
                // A kept copy that is still this built-in gets it as its base, so a later built-in that
                // moves past it is noticed as such rather than as a copy of unknown origin.
                if read_regular(&path).is_ok_and(|t| t == *text) {
                    super::copies::record_base(&self.dir, name)?;
                }
                written.push((path, false));
                continue;
            }
            let parent = path.parent().expect("script paths have a parent");
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            crate::fs::write_durably(&path, text.as_bytes())?;
            super::copies::record_base(&self.dir, name)?;
            written.push((path, true));
        }
        Ok(written)
    }
}

/// Reads a script file, following a link but never reading anything that is not a regular file (a FIFO
/// would block the engine).
pub(crate) fn read_regular(path: &Path) -> std::io::Result<String> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    std::fs::read_to_string(path)
}

/// Resolves `import "lib/common" as x;` from the same place as entry scripts, refusing anything that
/// could escape the scripts directory.
pub struct Resolver {
    scripts: Scripts,
}

impl Resolver {
    /// A resolver over `scripts`.
    pub fn new(scripts: Scripts) -> Resolver {
        Resolver { scripts }
    }
}

/// Whether an import path stays inside the scripts directory.
pub fn import_path_ok(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

impl ModuleResolver for Resolver {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        if !import_path_ok(path) {
            // A runtime error, because Rhai replaces the text of a module-not-found error with the bare path.
            return Err(EvalAltResult::ErrorRuntime(
                format!("import \"{path}\": imports are relative names inside the scripts directory, like \"lib/common\"").into(),
                pos,
            )
            .into());
        }
        let rel = format!("{path}.rhai");
        let source = self
            .scripts
            .load(&rel)
            .map_err(|e| {
                Box::new(EvalAltResult::ErrorModuleNotFound(
                    format!("{path} ({e:#})"),
                    pos,
                ))
            })?
            .ok_or_else(|| Box::new(EvalAltResult::ErrorModuleNotFound(path.to_string(), pos)))?;
        let mut ast = engine.compile(&source.text).map_err(|e| {
            Box::new(EvalAltResult::ErrorInModule(
                source.origin.clone(),
                e.into(),
                pos,
            ))
        })?;
        ast.set_source(source.origin.clone());
        let module = Module::eval_ast_as_new(Scope::new(), &ast, engine)
            .map_err(|e| Box::new(EvalAltResult::ErrorInModule(source.origin.clone(), e, pos)))?;
        Ok(module.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_copy_overrides_builtin() {
        let dir = tempfile::tempdir().unwrap();
        let s = Scripts::new(dir.path());
        assert!(
            s.load("main.rhai")
                .unwrap()
                .unwrap()
                .origin
                .starts_with("<built-in>")
        );
        std::fs::write(dir.path().join("main.rhai"), "fn build(job) {}").unwrap();
        let src = s.load("main.rhai").unwrap().unwrap();
        assert_eq!(src.text, "fn build(job) {}");
        assert!(src.origin.ends_with("main.rhai") && !src.origin.starts_with('<'));
        assert!(s.load("nope.rhai").unwrap().is_none());
    }

    #[test]
    fn import_paths_are_confined() {
        for ok in ["lib/common", "x", "lib/a-b_c"] {
            assert!(import_path_ok(ok), "{ok}");
        }
        for bad in [
            "/etc/passwd",
            "../x",
            "lib/../x",
            "lib//x",
            ".hidden",
            "",
            "a b",
            "lib/x.rhai",
        ] {
            assert!(!import_path_ok(bad), "{bad}");
        }
    }

    #[test]
    fn defaults_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Scripts::new(&dir.path().join("scripts"));
        let first = s.write_defaults(false).unwrap();
        assert!(first.iter().all(|(_, w)| *w));
        assert!(dir.path().join("scripts/lib/common.rhai").is_file());
        std::fs::write(dir.path().join("scripts/main.rhai"), "edited").unwrap();
        let second = s.write_defaults(false).unwrap();
        assert!(second.iter().all(|(_, w)| !*w));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("scripts/main.rhai")).unwrap(),
            "edited"
        );
        assert_eq!(
            s.names(),
            [
                "dedicated.rhai",
                "lib/common.rhai",
                "main.rhai",
                "multi.rhai"
            ]
        );
    }
}
