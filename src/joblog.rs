//! Owns the per-job logs: a tracing layer that copies every line logged inside a job's span to
//! `log/jobs/<job-id>.log` (size-capped), and their pruning; it never decides what is logged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// A job's id or a step's name, kept on the span.
struct JobId(String);
struct StepName(String);

/// A `parallel` branch's label (`name`, or `outer/name` when nested), kept on its `branch` span: log
/// lines show it before their message, `[backend] $ go build` (see [`BranchLabels`]).
pub struct BranchLabel(pub String);

/// Keeps each `branch` span's label on the span for the layers that show it (log lines, job logs,
/// progress); installed once, under all of them.
pub struct BranchLabels;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for BranchLabels {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "branch" {
            return;
        }
        if let (Some(span), Some(label)) = (ctx.span(id), field("name", |v| attrs.record(v))) {
            span.extensions_mut().insert(BranchLabel(label));
        }
    }
}

/// `[label] ` of the innermost `parallel` branch an event was logged in, empty outside `parallel`.
pub fn branch_prefix<'a, R: LookupSpan<'a>>(
    scope: Option<tracing_subscriber::registry::Scope<'a, R>>,
) -> String {
    scope
        .into_iter()
        .flatten()
        .find_map(|span| {
            span.extensions()
                .get::<BranchLabel>()
                .map(|BranchLabel(l)| format!("[{l}] "))
        })
        .unwrap_or_default()
}

/// The value of the field named `name` of span attributes, a record or an event (strings as they are,
/// anything else as its `Debug` form): `field("id", |v| attrs.record(v))`.
pub fn field<'a>(name: &'a str, record: impl FnOnce(&mut Grab<'a>)) -> Option<String> {
    let mut grab = Grab {
        field: name,
        value: None,
    };
    record(&mut grab);
    grab.value
}

/// Pulls one named field out of span attributes, a record or an event (see [`field`]).
pub struct Grab<'a> {
    field: &'a str,
    value: Option<String>,
}

impl Visit for Grab<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == self.field {
            self.value = Some(value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == self.field {
            self.value = Some(format!("{value:?}"));
        }
    }
}

/// The layer writing per-job logs.
pub struct JobLogs {
    dir: PathBuf,
    max_bytes: u64,
    open: Mutex<Option<(String, File, u64)>>,
}

impl JobLogs {
    /// Logs go to `dir/<job-id>.log`, each cut at `max_bytes`.
    pub fn new(dir: &Path, max_bytes: u64) -> JobLogs {
        JobLogs {
            dir: dir.to_path_buf(),
            max_bytes,
            open: Mutex::new(None),
        }
    }

    fn write(&self, job: &str, line: &str) {
        let line = &*crate::redact::redact(line);
        let mut open = self.open.lock().unwrap();
        if open.as_ref().is_none_or(|(id, _, _)| id != job) {
            let _ = std::fs::create_dir_all(&self.dir);
            let path = log_path(&self.dir, job);
            let Ok(file) = OpenOptions::new()
                .create(true)
                .append(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)
            else {
                return;
            };
            let size = file.metadata().map_or(0, |m| m.len());
            *open = Some((job.to_string(), file, size));
        }
        let Some((_, file, size)) = open.as_mut() else {
            return;
        };
        if *size >= self.max_bytes {
            return;
        }
        // Room is kept for the note that says the log was cut, so a cut log always says so.
        let note = format!(
            "... log cut at {} bytes (job_log_max_bytes); the whole output is in build.log\n",
            self.max_bytes
        );
        let budget = self.max_bytes.saturating_sub(note.len() as u64);
        let (text, cut) = if *size + (line.len() as u64) < budget {
            (format!("{line}\n"), false)
        } else {
            (note, true)
        };
        if file.write_all(text.as_bytes()).is_ok() {
            *size = if cut {
                self.max_bytes
            } else {
                *size + text.len() as u64
            };
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for JobLogs {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let (name, field) = match span.name() {
            "job" => ("job", "id"),
            "step" => ("step", "name"),
            _ => return,
        };
        if let Some(value) = self::field(field, |v| attrs.record(v)) {
            if name == "job" {
                span.extensions_mut().insert(JobId(value));
            } else {
                span.extensions_mut().insert(StepName(value));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let branch = branch_prefix(ctx.event_scope(event));
        let mut job = None;
        let mut step = None;
        for span in scope {
            let ext = span.extensions();
            if step.is_none()
                && let Some(StepName(s)) = ext.get::<StepName>()
            {
                step = Some(s.clone());
            }
            if let Some(JobId(j)) = ext.get::<JobId>() {
                job = Some(j.clone());
                break;
            }
        }
        let Some(job) = job else { return };
        let message = self::field("message", |v| event.record(v));
        let time = jiff::Timestamp::now().strftime("%H:%M:%S%.3f");
        let step = step.map(|s| format!(" [{s}]")).unwrap_or_default();
        self.write(
            &job,
            &format!("{time}{step} {branch}{}", message.unwrap_or_default()),
        );
    }
}

/// Where a job's log is.
pub fn log_path(dir: &Path, job_id: &str) -> PathBuf {
    dir.join(format!("{job_id}.log"))
}

/// Deletes all but the newest `keep` job logs (job ids are ULIDs, so names sort by time), and any
/// older than `max_age`.
pub fn prune(dir: &Path, keep: usize, max_age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for name in &names[..excess] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    for name in &names[excess..] {
        let path = dir.join(name);
        let old = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > max_age));
        if old {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest_and_drops_the_old() {
        let dir = tempfile::tempdir().unwrap();
        for id in ["01A", "01B", "01C", "01D"] {
            std::fs::write(dir.path().join(format!("{id}.log")), "x").unwrap();
        }
        let old = std::fs::File::options()
            .write(true)
            .open(dir.path().join("01D.log"))
            .unwrap();
        old.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86_400))
            .unwrap();
        prune(dir.path(), 3, std::time::Duration::from_secs(2 * 86_400));
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["01B.log", "01C.log"],
            "01A is beyond the count, 01D beyond the age"
        );
    }
}
