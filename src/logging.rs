//! Owns where log lines go: stderr (plain when not a TTY or under journald) and the append-only build log;
//! it formats nothing itself beyond choosing layers.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use tracing::level_filters::LevelFilter;
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

use crate::joblog::{BranchLabels, branch_prefix, field};
use crate::redact::Redacting;

/// The files log lines go to besides stderr.
pub struct Files<'a> {
    /// The append-only build log.
    pub log_file: &'a Path,
    /// Where each job's lines are copied (`<job-id>.log`).
    pub jobs_dir: &'a Path,
    /// The size cap of one job's log.
    pub job_log_max_bytes: u64,
}

/// Sets up logging; `verbosity` is the count of `-v` minus the count of `-q`. With `interactive` and a
/// terminal on stderr, steps are drawn as live progress instead of log lines.
pub fn init(verbosity: i8, files: Option<Files>, interactive: bool) {
    let level = match verbosity {
        i8::MIN..=-2 => LevelFilter::ERROR,
        -1 => LevelFilter::WARN,
        0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    // journald adds its own timestamps and shows escape codes literally.
    let plain = !std::io::stderr().is_terminal() || std::env::var_os("JOURNAL_STREAM").is_some();
    let ours = |level| {
        Targets::new()
            .with_target("t8k_engine", level)
            .with_target("t8k", level)
            .with_default(LevelFilter::WARN)
    };
    // Credentials never reach a log line: every writer goes through the one redaction function.
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(Redacting(std::io::stderr))
        .with_ansi(!plain);
    let format = Format::default().with_target(false);
    let stderr = if plain {
        stderr
            .event_format(Labelled::new(format.without_time()))
            .boxed()
    } else {
        stderr.event_format(Labelled::new(format)).boxed()
    };
    let (file, problem) = match files.as_ref().map(|f| open_log(f.log_file)) {
        None => (None, None),
        Some(Ok(f)) => (Some(f), None),
        Some(Err(problem)) => (None, Some(problem)),
    };
    let file = file.map(|f| {
        tracing_subscriber::fmt::layer()
            .with_writer(Redacting(Mutex::new(f)))
            .with_ansi(false)
            .event_format(Labelled::new(Format::default().with_target(false)))
            .with_filter(ours(level.max(LevelFilter::INFO)))
    });
    // Every line of a job also goes to log/jobs/<job-id>.log, for `t8k-engine logs`.
    let jobs = files.map(|files| {
        crate::joblog::JobLogs::new(files.jobs_dir, files.job_log_max_bytes)
            .with_filter(ours(level.max(LevelFilter::INFO)))
    });
    let progress = (interactive && !plain)
        .then(|| crate::ui::progress::Progress::new().with_filter(ours(level)));
    let stderr = progress.is_none().then(|| stderr.with_filter(ours(level)));
    let _ = tracing_subscriber::registry()
        .with(BranchLabels)
        .with(stderr)
        .with(progress)
        .with(file)
        .with(jobs)
        .try_init();
    if let Some(p) = problem {
        tracing::warn!("{p}");
    }
}

/// The build log, opened to append; why not, as a warning to log once logging is up.
fn open_log(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            // Non-blocking: a FIFO in the log's place must not hang the engine before it starts.
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)?;
            if !f.metadata()?.is_file() {
                return Err(std::io::Error::other("not a regular file"));
            }
            Ok(f)
        });
    opened.map_err(|e| {
        format!(
            "cannot append to {}: {e}; logging to stderr only",
            path.display()
        )
    })
}

/// tracing's full line format, with the label of the `parallel` branch an event was logged in before
/// its message (`… step{name=build}: [backend] $ go build`), as the job logs and progress show it.
struct Labelled<T> {
    plain: Format<Full, T>,
    ansi: Format<Full, T>,
}

impl<T: Clone> Labelled<T> {
    fn new(format: Format<Full, T>) -> Self {
        Labelled {
            plain: format.clone().with_ansi(false),
            ansi: format.with_ansi(true),
        }
    }
}

impl<S, N, T> FormatEvent<S, N> for Labelled<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    Format<Full, T>: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let inner = if writer.has_ansi_escapes() {
            &self.ansi
        } else {
            &self.plain
        };
        let label = branch_prefix(ctx.event_scope());
        if label.is_empty() {
            return inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        inner.format_event(ctx, Writer::new(&mut line), event)?;
        // The event's fields (its message) end the line: time, level and span context come before them.
        let mut fields = String::new();
        ctx.format_fields(Writer::new(&mut fields), event)?;
        let message = field("message", |v| event.record(v)).unwrap_or_default();
        let at = [fields, message]
            .iter()
            .filter(|text| !text.is_empty())
            .find_map(|text| line.rfind(text.as_str()))
            .unwrap_or_else(|| line.trim_end_matches('\n').len());
        line.insert_str(at, &label);
        writer.write_str(&line)
    }
}
