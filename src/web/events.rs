//! Owns the live events behind `GET /api/events`: one thread tails the journal (whole records, across
//! rotation) and the running job's log (whole lines, from a byte offset), woken by inotify hints with a
//! one-second poll as the floor, and recomputes the status document when something changed; each client
//! gets them as Server-Sent Events. It only reads; a slow client that falls behind is told to resync.

use std::collections::HashSet;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::Stream;
use notify::{EventKind, RecursiveMode, Watcher as _};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::AppState;
use crate::history::{Cursor, Event, Journal};

/// One event for every client: its SSE event name and its JSON.
#[derive(Debug, Clone)]
pub struct Message {
    /// `status`, `log`, or a journal record's kind (`job_started`, `step_finished`, ...).
    pub event: String,
    /// The JSON sent as the event's data.
    pub data: String,
}

/// Where events are fanned out to clients.
pub struct Hub {
    tx: broadcast::Sender<Arc<Message>>,
    status: Mutex<Option<Arc<Message>>>,
    stop: OnceLock<watch::Receiver<bool>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// A hub with room for a burst of 4,096 events per client.
    pub fn new() -> Hub {
        Hub {
            tx: broadcast::channel(4096).0,
            status: Mutex::new(None),
            stop: OnceLock::new(),
        }
    }

    /// Streams end when `stop` turns true (the server is stopping).
    pub fn set_stop(&self, stop: watch::Receiver<bool>) {
        let _ = self.stop.set(stop);
    }

    fn send(&self, event: &str, data: String) {
        let message = Arc::new(Message {
            event: event.to_string(),
            data,
        });
        if message.event == "status" {
            *self.status.lock().unwrap() = Some(message.clone());
        }
        let _ = self.tx.send(message);
    }
}

/// A chunk of a job's log: whole lines starting at byte `offset` of `log/jobs/<job_id>.log`.
#[derive(Debug, Serialize)]
struct LogChunk<'a> {
    job_id: &'a str,
    offset: u64,
    text: &'a str,
}

/// `GET /api/events`: the current status first, then every event as it happens.
pub async fn stream(
    State(state): State<Arc<AppState>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = state.hub.tx.subscribe();
    let first = state.hub.status.lock().unwrap().clone();
    let stop = state
        .hub
        .stop
        .get()
        .cloned()
        .unwrap_or_else(|| watch::channel(false).1);
    let stream =
        futures_util::stream::unfold((rx, first, stop), |(mut rx, first, mut stop)| async move {
            if let Some(m) = first {
                let event = SseEvent::default().event(&m.event).data(&m.data);
                return Some((Ok(event), (rx, None, stop)));
            }
            let got = tokio::select! {
                _ = stop.wait_for(|s| *s) => None,
                got = rx.recv() => Some(got),
            };
            let event = match got? {
                Ok(m) => SseEvent::default().event(&m.event).data(&m.data),
                Err(broadcast::error::RecvError::Lagged(n)) => SseEvent::default()
                    .event("resync")
                    .data(format!("{{\"missed\":{n}}}")),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok(event), (rx, None, stop)))
        });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Starts the tail thread; it ends soon after `stop` turns true.
pub fn start_tail(
    state: Arc<AppState>,
    stop: watch::Receiver<bool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("web-tail".into())
        .spawn(move || Tail::new(&state).run(&state, stop))
        .expect("spawn the tail thread")
}

/// Reads whole records appended to a journal since the last read, across its rotations.
struct JournalCursor {
    journal: Journal,
    at: Option<Cursor>,
}

impl JournalCursor {
    /// Starts at the end: clients get history from the API, and only new records from here.
    fn at_end(journal: Journal) -> JournalCursor {
        let at = journal.end().ok().flatten();
        JournalCursor { journal, at }
    }

