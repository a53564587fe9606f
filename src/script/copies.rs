//! Owns the record of which built-in version each operator copy of a shipped script came from, and the
//! diffs and three-way merges against it (`scripts diff`, `scripts merge`), as dpkg does for changed
//! conffiles; it never evaluates a script. The pristine base of every copy is kept under
//! `<scripts>/.t8k-engine-base/`, which no `import` can reach (names starting with `.` are refused).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::sources::{BUILTIN, Scripts};

/// The directory, inside the operator's scripts directory, that holds the bases.
pub const BASE_DIR: &str = ".t8k-engine-base";

/// Where one copy came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    /// The engine version whose built-in script was copied.
    pub engine_version: String,
    /// SHA-256 of the copied built-in text.
    pub sha256: String,
    /// When it was copied (or last merged).
    pub copied_at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    files: BTreeMap<String, Base>,
}

/// How an operator's copy of a shipped script stands against this binary's built-in one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No copy: the built-in runs.
    BuiltIn,
    /// The copy's base is this binary's built-in (`edited`: the operator changed it since).
    Current {
        /// The operator changed the copy.
        edited: bool,
    },
    /// The built-in changed since the copy was made.
    Behind {
        /// What the copy was made from.
        base: Base,
        /// The operator changed the copy.
        edited: bool,
    },
    /// The copy differs from the built-in and no base is recorded (hand-written, or made by an older
    /// `scripts init`).
    Unknown,
}

/// One shipped script as the operator has it.
#[derive(Debug, Clone)]
pub struct Copy {
    /// Relative name, e.g. `lib/common.rhai`.
    pub name: &'static str,
    /// The operator's file.
    pub path: PathBuf,
    /// How it stands.
    pub state: State,
}

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn builtin(name: &str) -> Option<(&'static str, &'static str)> {
    BUILTIN.iter().copied().find(|(n, _)| *n == name)
}

fn manifest_path(dir: &Path) -> PathBuf {
    dir.join(BASE_DIR).join("manifest.json")
}

