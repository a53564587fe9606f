//! Owns what follows a job: the script's notification hooks (`on_failure`, `on_success`, `on_recovery`)
//! and the metrics file. Neither can change the job's result: their failures are logged. Both read only
//! the records the journal gained since the last job (`Since`), never the whole journal again.

use std::collections::HashMap;
use std::path::Path;

use rhai::{Dynamic, Map};
use tracing::warn;

use super::Engine;
use crate::history::{self, Cursor, JobResult, JobView, Journal};
use crate::metrics::{self, Gauges, Tally};
use crate::script::{self, Compiled, Job};
use crate::trigger;

impl Engine {
    /// After a job: hooks, then the metrics file. `failure` is what `on_failure` gets; `None` for a success.
    pub(super) fn after_job(&self, job: &Job, script: &Compiled, failure: Option<Map>) {
        let hook = |name: &str, args: Vec<Dynamic>| {
            let called = script::call_hook(&self.scripts, &self.settings, script, job, name, args);
            if let Err(e) = called {
                warn!(
                    "notification hook {name} of {}.rhai failed: {}; the job's result stands",
                    job.spec.kind,
                    e.headline()
                );
            }
        };
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        let views = since.catch_up(&self.journal);
        match failure {
            Some(f) => hook("on_failure", vec![Dynamic::from_map(f)]),
            None => {
                let release =
                    crate::release::Store::load(&self.settings.releases_dir, &job.install())
                        .ok()
                        .and_then(|s| s.live().map(|r| r.to_json()))
                        .and_then(|v| rhai::serde::to_dynamic(v).ok())
                        .unwrap_or_else(|| Dynamic::from_map(Map::new()));
                hook("on_success", vec![release]);
                let target = job.spec.target_name();
                let before = views
                    .iter()
                    .filter(|j| j.target == target && j.job_id != job.id)
                    .find(|j| j.result.is_verdict())
                    .map(|j| &j.result)
                    .or(since.verdicts.get(&target));
                if before.is_some_and(|r| *r != JobResult::Succeeded) {
                    hook("on_recovery", Vec::new());
                }
            }
        }
        let gauges = Gauges {
            queue_depth: count(&self.layout.state, trigger::is_trigger_name),
            set_aside: count(&self.layout.failed, |n| {
                !n.ends_with(".reason") && !n.starts_with('.')
            }),
        };
        let file = &self.layout.metrics_file;
        since.note_verdicts(&views);
        if let Err(e) = metrics::write(file, &since.tally, &gauges) {
            warn!("cannot write metrics to {}: {e:#}", file.display());
        }
    }
}

/// What `after_job` keeps between jobs so that it reads only what the journal gained: where it has read
/// to, what the jobs so far add up to, and each target's last verdict (for `on_recovery`). Only the engine
/// holding the lock writes jobs to the journal, so nothing it keeps can go stale behind its back.
pub(super) struct Since {
    cursor: Option<Cursor>,
    tally: Tally,
    verdicts: HashMap<String, JobResult>,
}

impl Since {
    /// Reads the whole journal once, as the engine starts (holding the lock); returns its jobs too (newest
    /// first), for the status document.
    pub(super) fn start(journal: &Journal) -> (Since, Vec<JobView>) {
        // The end first, then the read: only the engine holding the lock (this one) writes the jobs and
        // superseded triggers that count, so nothing that counts can fall between the two.
        let cursor = journal.end().ok().flatten();
        // Streamed: the whole journal parsed at once took 78 MiB at its largest.
        let (views, superseded) = journal.jobs(false);
        let mut since = Since {
            cursor,
            tally: Tally::default(),
            verdicts: HashMap::new(),
        };
        since.tally.add(&views, superseded.len());
        since.note_verdicts(&views);
        (since, views)
    }

    /// The jobs the journal gained since the last call (newest first), added to the tally.
    fn catch_up(&mut self, journal: &Journal) -> Vec<JobView> {
        match journal.events_after(&mut self.cursor) {
            Ok(events) => {
                let (views, superseded) = history::jobs(&events, false);
                self.tally.add(&views, superseded.len());
                views
            }
            Err(e) => {
                // The cursor stays where it was: the next job's catch-up reads these records too.
                warn!(
                    "cannot read the journal's new records ({e:#}); the metrics count them after the next job that can"
                );
                Vec::new()
            }
        }
    }

    /// Keeps each target's newest verdict among `views` (newest first).
    fn note_verdicts(&mut self, views: &[JobView]) {
        for v in views.iter().rev().filter(|v| v.result.is_verdict()) {
            self.verdicts.insert(v.target.clone(), v.result.clone());
        }
    }
}

/// Entries of `dir` whose names pass `keep`.
fn count(dir: &Path, keep: fn(&str) -> bool) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .filter(|e| e.file_name().to_str().is_some_and(keep))
            .count()
    })
}
