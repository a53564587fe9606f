//! Owns reading the engine's journal as an outbox: whole new records in order across rotations, from a
//! durable cursor (file identity and offset) kept in the bridge's own directory, each with a content id
//! that de-duplicates a re-send; it never writes the journal and never publishes. The journal's files are
//! opened through the engine's checked directory, never through a link.

use std::sync::Arc;

use anyhow::Result;

use crate::fs::OwnDir;
pub use crate::history::Cursor;
use crate::history::{Journal, digest};

/// The cursor's file in the bridge's directory.
const CURSOR: &str = "events.cursor";

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
        let read = self.journal.lines_after(self.cursor.as_ref(), max)?;
        let mut out = Batch {
            records: Vec::with_capacity(read.lines.len()),
            lost: read.lost,
        };
        for line in read.lines {
            // A fragment torn by a crash (ended by the next record's leading newline) is not a record.
            let Ok(serde_json::Value::Object(map)) =
                serde_json::from_slice::<serde_json::Value>(&line.bytes)
            else {
                if let Some(last) = out.records.last_mut() {
                    last.after = line.after;
                }
                continue;
            };
            let event = map
                .get("event")
                .and_then(|e| e.as_str())
                .unwrap_or("other")
                .to_string();
            out.records.push(Record {
                line: String::from_utf8_lossy(&line.bytes).into_owned(),
                event,
                digest: digest(&line.bytes),
                after: line.after,
            });
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
