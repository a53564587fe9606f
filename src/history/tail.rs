//! Owns reading the journal from a position: the whole records written after a cursor, in order across
//! rotations, each with the cursor just after it, and the cursor at the journal's end; it never writes the
//! journal and never interprets a record. Readers that follow the journal (`trigger --wait`, the engine's
//! metrics, the fleet bridge) read what is new instead of the whole journal (up to 32 MiB) each time.

use std::fs::File;
use std::io::{Read as _, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Event, Journal};

/// How much of a file one read takes at most: a later read goes on from the last whole record.
const CHUNK: u64 = 4 << 20;

/// Where a reader has got to: a file (its inode and a hash of its first record, since inodes are reused
/// after rotation deletes a file) and the offset just after the last record read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cursor {
    /// The file's inode.
    pub ino: u64,
    /// A hash of its first line.
    pub head: String,
    /// Bytes of it already read.
    pub offset: u64,
}

/// One whole line of the journal, as written (a fragment torn by a crash is a line too).
#[derive(Debug)]
pub struct Line {
    /// The line, without its newline.
    pub bytes: Vec<u8>,
    /// The cursor just after it.
    pub after: Cursor,
}

/// What one read found.
#[derive(Debug, Default)]
pub struct Lines {
    /// Whole lines, oldest first.
    pub lines: Vec<Line>,
    /// The cursor's file is gone (the journal rotated past it, deleting the records after the cursor in
    /// it): the lines start at the oldest file, every one of them still newer than the cursor.
    pub lost: bool,
}

/// A SHA-256 prefix of `bytes`, in hex: a file's identity, and the fleet's de-duplicating record id.
pub fn digest(bytes: &[u8]) -> String {
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

/// The offset just after the last newline of `f` (0 when it has none): where the whole records end,
/// since a writer may be half way through the next one.
fn whole_end(f: &mut File) -> Result<u64> {
    let mut end = f.metadata()?.len();
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        let from = end.saturating_sub(buf.len() as u64);
        let part = &mut buf[..(end - from) as usize];
        f.seek(SeekFrom::Start(from))?;
        f.read_exact(part)?;
        if let Some(i) = memchr::memrchr(b'\n', part) {
            return Ok(from + i as u64 + 1);
        }
        end = from;
    }
    Ok(0)
}

impl Journal {
    /// The journal's files with a first record, oldest first, each with its identity.
    fn identified(&self) -> Result<Vec<(File, (u64, String))>> {
        Ok(self
            .open_files()?
            .into_iter()
            .filter_map(|mut f| identity(&mut f).map(|id| (f, id)))
            .collect())
    }

    /// The cursor at the journal's end now, after its last whole record: what a reader takes before
    /// something it wants to follow is written. `None` when the journal holds no record yet (reading from
    /// `None` starts at the beginning).
    pub fn end(&self) -> Result<Option<Cursor>> {
        let Some((mut file, (ino, head))) = self.identified()?.pop() else {
            return Ok(None);
        };
        let offset = whole_end(&mut file)?;
        Ok(Some(Cursor { ino, head, offset }))
    }

    /// The cursor at the journal's beginning, before its oldest record. Its file's identity changes only
    /// when rotation deletes the oldest file (renaming keeps it): a reader that keeps what it read from the
    /// start compares it to know when records it counted are gone. `None` while the journal has no record.
    pub fn start(&self) -> Result<Option<Cursor>> {
        Ok(self
            .identified()?
            .into_iter()
            .next()
            .map(|(_, (ino, head))| Cursor {
                ino,
                head,
                offset: 0,
            }))
    }

    /// Up to `max` whole lines after `cursor` (from the oldest file when `None`), each with the cursor
    /// after it. A torn last line (a record being written) is left for a later read.
    pub fn lines_after(&self, cursor: Option<&Cursor>, max: usize) -> Result<Lines> {
        let mut files = self.identified()?;
        let mut out = Lines::default();
        let (mut index, mut offset) = match cursor {
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
        while index < files.len() && out.lines.len() < max {
            let (file, (ino, head)) = &mut files[index];
            let more = read_lines(file, *ino, head, offset, max, &mut out.lines)?;
            if more || index + 1 == files.len() || out.lines.len() >= max {
                break;
            }
            // A rotated file never grows again; a torn last line in it is never completed.
            index += 1;
            offset = 0;
        }
        Ok(out)
    }

    /// Every event after `cursor`, which is moved to after the last whole record read. Lines that do not
    /// parse (a record torn by a crash, a newer engine's kinds) are skipped, as [`Journal::read`] skips them;
    /// an error is returned only when nothing could be read.
    pub fn events_after(&self, cursor: &mut Option<Cursor>) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        self.each_after(cursor, |e| events.push(e))?;
        Ok(events)
    }

