//! Owns the Prometheus text-format metrics file for node_exporter's textfile collector, computed from the
//! job journal and written atomically after every job; it never changes the queue.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::Result;

use crate::history::{JobResult, JobView};

/// What the metrics file reports besides the journal.
pub struct Gauges {
    /// Triggers waiting in the inbox.
    pub queue_depth: usize,
    /// Triggers set aside in `state/failed/`.
    pub set_aside: usize,
}

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What the journal's jobs add up to, by target: built from the whole journal when an engine starts and
/// added to with each job's records after it, so that no job re-reads the journal (up to 32 MiB).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    /// Jobs by (type, result).
    by_result: BTreeMap<(String, String), u64>,
    /// The last successful job of each target: its start (Unix seconds) and duration (seconds).
    last_success: BTreeMap<String, (i64, f64)>,
    /// Each step's wall time (seconds) in the last finished job of each target.
    last_steps: BTreeMap<String, Vec<(String, f64)>>,
    /// Triggers superseded by newer ones.
    superseded: u64,
    /// Jobs with no end, as (type, trigger, line): counted `interrupted` until their trigger runs again,
    /// then `interrupted_rerun`, as the history's view of the whole journal counts them.
    interrupted: Vec<(String, String, usize)>,
}

impl Tally {
    /// Adds jobs (newest first, as `history::jobs` gives them) and a number of superseded triggers.
    pub fn add(&mut self, views: &[JobView], superseded: usize) {
        for v in views.iter().rev() {
            let kind = v.target.split('/').next().unwrap_or("").to_string();
            let again = self
                .interrupted
                .iter()
                .position(|(_, trigger, line)| *trigger == v.trigger && *line == v.line);
            if let Some(i) = again {
                let (was, ..) = self.interrupted.remove(i);
                self.count(&was, JobResult::Interrupted, -1);
                self.count(&was, JobResult::InterruptedRerun, 1);
            }
            // Only a job with no end: one that recorded its interruption (the engine stopping) keeps it.
            if v.result == JobResult::Interrupted && v.duration_ms.is_none() {
                let job = (kind.clone(), v.trigger.clone(), v.line);
                self.interrupted.push(job);
            }
            self.count(&kind, v.result.clone(), 1);
            if v.result == JobResult::Succeeded {
                let at = v
                    .started_at
                    .parse::<jiff::Timestamp>()
                    .map_or(0, |t| t.as_second());
                let took = v.duration_ms.unwrap_or(0) as f64 / 1000.0;
                self.last_success.insert(v.target.clone(), (at, took));
            }
            if !v.steps.is_empty() {
                let steps = v.steps.iter().map(|s| (s.name.clone(), s.wall_secs()));
                self.last_steps.insert(v.target.clone(), steps.collect());
            }
        }
        self.superseded += superseded as u64;
    }

    fn count(&mut self, kind: &str, result: JobResult, by: i64) {
        let key = (kind.to_string(), result.to_string());
        let n = self.by_result.entry(key.clone()).or_default();
        *n = n.saturating_add_signed(by);
        if *n == 0 {
            self.by_result.remove(&key);
        }
    }
}

