//! Owns what follows a job: the script's notification hooks (`on_failure`, `on_success`, `on_recovery`)
//! and the metrics file. Neither can change the job's result: their failures are logged. The journal is
//! read once per job, for both.

use std::path::Path;

use rhai::{Dynamic, Map};
use tracing::warn;

use super::Engine;
use crate::history::{self, JobResult};
use crate::metrics::{self, Gauges};
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
        let events = self.journal.read();
        let (views, superseded) = history::jobs(&events, false);
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
                let before = views
                    .iter()
                    .filter(|j| j.target == job.spec.target_name() && j.job_id != job.id)
                    .find(|j| j.result.is_verdict());
                if before.is_some_and(|j| j.result != JobResult::Succeeded) {
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
        if let Err(e) = metrics::write(file, &views, superseded.len(), &gauges) {
            warn!("cannot write metrics to {}: {e:#}", file.display());
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