    /// [`Journal::events_after`] handing each event to `each` as it is parsed, so that a reader of the
    /// whole journal need not hold it: records are parsed where they lie in the read buffer and the cursor
    /// moves once a read, which makes a whole reading as cheap as [`Journal::for_each`]. Returns how many
    /// events it handed over.
    pub fn each_after(
        &self,
        cursor: &mut Option<Cursor>,
        mut each: impl FnMut(Event),
    ) -> Result<usize> {
        let mut files = self.identified()?;
        let (mut index, mut offset) = cursor
            .as_ref()
            .and_then(|c| {
                let i = files
                    .iter()
                    .position(|(_, (ino, head))| *ino == c.ino && *head == c.head)?;
                Some((i, c.offset))
            })
            // No cursor, or its file is gone (rotation deleted it): every file left is newer.
            .unwrap_or((0, 0));
        let (mut count, mut buf) = (0, Vec::new());
        while index < files.len() {
            let (file, (ino, head)) = &mut files[index];
            let read = (|| -> std::io::Result<u64> {
                file.seek(SeekFrom::Start(offset))?;
                buf.clear();
                file.take(CHUNK).read_to_end(&mut buf)?;
                Ok(buf.len() as u64)
            })();
            let read = match read {
                Ok(n) => n,
                // What was handed over is kept (the cursor is after it); the rest comes next time.
                Err(e) if count == 0 => return Err(e.into()),
                Err(_) => return Ok(count),
            };
            let mut pos = 0;
            while let Some(end) = memchr::memchr(b'\n', &buf[pos..]) {
                if let Ok(event) = serde_json::from_slice(&buf[pos..pos + end]) {
                    count += 1;
                    each(event);
                }
                pos += end + 1;
            }
            offset += pos as u64;
            *cursor = Some(Cursor {
                ino: *ino,
                head: head.clone(),
                offset,
            });
            // A full read that ended inside a record goes on in this file; a record longer than a whole
            // read (none is written) would never end, so the reading stops there.
            if read == CHUNK && pos > 0 {
                continue;
            }
            // A rotated file never grows again; a torn last line in it is never completed.
            if read == CHUNK || index + 1 == files.len() {
                break;
            }
            index += 1;
            offset = 0;
        }
        Ok(count)
    }
}

/// Appends the whole lines of `file` (whose inode and first-line hash are `ino` and `head`) from `offset`
/// to `out` (at most `max` in all). True when the read stopped short of the file's end (one read takes at
/// most [`CHUNK`]), so that the next read goes on in this file.
fn read_lines(
    file: &mut File,
    ino: u64,
    head: &str,
    offset: u64,
    max: usize,
    out: &mut Vec<Line>,
) -> Result<bool> {
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.take(CHUNK).read_to_end(&mut bytes)?;
    let mut pos = 0usize;
    while out.len() < max {
        let Some(end) = memchr::memchr(b'\n', &bytes[pos..]) else {
            break;
        };
        let line = bytes[pos..pos + end].to_vec();
        pos += end + 1;
        let after = Cursor {
            ino,
            head: head.to_string(),
            offset: offset + pos as u64,
        };
        out.push(Line { bytes: line, after });
    }
    Ok(bytes.len() as u64 == CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn event(i: usize) -> Event {
        Event::Superseded {
            trigger: format!("build-{i}.csv"),
            by: format!("build-{}.csv", i + 1),
            at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn triggers(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Superseded { trigger, .. } => trigger.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_reader_from_the_end_sees_what_comes_after_it_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        // Rotated past 300 bytes: a few records a file, so the reads below cross several rotations.
        let j = Journal::new(dir.path(), 1, 300);
        assert_eq!(j.end().unwrap(), None);
        j.append(&event(0)).unwrap();
        let mut cursor = j.end().unwrap();
        assert!(cursor.is_some());
        let mut seen = Vec::new();
        for round in 0..4 {
            for i in 0..3 {
                j.append(&event(1 + round * 3 + i)).unwrap();
            }
            seen.extend(triggers(&j.events_after(&mut cursor).unwrap()));
        }
        let expected: Vec<String> = (1..13).map(|i| format!("build-{i}.csv")).collect();
        assert_eq!(seen, expected);
        assert!(j.events_after(&mut cursor).unwrap().is_empty());
    }

    #[test]
    fn the_end_is_after_the_last_whole_record_not_inside_one_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path(), 1, 1 << 20);
        j.append(&event(0)).unwrap();
        let whole = std::fs::metadata(dir.path().join("journal.jsonl"))
            .unwrap()
            .len();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal.jsonl"))
            .unwrap();
        // A writer half way through a record: a reader taking the end now must not land inside it.
        f.write_all(b"{\"event\":\"superseded\",\"trigger\":\"build-1.csv\"")
            .unwrap();
        let mut cursor = j.end().unwrap();
        assert_eq!(cursor.as_ref().unwrap().offset, whole);
        assert!(j.events_after(&mut cursor).unwrap().is_empty());
        f.write_all(b",\"by\":\"b\",\"at\":\"2026-01-01T00:00:00Z\"}\n")
            .unwrap();
        assert_eq!(
            triggers(&j.events_after(&mut cursor).unwrap()),
            ["build-1.csv"]
        );
    }

    #[test]
    fn a_file_larger_than_one_read_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path(), 1, 64 << 20);
        let n = (CHUNK as usize / 90) + 100;
        let mut lines = String::new();
        for i in 0..n {
            lines.push_str(&serde_json::to_string(&event(i)).unwrap());
            lines.push('\n');
        }
        std::fs::write(dir.path().join("journal.jsonl"), &lines).unwrap();
        assert!(lines.len() as u64 > CHUNK);
        let mut cursor = None;
        assert_eq!(j.events_after(&mut cursor).unwrap().len(), n);
    }
}
