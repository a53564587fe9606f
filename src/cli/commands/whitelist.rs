//! `t8k-engine whitelist`: the Tailwind classes a built site uses, into a safelist file; it works on any
//! directory, so it needs no configuration.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::error::Exit;

/// Extracts and writes; prints the figures (as JSON with `stats`).
pub fn run(dist: &Path, out: &Path, extra: &[PathBuf], stats: bool) -> Result<Exit> {
    let s = crate::whitelist::extract_to_file(dist, out, extra)?;
    if stats {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        let what = if s.written { "wrote" } else { "unchanged" };
        println!(
            "{what} {}: {} classes from {} files in {} ms",
            out.display(),
            s.classes,
            s.files,
            s.elapsed_ms
        );
    }
    Ok(Exit::Ok)
}
