//! Owns reading the engine's journal as an outbox: whole new records in order across rotations, from a
//! durable cursor (file identity and offset) kept in the bridge's own directory, each with a content id
//! that de-duplicates a re-send; it never writes the journal and never publishes. The journal's files are
//! opened through the engine's checked directory, never through a link.

use std::fs::File;
use std::io::{Read as _, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::fs::OwnDir;
use crate::history::Journal;

/// The cursor's file in the bridge's directory.
const CURSOR: &str = "events.cursor";

/// Where the tail has got to: a file (inode and a hash of its first record, since inodes are reused after
/// rotation deletes a file) and the offset after the last record sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Cursor {
    /// The file's inode.
    pub ino: u64,
    /// A hash of its first line.
    pub head: String,
    /// Bytes of it already sent.
    pub offset: u64,
}

/// One journal record.
#[derive(Debug, Clone)]
pub struct Record {
    /// The line, without its newline.
    pub line: String,
    /// Its `event` field.
    pub event: String,
    /// A hash of the line: its de-duplicating id.
    pub digest: String,
    /// The cursor just after it.
    pub after: Cursor,
}

/// What one read found.
#[derive(Debug, Default)]
pub struct Batch {
    /// Whole records, oldest first.
    pub records: Vec<Record>,
    /// The cursor's file is gone: the journal rotated past records not yet sent.
    pub lost: bool,
}

/// The journal and the cursor's directory.
pub struct Tail {
    journal: Journal,
    dir: Arc<OwnDir>,
    /// Where sending has got to.
    pub cursor: Option<Cursor>,
}

fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(bytes);
    hash[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The identity of a journal file: its inode and a hash of its first whole line (None until it has one).
fn identity(f: &mut File) -> Option<(u64, String)> {
    let ino = f.metadata().ok()?.ino();
    f.seek(SeekFrom::Start(0)).ok()?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    // Records are small: the first line is nearly always within the first read.
    while head.len() < (1 << 20) {
        let n = f.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = memchr::memchr(b'\n', &head) {
            return Some((ino, digest(&head[..end])));
        }
    }
    None
}

impl Tail {
    /// The tail of `journal`, with its cursor kept in `dir` (the bridge's own directory).
    pub fn open(journal: Journal, dir: Arc<OwnDir>) -> Tail {
        let cursor = dir
            .read(CURSOR, 1 << 16)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Tail {
            journal,
            dir,
            cursor,
        }
    }

    /// Up to `max` whole records after the cursor.
    pub fn read(&self, max: usize) -> Result<Batch> {
        let mut files: Vec<(File, (u64, String))> = self
            .journal
            .open_files()?
            .into_iter()
            .filter_map(|mut f| identity(&mut f).map(|id| (f, id)))
            .collect();
        let mut out = Batch::default();
        let (mut index, mut offset) = match &self.cursor {
            None => (0, 0),
            Some(c) => match files
                .iter()
                .position(|(_, (ino, head))| *ino == c.ino && *head == c.head)
            {
                Some(i) => (i, c.offset),
                None => {
                    out.lost = !files.is_empty();
                    (0, 0)
                }
            },
        };
        while index < files.len() && out.records.len() < max {
            let (file, (ino, head)) = &mut files[index];
            read_records(file, *ino, head, offset, max, &mut out.records)?;
            if index + 1 == files.len() || out.records.len() >= max {
                break;
            }
            // A rotated file never grows again; a torn last line in it is never completed.
            index += 1;
            offset = 0;
        }
        Ok(out)
    }

    /// Remembers durably that everything up to `cursor` was sent.
    pub fn commit(&mut self, cursor: Cursor) -> Result<()> {
        self.dir
            .write(CURSOR, serde_json::to_string(&cursor)?.as_bytes(), true)?;
        self.cursor = Some(cursor);
        Ok(())
    }
}

/// Appends the whole records of `file` (whose inode and first-line hash are `ino` and `head`) from `offset`
/// to `out` (at most `max` in all).
fn read_records(
    file: &mut File,
    ino: u64,
    head: &str,
    offset: u64,
    max: usize,
    out: &mut Vec<Record>,
) -> Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.take(4 << 20).read_to_end(&mut bytes)?;
    let mut pos = 0usize;
    while out.len() < max {
        let Some(end) = memchr::memchr(b'\n', &bytes[pos..]) else {
            break;
        };
        let line = &bytes[pos..pos + end];
        pos += end + 1;
        let after = Cursor {
            ino,
            head: head.to_string(),
            offset: offset + pos as u64,
        };
        // A fragment torn by a crash (ended by the next record's leading newline) is not a record.
        let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(line)
        else {
            if let Some(last) = out.last_mut() {
                last.after = after;
            }
            continue;
        };
        let event = map
            .get("event")
            .and_then(|e| e.as_str())
            .unwrap_or("other")
            .to_string();
        out.push(Record {
            line: String::from_utf8_lossy(line).into_owned(),
            event,
            digest: digest(line),
            after,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;

    fn journal(dir: &Path) -> crate::history::Journal {
        crate::history::Journal::new(dir, 1, 300)
    }

    /// The bridge's directory beside the journal's.
    fn own(dir: &Path) -> Arc<OwnDir> {
        Arc::new(OwnDir::open(&dir.join("fleet"), 1).unwrap())
    }

    fn event(i: usize) -> crate::history::Event {
        crate::history::Event::Superseded {
            trigger: format!("build-{i}.csv"),
            by: format!("build-{}.csv", i + 1),
            at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn lines(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| {
                serde_json::from_str::<serde_json::Value>(&r.line).unwrap()["trigger"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn every_record_once_in_order_across_rotations_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path());
        let mut sent = Vec::new();
        for round in 0..6 {
            for i in 0..3 {
                j.append(&event(round * 3 + i)).unwrap();
            }
            // A new tail each round: the cursor is all that carries over.
            let mut tail = Tail::open(j.clone(), own(dir.path()));
            loop {
                let read = tail.read(2).unwrap();
                assert!(!read.lost);
                let Some(last) = read.records.last() else {
                    break;
                };
                let after = last.after.clone();
                sent.extend(lines(&read.records));
                tail.commit(after).unwrap();
            }
        }
        let expected: Vec<String> = (0..18).map(|i| format!("build-{i}.csv")).collect();
        assert_eq!(sent, expected);
    }

    #[test]
    fn a_torn_record_is_skipped_and_the_next_one_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let j = crate::history::Journal::new(dir.path(), 1, 1 << 20);
        j.append(&event(0)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal.jsonl"))
            .unwrap();
        f.write_all(b"{\"event\":\"supers").unwrap();
        let tail = Tail::open(j.clone(), own(dir.path()));
        assert_eq!(lines(&tail.read(10).unwrap().records), ["build-0.csv"]);
        j.append(&event(1)).unwrap();
        let read = tail.read(10).unwrap();
        assert_eq!(lines(&read.records), ["build-0.csv", "build-1.csv"]);
        assert_ne!(read.records[0].digest, read.records[1].digest);
    }

    #[test]
    fn a_cursor_whose_file_rotated_away_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path());
        j.append(&event(0)).unwrap();
        let mut tail = Tail::open(j.clone(), own(dir.path()));
        let first = tail.read(1).unwrap().records[0].after.clone();
        tail.commit(first).unwrap();
        for i in 1..40 {
            j.append(&event(i)).unwrap();
        }
        let read = tail.read(100).unwrap();
        assert!(read.lost);
        assert!(!read.records.is_empty());
    }
}
