//! Owns the journal file: appends one event per line, each record fsynced, rotated by size, and reads them
//! back skipping a line torn by a crash; it never interprets the events.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Event;
use crate::layout::Layout;

/// Journal files kept after rotation (`journal.1.jsonl` is the newest rotated one).
pub(super) const ROTATED: usize = 3;

/// The journal under the engine's directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    max_bytes: u64,
}

/// The size past which the journal is rotated.
const MAX_BYTES: u64 = 8 << 20;

impl Journal {
    /// The journal of a state directory (`state/.t8k-engine/history/`).
    pub fn open(layout: &Layout) -> Journal {
        Journal::new(&layout.journal_dir, MAX_BYTES)
    }

    /// The journal in `dir` (created on first write), rotated past `max_bytes`.
    pub fn new(dir: &Path, max_bytes: u64) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
            max_bytes,
        }
    }

    fn current(&self) -> PathBuf {
        self.dir.join("journal.jsonl")
    }

    fn rotated(&self, n: usize) -> PathBuf {
        self.dir.join(format!("journal.{n}.jsonl"))
    }

    /// Appends one event durably: a crash can tear at most this line, never an earlier one.
    pub fn append(&self, event: &Event) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let path = self.current();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= self.max_bytes) {
            self.rotate()?;
        }
        // Reasons and step names can quote command lines and output: no credential is kept on disk.
        let mut value = serde_json::to_value(event)?;
        crate::redact::redact_json(&mut value);
        let mut line = value.to_string();
        line.push('\n');
        let mut f = (|| {
            crate::fault_point!("journal.append");
            std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)
        })()
        .with_context(|| format!("cannot append to {}", path.display()))?;
        if !ends_with_newline(&f) {
            // The last record was torn by a crash: end it, or this record would join it and be lost too.
            line.insert(0, '\n');
        }
        // One write call per record, so that concurrent readers see whole lines or a torn last one.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("journal.torn", |_| {
            // A crash in the middle of the write: half a record reaches the file, then the engine dies.
            let _ = f.write_all(&line.as_bytes()[..line.len() / 2]);
            let _ = f.sync_data();
            Err(crate::faults::injected("journal.torn", Some("kill".into())).into())
        });
        f.write_all(line.as_bytes())
            .with_context(|| format!("cannot append to {}", path.display()))?;
        f.sync_data()
            .with_context(|| format!("cannot sync {}", path.display()))?;
        Ok(())
    }

    fn rotate(&self) -> Result<()> {
        let _ = std::fs::remove_file(self.rotated(ROTATED));
        for n in (1..ROTATED).rev() {
            let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        std::fs::rename(self.current(), self.rotated(1)).context("cannot rotate the journal")?;
        crate::fs::sync_dir(&self.dir)
    }

    /// Every readable event, oldest first. Lines that do not parse (a record torn by a crash, a newer
    /// engine's event kinds) are skipped.
    pub fn read(&self) -> Vec<Event> {
        let mut files: Vec<PathBuf> = (1..=ROTATED).rev().map(|n| self.rotated(n)).collect();
        files.push(self.current());
        files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect::<Vec<Event>>()
            })
            .collect()
    }
}

/// Whether a journal file is empty or ends with a whole record.
fn ends_with_newline(f: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().map_or(0, |m| m.len());
    let mut last = [b'\n'];
    len == 0 || (f.read_exact_at(&mut last, len - 1).is_ok() && last[0] == b'\n')
}