fn read_manifest(dir: &Path) -> Manifest {
    std::fs::read(manifest_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The recorded base of `name`: its record and its text, when both are there and agree.
fn base_of(dir: &Path, name: &str) -> Option<(Base, String)> {
    let record = read_manifest(dir).files.remove(name)?;
    let text = std::fs::read_to_string(dir.join(BASE_DIR).join(name)).ok()?;
    (sha256(&text) == record.sha256).then_some((record, text))
}

/// Records this binary's built-in `name` as the base of the operator's copy.
pub fn record_base(dir: &Path, name: &str) -> Result<()> {
    let (name, text) = builtin(name).with_context(|| format!("{name} is not a shipped script"))?;
    let path = dir.join(BASE_DIR).join(name);
    let parent = path.parent().expect("base paths have a parent");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    crate::fs::write_durably(&path, text.as_bytes())?;
    let mut manifest = read_manifest(dir);
    manifest.files.insert(
        name.to_string(),
        Base {
            engine_version: env!("CARGO_PKG_VERSION").to_string(),
            sha256: sha256(text),
            copied_at: jiff::Timestamp::now().to_string(),
        },
    );
    let json = serde_json::to_vec_pretty(&manifest)?;
    crate::fs::write_durably(&manifest_path(dir), &json)
}

/// Every shipped script and how the operator's copy stands.
pub fn survey(scripts: &Scripts) -> Vec<Copy> {
    let dir = scripts.dir();
    BUILTIN
        .iter()
        .map(|&(name, shipped)| {
            let path = dir.join(name);
            let state = match super::sources::read_regular(&path) {
                Err(_) => State::BuiltIn,
                Ok(copy) => match base_of(dir, name) {
                    Some((base, text)) if base.sha256 == sha256(shipped) => State::Current {
                        edited: copy != text,
                    },
                    Some((base, text)) => State::Behind {
                        edited: copy != text,
                        base,
                    },
                    None if copy == shipped => State::Current { edited: false },
                    None => State::Unknown,
                },
            };
            Copy { name, path, state }
        })
        .collect()
}

/// One warning per copy the built-in has moved past, or whose base is unknown, saying what to run.
pub fn warnings(scripts: &Scripts) -> Vec<String> {
    let shipped_by = format!("t8k-engine {}", env!("CARGO_PKG_VERSION"));
    survey(scripts)
        .into_iter()
        .filter_map(|c| match c.state {
            State::Behind { base, edited } => Some(format!(
                "{} is a copy of the built-in of t8k-engine {} (sha256 {}, copied {}) and {shipped_by}'s built-in has changed since, so its fixes do not reach this server: {}",
                c.path.display(),
                base.engine_version,
                short(&base.sha256),
                base.copied_at,
                if edited {
                    format!("`t8k-engine scripts diff {}` shows your changes and the upstream ones, `t8k-engine scripts merge {}` merges them", c.name, c.name)
                } else {
                    format!("it is unedited, so `t8k-engine scripts merge {}` updates it", c.name)
                }
            )),
            State::Unknown => Some(format!(
                "{} differs from {shipped_by}'s built-in and has no recorded base (written by hand, or by an older `scripts init`): `t8k-engine scripts diff {}` shows the difference; once the copy has what you want from the built-in, `t8k-engine scripts merge --resolved {}` records it (a copy you never edited can simply be removed: the built-in then runs)",
                c.path.display(),
                c.name,
                c.name
            )),
            State::BuiltIn | State::Current { .. } => None,
        })
        .collect()
}

/// The copies `names` selects (all shipped scripts when empty); an unknown name is an error.
fn select(scripts: &Scripts, names: &[String]) -> Result<Vec<Copy>> {
    let all = survey(scripts);
    for n in names {
        if !all.iter().any(|c| c.name == n) {
            bail!(
                "`{n}` is not a shipped script; the shipped ones are {}",
                BUILTIN
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(all
        .into_iter()
        .filter(|c| names.is_empty() || names.iter().any(|n| n == c.name))
        .collect())
}

fn unified(from: &str, to: &str, from_label: &str, to_label: &str) -> String {
    diffy::DiffOptions::new()
        .set_original_filename(from_label.to_string())
        .set_modified_filename(to_label.to_string())
        .create_patch(from, to)
        .to_string()
}

fn conflicts(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("<<<<<<< ")).count()
}

/// `scripts diff`: for each selected copy, the operator's changes (base → copy), the upstream changes
/// (base → built-in) and the merge proposal as a diff of the copy; a copy without a base is compared with
/// the built-in directly.
pub fn diff(scripts: &Scripts, names: &[String]) -> Result<String> {
    let dir = scripts.dir();
    let version = env!("CARGO_PKG_VERSION");
    let mut out = String::new();
    for c in select(scripts, names)? {
        let (_, shipped) = builtin(c.name).expect("surveyed names are shipped");
        let copy = super::sources::read_regular(&c.path).unwrap_or_default();
        let copy_label = c.path.display().to_string();
        let builtin_label = format!("<built-in of t8k-engine {version}>/{}", c.name);
        match c.state {
            State::BuiltIn => {
                if !names.is_empty() {
                    out.push_str(&format!(
                        "== {}: no copy in {}; the built-in runs\n",
                        c.name,
                        dir.display()
                    ));
                }
            }
            State::Current { edited } => out.push_str(&format!(
                "== {}: up to date with the built-in{}\n",
                c.name,
                if edited { " (with your changes)" } else { "" }
            )),
            State::Unknown => {
                out.push_str(&format!(
                    "== {}: no recorded base; differences between your copy and the built-in:\n",
                    c.name
                ));
                out.push_str(&unified(&copy, shipped, &copy_label, &builtin_label));
            }
            State::Behind { base, .. } => {
                let (_, base_text) = base_of(dir, c.name).expect("a Behind copy has its base");
                let base_label = format!(
                    "<built-in of t8k-engine {}, sha256 {}>/{}",
                    base.engine_version,
                    short(&base.sha256),
                    c.name
                );
                out.push_str(&format!(
                    "== {}: copied from t8k-engine {} on {}; the built-in has changed since\n",
                    c.name, base.engine_version, base.copied_at
                ));
                out.push_str("-- your changes:\n");
                out.push_str(&unified(&base_text, &copy, &base_label, &copy_label));
                out.push_str("-- upstream changes:\n");
                out.push_str(&unified(&base_text, shipped, &base_label, &builtin_label));
                let merged = diffy::merge(&base_text, &copy, shipped);
                let (text, note) = match &merged {
                    Ok(text) => (text, "merges cleanly".to_string()),
                    Err(text) => (
                        text,
                        format!(
                            "{} conflict(s), marked <<<<<<< ours (your copy), ||||||| original (the base), ======= and >>>>>>> theirs (the built-in)",
                            conflicts(text)
                        ),
                    ),
                };
                out.push_str(&format!(
                    "-- merge proposal ({note}); `t8k-engine scripts merge {}` would change your copy so:\n",
                    c.name
                ));
                out.push_str(&unified(
                    &copy,
                    text,
                    &copy_label,
                    &format!("{copy_label} (merged)"),
                ));
            }
        }
    }
    if out.is_empty() {
        out.push_str(&format!(
            "no copies of the shipped scripts in {}: the built-in ones run\n",
            dir.display()
        ));
    }
    Ok(out)
}

/// What `scripts merge` did with one copy.
#[derive(Debug)]
pub enum Merged {
    /// Nothing to do.
    UpToDate(&'static str),
    /// Merged cleanly and written; the previous copy kept beside it.
    Written {
        /// The copy.
        path: PathBuf,
        /// The previous copy.
        old: PathBuf,
    },
    /// Conflicts: the proposal with markers written beside the copy, which is unchanged.
    Conflicts {
        /// The copy.
        path: PathBuf,
        /// The proposal.
        proposal: PathBuf,
        /// How many conflicts.
        count: usize,
    },
    /// No base to merge from: the operator must bring the copy up to date by hand.
    NoBase(&'static str),
    /// `--resolved`: this binary's built-in is recorded as the copy's base.
    Recorded(&'static str),
}

/// `scripts merge`: merges the upstream changes into each selected copy that is behind. A clean merge is
/// written (the previous copy kept as `NAME.old`); conflicts go to `NAME.merged` and the copy is left as it
/// is, so a running engine never loads a half-merged script. With `resolved`, records the built-in as the
/// base of copies the operator has brought up to date by hand.
pub fn merge(scripts: &Scripts, names: &[String], resolved: bool) -> Result<Vec<Merged>> {
    let dir = scripts.dir();
    if resolved && names.is_empty() {
        bail!(
            "--resolved needs the names of the scripts you brought up to date, e.g. `t8k-engine scripts merge --resolved main.rhai`"
        );
    }
    let mut done = Vec::new();
    for c in select(scripts, names)? {
        let (_, shipped) = builtin(c.name).expect("surveyed names are shipped");
        if resolved {
            let copy = super::sources::read_regular(&c.path).with_context(|| {
                format!(
                    "cannot read {}: there is no copy to record",
                    c.path.display()
                )
            })?;
            if conflicts(&copy) > 0 || copy.lines().any(|l| l.starts_with(">>>>>>> ")) {
                bail!(
                    "{} still holds conflict markers (<<<<<<< … >>>>>>>); resolve them first",
                    c.path.display()
                );
            }
            record_base(dir, c.name)?;
            done.push(Merged::Recorded(c.name));
            continue;
        }
        match c.state {
            State::BuiltIn | State::Current { .. } => done.push(Merged::UpToDate(c.name)),
            State::Unknown => done.push(Merged::NoBase(c.name)),
            State::Behind { .. } => {
                let (_, base_text) = base_of(dir, c.name).expect("a Behind copy has its base");
                let copy = super::sources::read_regular(&c.path)
                    .with_context(|| format!("cannot read {}", c.path.display()))?;
                match diffy::merge(&base_text, &copy, shipped) {
                    Ok(merged) => {
                        let old = PathBuf::from(format!("{}.old", c.path.display()));
                        crate::fs::write_durably(&old, copy.as_bytes())?;
                        crate::fs::write_durably(&c.path, merged.as_bytes())?;
                        record_base(dir, c.name)?;
                        done.push(Merged::Written { path: c.path, old });
                    }
                    Err(proposal) => {
                        let at = PathBuf::from(format!("{}.merged", c.path.display()));
                        crate::fs::write_durably(&at, proposal.as_bytes())?;
                        done.push(Merged::Conflicts {
                            count: conflicts(&proposal),
                            path: c.path,
                            proposal: at,
                        });
                    }
                }
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pretends the copy of `name` was made from `older`, an earlier built-in text.
    fn pretend_base(dir: &Path, name: &str, older: &str) {
        let path = dir.join(BASE_DIR).join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, older).unwrap();
        let mut m = read_manifest(dir);
        m.files.insert(
            name.into(),
            Base {
                engine_version: "0.0.9".into(),
                sha256: sha256(older),
                copied_at: "2026-01-01T00:00:00Z".into(),
            },
        );
        std::fs::write(manifest_path(dir), serde_json::to_vec(&m).unwrap()).unwrap();
    }

    #[test]
    fn a_copy_behind_the_built_in_merges_both_sides() {
        let dir = tempfile::tempdir().unwrap();
        let scripts = Scripts::new(dir.path());
        scripts.write_defaults(false).unwrap();
        assert!(warnings(&scripts).is_empty());
        let (_, shipped) = builtin("main.rhai").unwrap();
        // Upstream added the first line since the base; the operator appended one.
        let first_line_end = shipped.find('\n').unwrap() + 1;
        let older = &shipped[first_line_end..];
        pretend_base(dir.path(), "main.rhai", older);
        let mine = format!("{older}// operator's line\n");
        std::fs::write(dir.path().join("main.rhai"), &mine).unwrap();
        let w = warnings(&scripts);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("t8k-engine 0.0.9"), "{}", w[0]);
        let report = diff(&scripts, &["main.rhai".into()]).unwrap();
        assert!(report.contains("-- your changes:"), "{report}");
        assert!(report.contains("+// operator's line"), "{report}");
        assert!(report.contains("merges cleanly"), "{report}");
        let done = merge(&scripts, &[], false).unwrap();
        assert!(
            done.iter()
                .any(|d| matches!(d, Merged::Written { path, .. } if path.ends_with("main.rhai"))),
            "{done:?}"
        );
        let merged = std::fs::read_to_string(dir.path().join("main.rhai")).unwrap();
        assert_eq!(merged, format!("{shipped}// operator's line\n"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("main.rhai.old")).unwrap(),
            mine
        );
        assert!(warnings(&scripts).is_empty());
    }
}
