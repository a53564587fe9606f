//! Owns a child's output on its way to the caller: one reader thread per pipe cutting lines (bounded in
//! length), a bounded queue to the supervising thread, and the captured tail of each stream. Reading
//! never waits on the child: the supervisor stops listening when it is done, whoever holds the pipes.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::thread;
use std::time::Duration;

use super::{POLL, Stream};

/// Lines longer than this are delivered in pieces so one endless line cannot exhaust memory.
pub(super) const MAX_LINE: usize = 64 * 1024;

/// What a reader thread sends: a line of a stream, or that the stream ended.
pub(super) enum Piped {
    Line(Stream, String),
    Closed,
}

/// Reads one pipe to EOF, sending lines and then `Closed`; stops early once nobody listens.
pub(super) fn read_lines(mut pipe: impl Read, stream: Stream, tx: SyncSender<Piped>) {
    let send = |bytes: &[u8]| {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        tx.send(Piped::Line(
            stream,
            String::from_utf8_lossy(bytes).into_owned(),
        ))
        .is_ok()
    };
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let n = match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut from = 0;
        loop {
            let rest = &buf[from..];
            let (line, used) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) if i <= MAX_LINE => (&rest[..i], i + 1),
                _ if rest.len() >= MAX_LINE => (&rest[..MAX_LINE], MAX_LINE),
                _ => break,
            };
            if !send(line) {
                return;
            }
            from += used;
        }
        buf.drain(..from);
    }
    if !buf.is_empty() && !send(&buf) {
        return;
    }
    let _ = tx.send(Piped::Closed);
}

/// Delivers lines to the caller and keeps the captured tails.
pub(super) struct Sink<'a> {
    on_line: &'a mut dyn FnMut(Stream, &str),
    rx: Receiver<Piped>,
    pub out: Tail,
    pub err: Tail,
    /// Streams not yet closed.
    pub open: usize,
    /// The next sleep while waiting for the exit status alone.
    nap: Duration,
}

impl<'a> Sink<'a> {
    /// Delivers what `rx` brings from two streams, keeping `capture_limit` bytes of each.
    pub fn new(
        on_line: &'a mut dyn FnMut(Stream, &str),
        rx: Receiver<Piped>,
        capture_limit: usize,
    ) -> Self {
        Sink {
            on_line,
            rx,
            out: Tail::new(capture_limit),
            err: Tail::new(capture_limit),
            open: 2,
            nap: Duration::from_millis(1),
        }
    }

    /// Waits up to `wait` for output, then delivers whatever else is already queued (bounded, so polling goes on).
    pub fn pump(&mut self, wait: Duration) {
        if self.open == 0 {
            // Only the exit status is left to wait for, and it usually follows EOF within a millisecond:
            // back off from 1 ms rather than sleeping a whole poll interval on every short command.
            thread::sleep(wait.min(self.nap));
            self.nap = (self.nap * 2).min(POLL);
            return;
        }
        match self.rx.recv_timeout(wait) {
            Ok(first) => {
                let more: Vec<Piped> = self.rx.try_iter().take(4096).collect();
                for piped in std::iter::once(first).chain(more) {
                    self.deliver(piped);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Readers drop their sender only after sending EOF, or if they died: either way nothing more comes.
            Err(RecvTimeoutError::Disconnected) => self.open = 0,
        }
    }

    /// Pumps until both streams close or `limit` passes: a process that escaped the run (or a daemon
    /// it was allowed to leave) may hold a pipe forever, and must not hold the step with it.
    pub fn drain(&mut self, limit: Duration) {
        let until = std::time::Instant::now() + limit;
        while self.open > 0 {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            self.pump(left.min(POLL));
        }
    }

    fn deliver(&mut self, piped: Piped) {
        match piped {
            Piped::Closed => self.open = self.open.saturating_sub(1),
            Piped::Line(stream, line) => {
                (self.on_line)(stream, &line);
                match stream {
                    Stream::Stdout => self.out.push(line),
                    Stream::Stderr => self.err.push(line),
                }
            }
        }
    }
}

/// The last `limit` bytes of a stream, cut at a line boundary unless a single line is longer than that.
pub(super) struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    limit: usize,
    pub truncated: bool,
}

impl Tail {
    pub fn new(limit: usize) -> Self {
        Tail {
            lines: VecDeque::new(),
            bytes: 0,
            limit,
            truncated: false,
        }
    }

    pub fn push(&mut self, line: String) {
        if self.limit == 0 {
            self.truncated = true;
            return;
        }
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > self.limit && self.lines.len() > 1 {
            let first = self.lines.pop_front().unwrap_or_default();
            self.bytes -= first.len() + 1;
            self.truncated = true;
        }
        if self.bytes > self.limit
            && let Some(only) = self.lines.front_mut()
        {
            let mut cut = (self.bytes - self.limit).min(only.len());
            while !only.is_char_boundary(cut) {
                cut += 1;
            }
            only.drain(..cut);
            self.bytes = only.len() + 1;
            self.truncated = true;
        }
    }

    pub fn finish(&mut self) -> String {
        let mut s = String::with_capacity(self.bytes);
        for line in &self.lines {
            s.push_str(line);
            s.push('\n');
        }
        s
    }
}
