//! Owns the names of inbox files: which are safe to handle, how an unsafe one is shown, which `*.csv`
//! files no engine runs (and what to tell the operator), and a set-aside name's original; it never
//! touches a file's content.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::Result;

use super::read_dir;

/// A new trigger's name: seconds first, so that names sort with `build-$(date +%s).csv` from other
/// producers; the ULID keeps them unique.
pub fn new_trigger_name() -> String {
    trigger_name_from(&mut ulid::Generator::new())
}

/// A new trigger name whose ULID comes from `ids`: names made one after another from one generator sort in
/// the order they were made, even within a millisecond (`trigger --all-sites`).
pub fn trigger_name_from(ids: &mut ulid::Generator) -> String {
    let secs = jiff::Timestamp::now().as_second();
    let id = ids.generate().unwrap_or_else(|_| ulid::Ulid::new());
    format!("build-{secs}-{id}.csv")
}

/// A `*.csv` file in the inbox that no engine runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    /// Its name (lossy when not UTF-8).
    pub name: String,
    /// What to tell the operator: the name, the pattern, how to run it.
    pub warning: String,
}

/// `*.csv` files in the inbox that are not named `build-*.csv`, so no engine runs them (the newest
/// TractStack docs say `state/main_build.csv`), byte-wise sorted; each with the warning to log.
pub fn strays(inbox: &Path) -> Result<Vec<Stray>> {
    let mut names: Vec<String> = read_dir(inbox)?
        .map(|e| e.file_name())
        .filter(|raw| {
            let b = raw.as_bytes();
            let csv = b.len() >= 4 && b[b.len() - 4..].eq_ignore_ascii_case(b".csv");
            // `build-*.csv` names are pending's: it runs them or sets them aside as unsafe.
            let trigger_shaped = b.starts_with(b"build-") && b.ends_with(b".csv") && b.len() > 10;
            csv && !b.starts_with(b".") && !trigger_shaped
        })
        .map(|raw| raw.to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| Stray {
            warning: stray_warning(inbox, &name),
            name,
        })
        .collect())
}

/// What to tell about a `*.csv` file that no engine runs: its name, the pattern, and how to run it.
fn stray_warning(inbox: &Path, name: &str) -> String {
    let mut text = format!(
        "ignored: {} does not match build-*.csv; rename it to build-….csv to run it",
        name.escape_debug()
    );
    // The command is offered only when nothing in it needs quoting, so that pasting it is safe.
    let plain = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:+".contains(&b))
    };
    if plain(name) && plain(&inbox.display().to_string()) {
        text.push_str(&format!(
            " (mv -n {dir}/{name} {dir}/build-$(date +%s).csv)",
            dir = inbox.display()
        ));
    }
    text
}

/// The inbox name of a set-aside trigger (`build-1.csv.2` was the second `build-1.csv` set aside).
pub(super) fn original_name(name: &str) -> &str {
    match name.rsplit_once(".csv.") {
        Some((stem, n)) if n.chars().all(|c| c.is_ascii_digit()) => &name[..stem.len() + 4],
        _ => name,
    }
}

/// Names a trigger may have: ASCII letters, digits and `. _ - : +` (so `build-$(date -Iseconds).csv`,
/// `build-2026-01-01T10:00:00+00:00.csv`, is one), at most 128 bytes. No `/`, space, quote, control byte or
/// shell character ever reaches a log line, a reason file or a child's environment from a name.
pub(super) fn safe_name(name: &str) -> bool {
    name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'+'))
}

pub(super) fn sanitize(bytes: &[u8]) -> String {
    let mut out: String = bytes
        .iter()
        .take(120)
        .map(|&b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'+') {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    if !out.ends_with(".csv") {
        out.push_str(".csv");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_names() {
        assert_eq!(original_name("build-1.csv"), "build-1.csv");
        assert_eq!(original_name("build-1.csv.12"), "build-1.csv");
        assert_eq!(original_name("build-1.csv.x"), "build-1.csv.x");
    }
}