    fn read_new(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let Ok(read) = self.journal.lines_after(self.at.as_ref(), 1000) else {
                return lines;
            };
            let Some(last) = read.lines.last() else {
                return lines;
            };
            self.at = Some(last.after.clone());
            lines.extend(
                read.lines
                    .iter()
                    .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
                    .filter(|l| !l.trim().is_empty()),
            );
        }
    }
}

/// Appends the whole lines of a job's log `f` after `offset` to `out`; returns the bytes they took.
fn read_lines(mut f: std::fs::File, offset: u64, out: &mut Vec<String>) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(offset)).is_err() || f.read_to_end(&mut bytes).is_err() {
        return 0;
    }
    let Some(end) = memchr::memrchr(b'\n', &bytes) else {
        return 0;
    };
    out.extend(
        String::from_utf8_lossy(&bytes[..end])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string),
    );
    end as u64 + 1
}

/// Whole new lines of the running job's log.
struct LogCursor {
    job_id: String,
    offset: u64,
}

/// Opens a job's log: the id must be a job id, the file a regular file reached without a link.
pub fn open_job_log(dir: &Path, job_id: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if !super::api::is_job_id(job_id) {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(crate::joblog::log_path(dir, job_id))?;
    if !f.metadata()?.is_file() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    Ok(f)
}

struct Tail {
    journal: JournalCursor,
    /// The requests this server (or another `serve`) recorded: their own journal, tailed the same way.
    requests: JournalCursor,
    log: Option<LogCursor>,
    logs_dir: PathBuf,
    /// Directories whose changes mean the status may have changed.
    status_dirs: Vec<PathBuf>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    wake: mpsc::Receiver<()>,
    status_dirty: Arc<AtomicBool>,
    last_status: Option<String>,
}

impl Tail {
    fn new(state: &AppState) -> Tail {
        let layout = &state.layout;
        let (tx, wake) = mpsc::channel();
        let status_dirty = Arc::new(AtomicBool::new(true));
        let logs_dir = state.job_logs();
        let dirty = status_dirty.clone();
        let logs = logs_dir.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else {
                dirty.store(true, Ordering::Relaxed);
                let _ = tx.send(());
                return;
            };
            // Reads (ours among them) are no change.
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            if !event.paths.iter().all(|p| p.starts_with(&logs)) {
                dirty.store(true, Ordering::Relaxed);
            }
            let _ = tx.send(());
        })
        .map_err(|e| tracing::warn!("no inotify for live events ({e}); polling every second"))
        .ok();
        let journal = JournalCursor::at_end(Journal::open(layout));
        let requests = JournalCursor::at_end(Journal::requests(layout));
        Tail {
            journal,
            requests,
            log: None,
            status_dirs: vec![
                layout.state.clone(),
                layout.engine_dir.clone(),
                layout.journal_dir.clone(),
                layout.requests_dir.clone(),
                layout.releases_dir.clone(),
                layout.work.clone(),
                layout.failed.clone(),
            ],
            logs_dir,
            watcher,
            watched: HashSet::new(),
            wake,
            status_dirty,
            last_status: None,
        }
    }

    /// Watches every directory that exists now (they may appear later: checked on every turn).
    fn ensure_watches(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let mut dirs = self.status_dirs.clone();
        dirs.push(self.logs_dir.clone());
        if let Some(parent) = self.logs_dir.parent() {
            dirs.push(parent.to_path_buf());
        }
        for dir in dirs {
            let is_dir = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
            if is_dir && !self.watched.contains(&dir) {
                if watcher.watch(&dir, RecursiveMode::NonRecursive).is_ok() {
                    self.watched.insert(dir);
                }
            } else if !is_dir && self.watched.remove(&dir) {
                let _ = watcher.unwatch(&dir);
            }
        }
    }

    fn run(mut self, state: &AppState, stop: watch::Receiver<bool>) {
        // Follow the job already running when the server starts, from the end of its log so far.
        self.refresh_status(state);
        let mut last_refresh = Instant::now();
        while !*stop.borrow() {
            self.ensure_watches();
            // Wake at once on a hint; a quiet second (or a lost hint) still looks.
            let _ = self.wake.recv_timeout(Duration::from_secs(1));
            while self.wake.try_recv().is_ok() {}
            let lines = [self.journal.read_new(), self.requests.read_new()];
            for line in lines.into_iter().flatten() {
                self.journal_record(state, line);
            }
            self.read_log(state);
            // Every change wakes the loop with a hint, and a lost hint (inotify's queue overflowing) marks
            // the status dirty: the periodic look is for a server without inotify, and while a job runs.
            // An idle server does not pay a snapshot (a quarter second with a full journal) every 10 s.
            let due = last_refresh.elapsed() >= Duration::from_secs(10)
                && (self.watcher.is_none() || self.log.is_some());
            if self.status_dirty.swap(false, Ordering::Relaxed) || due {
                self.refresh_status(state);
                last_refresh = Instant::now();
            }
        }
    }

    fn journal_record(&mut self, state: &AppState, line: String) {
        let Ok(event) = serde_json::from_str::<Event>(&line) else {
            return; // A kind this server does not know, or a torn record.
        };
        let kind = match &event {
            Event::JobStarted { job_id, .. } => {
                self.read_log(state);
                self.log = Some(LogCursor {
                    job_id: job_id.clone(),
                    offset: 0,
                });
                "job_started"
            }
            Event::JobFinished { job_id, .. } => {
                // Its last lines go out before its end.
                self.read_log(state);
                if self.log.as_ref().is_some_and(|l| l.job_id == *job_id) {
                    self.log = None;
                }
                "job_finished"
            }
            Event::StepStarted { .. } => "step_started",
            Event::StepFinished { .. } => "step_finished",
            Event::Requested { .. } => "requested",
            Event::Superseded { .. } => "superseded",
            Event::SetAside { .. } => "set_aside",
        };
        self.status_dirty.store(true, Ordering::Relaxed);
        state.hub.send(kind, line);
    }

    fn read_log(&mut self, state: &AppState) {
        let Some(cursor) = self.log.as_mut() else {
            return;
        };
        let Ok(f) = open_job_log(&self.logs_dir, &cursor.job_id) else {
            return;
        };
        let mut lines = Vec::new();
        let used = read_lines(f, cursor.offset, &mut lines);
        if used == 0 {
            return;
        }
        let mut text = lines.join("\n");
        text.push('\n');
        let chunk = LogChunk {
            job_id: &cursor.job_id,
            offset: cursor.offset,
            text: &text,
        };
        if let Ok(data) = serde_json::to_string(&chunk) {
            state.hub.send("log", data);
        }
        cursor.offset += used;
    }

    fn refresh_status(&mut self, state: &AppState) {
        let doc = match state.status_document() {
            Ok(doc) => doc,
            Err(e) => {
                tracing::warn!("cannot read the status: {e:#}");
                return;
            }
        };
        if self.log.is_none()
            && let Some(running) = &doc.running
        {
            let size = open_job_log(&self.logs_dir, &running.job_id)
                .and_then(|f| f.metadata())
                .map_or(0, |m| m.len());
            self.log = Some(LogCursor {
                job_id: running.job_id.clone(),
                offset: size,
            });
        }
        // Only a change is sent: the time it was made does not count as one.
        let mut same = doc.clone();
        same.generated_at = String::new();
        if let Some(r) = same.running.as_mut() {
            r.elapsed_s = 0;
            r.step.iter_mut().for_each(|s| s.elapsed_s = 0);
            r.steps
                .iter_mut()
                .filter(|s| s.ok.is_none())
                .for_each(|s| s.wall_ms = 0);
        }
        let key = serde_json::to_string(&same).unwrap_or_default();
        if self.last_status.as_deref() != Some(key.as_str()) {
            self.last_status = Some(key);
            if let Ok(data) = serde_json::to_string(&doc) {
                state.hub.send("status", data);
            }
        }
    }
}
