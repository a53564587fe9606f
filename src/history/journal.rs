//! Owns the journal file: appends one event per line, each record fsynced, rotated by size, and reads them
//! back skipping a line torn by a crash; it never interprets the events.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Event;
use crate::fs::OwnDir;
use crate::layout::Layout;

/// Journal files kept after rotation (`journal.1.jsonl` is the newest rotated one).
pub(super) const ROTATED: usize = 3;

/// The journal under the engine's directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    /// How many trailing components of `dir` are the engine's own (never followed through a link).
    own: usize,
    max_bytes: u64,
}

const CURRENT: &str = "journal.jsonl";

fn rotated(n: usize) -> String {
    format!("journal.{n}.jsonl")
}

/// The size past which the journal is rotated.
const MAX_BYTES: u64 = 8 << 20;

impl Journal {
    /// The journal of a state directory: `.t8k-engine/history`, both the engine's own.
    pub fn open(layout: &Layout) -> Journal {
        Journal::new(&layout.journal_dir, 2, MAX_BYTES)
    }

    /// The requests journal of a state directory (`.t8k-engine/requests`): `serve` records there who
    /// asked for what, so that the network-facing process never writes the engine's own journal.
    pub fn requests(layout: &Layout) -> Journal {
        Journal::new(&layout.requests_dir, 2, MAX_BYTES)
    }

    /// The journal in `dir` (created on first write), rotated past `max_bytes`; the last `own`
    /// components of `dir` are the engine's own directories (2 for `.t8k-engine/history`).
    pub fn new(dir: &Path, own: usize, max_bytes: u64) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
            own,
            max_bytes,
        }
    }

    /// Appends one event durably: a crash can tear at most this line, never an earlier one.
    pub fn append(&self, event: &Event) -> Result<()> {
        let dir = OwnDir::open(&self.dir, self.own)?;
        let path = dir.join(CURRENT);
        // Reasons and step names can quote command lines and output: no credential is kept on disk.
        let mut value = serde_json::to_value(event)?;
        crate::redact::redact_json(&mut value);
        let mut line = value.to_string();
        line.push('\n');
        let open = || -> Result<std::fs::File> {
            (|| -> std::io::Result<()> {
                crate::fault_point!("journal.append");
                Ok(())
            })()
            .with_context(|| format!("cannot append to {}", path.display()))?;
            dir.append(CURRENT)
        };
        let mut f = open()?;
        if f.metadata().is_ok_and(|m| m.len() >= self.max_bytes) {
            drop(f);
            self.rotate(&dir)?;
            f = open()?;
        }
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

    fn rotate(&self, dir: &OwnDir) -> Result<()> {
        let _ = dir.remove(rotated(ROTATED));
        let fd = dir.fd();
        for n in (1..ROTATED).rev() {
            let _ = rustix::fs::renameat(fd, rotated(n).as_str(), fd, rotated(n + 1).as_str());
        }
        rustix::fs::renameat(fd, CURRENT, fd, rotated(1).as_str())
            .map_err(std::io::Error::from)
            .context("cannot rotate the journal")?;
        dir.sync()
    }

    /// The journal's files that exist, oldest first, each opened for reading through the checked
    /// directory (no link followed, a file that is not a regular file skipped as [`Journal::read`] skips
    /// it): for readers that follow the journal as it grows and rotates (the fleet bridge tails them).
    /// A journal directory that is a link is refused.
    pub fn open_files(&self) -> Result<Vec<std::fs::File>> {
        let Some(dir) = OwnDir::open_to_read(&self.dir, self.own)? else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = (1..=ROTATED).rev().map(rotated).collect();
        names.push(CURRENT.to_string());
        Ok(names
            .iter()
            .filter_map(|name| dir.open_regular(name).ok().flatten())
            .collect())
    }

    /// The directory its files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The journal's paths, oldest first (some may not exist): the rotated ones, then the current one.
    /// For tests and messages; readers go through [`Journal::read`] or [`Journal::open_files`].
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = (1..=ROTATED)
            .rev()
            .map(|n| self.dir.join(rotated(n)))
            .collect();
        files.push(self.dir.join(CURRENT));
        files
    }

    /// Every readable event, oldest first. Lines that do not parse (a record torn by a crash, a newer
    /// engine's event kinds) are skipped, and so are files that are not regular files.
    pub fn read(&self) -> Vec<Event> {
        let mut events = Vec::new();
        self.for_each(|event| events.push(event));
        events
    }

    /// Every readable event, oldest first, handed to `each` one at a time as it is read (lines that do not
    /// parse and files that are not regular files skipped, as [`Journal::read`] says): a reader that folds
    /// them never holds the whole journal, 32 MiB of records at its largest and several times that parsed.
    pub fn for_each(&self, mut each: impl FnMut(Event)) {
        use std::io::BufRead;
        for file in self.open_files().unwrap_or_default() {
            for line in std::io::BufReader::new(file).split(b'\n') {
                let Ok(line) = line else {
                    break;
                };
                if let Ok(event) = serde_json::from_slice(&line) {
                    each(event);
                }
            }
        }
    }
}

/// Whether a journal file is empty or ends with a whole record.
fn ends_with_newline(f: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().map_or(0, |m| m.len());
    let mut last = [b'\n'];
    len == 0 || (f.read_exact_at(&mut last, len - 1).is_ok() && last[0] == b'\n')
}