/// One metric family: its HELP and TYPE lines, then one sample per (labels, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: Vec<(String, String)>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// Renders the metrics from what the journal's jobs add up to and the gauges.
pub fn render(t: &Tally, gauges: &Gauges) -> String {
    let target = |target: &str| format!("{{target=\"{}\"}}", label(target));
    let one = |value: String| vec![(String::new(), value)];
    let mut out = String::new();
    let jobs = t.by_result.iter().map(|((kind, result), n)| {
        let labels = format!("{{type=\"{}\",result=\"{}\"}}", label(kind), label(result));
        (labels, n.to_string())
    });
    family(
        &mut out,
        "t8k_jobs_total",
        "counter",
        "Jobs by type and result since the journal began.",
        jobs.collect(),
    );
    family(
        &mut out,
        "t8k_superseded_total",
        "counter",
        "Triggers dropped because a newer one asked for the same jobs.",
        one(t.superseded.to_string()),
    );
    let at = t
        .last_success
        .iter()
        .map(|(t, (at, _))| (target(t), at.to_string()));
    family(
        &mut out,
        "t8k_last_success_timestamp_seconds",
        "gauge",
        "When the target's last successful job started.",
        at.collect(),
    );
    let took = t
        .last_success
        .iter()
        .map(|(t, (_, secs))| (target(t), secs.to_string()));
    family(
        &mut out,
        "t8k_last_success_duration_seconds",
        "gauge",
        "How long the target's last successful job took.",
        took.collect(),
    );
    let steps = t.last_steps.iter().flat_map(|(t, steps)| {
        steps.iter().map(move |(step, secs)| {
            let labels = format!("{{target=\"{}\",step=\"{}\"}}", label(t), label(step));
            (labels, secs.to_string())
        })
    });
    family(
        &mut out,
        "t8k_step_duration_seconds",
        "gauge",
        "Wall time of each step of the target's last finished job.",
        steps.collect(),
    );
    family(
        &mut out,
        "t8k_queue_depth",
        "gauge",
        "Triggers waiting in the inbox.",
        one(gauges.queue_depth.to_string()),
    );
    family(
        &mut out,
        "t8k_set_aside_triggers",
        "gauge",
        "Triggers set aside in state/failed.",
        one(gauges.set_aside.to_string()),
    );
    out
}

/// Writes the metrics file atomically (node_exporter may read it at any moment), without fsync: it is
/// rendered after every job, and nothing recovers from it, so a power loss that leaves the previous file
/// costs nothing; two fsyncs (file and directory) on every job's way to the next did.
pub fn write(path: &Path, tally: &Tally, gauges: &Gauges) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::fs::write_atomically(path, render(tally, gauges).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Event;

    /// The journal t8k-engine 0.1.0 wrote (tests/fixtures/journal/): every event kind and job result.
    fn fixture() -> Vec<Event> {
        include_str!("../tests/fixtures/journal/journal.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    const GAUGES: Gauges = Gauges {
        queue_depth: 2,
        set_aside: 3,
    };

    #[test]
    fn an_earlier_engines_journal_renders_the_metrics_it_rendered() {
        let (views, superseded) = crate::history::jobs(&fixture(), false);
        let mut tally = Tally::default();
        tally.add(&views, superseded.len());
        assert_eq!(
            render(&tally, &GAUGES),
            include_str!("../tests/fixtures/journal/metrics.prom")
        );
    }

    #[test]
    fn added_job_by_job_the_tally_is_the_whole_journals() {
        // As the engine adds them: the journal up to a point at its start, then what each job appended.
        let events = fixture();
        let (views, superseded) = crate::history::jobs(&events, false);
        let mut whole = Tally::default();
        whole.add(&views, superseded.len());
        // Split before each job's start: a job the engine's death left with no end is then added apart
        // from its trigger's next run, which must turn it from `interrupted` into `interrupted_rerun`.
        let ends: Vec<usize> = (1..events.len())
            .filter(|&i| matches!(events[i], Event::JobStarted { .. }))
            .collect();
        assert!(ends.len() > 5, "the fixture has jobs to split at");
        for start in [0, ends[0], ends[ends.len() / 2]] {
            let mut tally = Tally::default();
            let mut from = 0;
            for end in std::iter::once(start).chain(ends.iter().copied().filter(|&e| e > start)) {
                let (views, superseded) = crate::history::jobs(&events[from..end], false);
                tally.add(&views, superseded.len());
                from = end;
            }
            let (views, superseded) = crate::history::jobs(&events[from..], false);
            tally.add(&views, superseded.len());
            assert_eq!(
                render(&tally, &GAUGES),
                render(&whole, &GAUGES),
                "split from event {start}"
            );
        }
    }
}
