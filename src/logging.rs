//! Owns where log lines go: stderr (plain when not a TTY or under journald) and the append-only build log;
//! it formats nothing itself beyond choosing layers.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

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
        .with_ansi(!plain)
        .with_target(false);
    let stderr = if plain {
        stderr.without_time().boxed()
    } else {
        stderr.boxed()
    };
    let mut problem = None;
    let file = files.as_ref().and_then(|files| {
        let path = files.log_file;
        let opened = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                use std::os::unix::fs::OpenOptionsExt;
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
        match opened {
            Ok(f) => Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(Redacting(Mutex::new(f)))
                    .with_ansi(false)
                    .with_target(false)
                    .with_filter(ours(level.max(LevelFilter::INFO))),
            ),
            Err(e) => {
                problem = Some(format!(
                    "cannot append to {}: {e}; logging to stderr only",
                    path.display()
                ));
                None
            }
        }
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
        .with(stderr)
        .with(progress)
        .with(file)
        .with(jobs)
        .try_init();
    if let Some(p) = problem {
        tracing::warn!("{p}");
    }
}
