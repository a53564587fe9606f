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

/// What the journal's jobs add up to, by target.
#[derive(Default)]
struct Tally {
    /// Jobs by (type, result).
    by_result: BTreeMap<(String, String), u64>,
    /// The last successful job of each target: its start (Unix seconds) and duration (seconds).
    last_success: BTreeMap<String, (i64, f64)>,
    /// Each step's wall time (seconds) in the last finished job of each target.
    last_steps: BTreeMap<String, Vec<(String, f64)>>,
}

fn tally(views: &[JobView]) -> Tally {
    let mut t = Tally::default();
    for v in views.iter().rev() {
        let kind = v.target.split('/').next().unwrap_or("").to_string();
        *t.by_result.entry((kind, v.result.to_string())).or_default() += 1;
        if v.result == JobResult::Succeeded {
            let at = v
                .started_at
                .parse::<jiff::Timestamp>()
                .map_or(0, |t| t.as_second());
            let took = v.duration_ms.unwrap_or(0) as f64 / 1000.0;
            t.last_success.insert(v.target.clone(), (at, took));
        }
        if !v.steps.is_empty() {
            let steps = v.steps.iter().map(|s| (s.name.clone(), s.wall_secs()));
            t.last_steps.insert(v.target.clone(), steps.collect());
        }
    }
    t
}

/// One metric family: its HELP and TYPE lines, then one sample per (labels, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: Vec<(String, String)>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// Renders the metrics from the journal's jobs (newest first, as `history::jobs` gives them) and the
/// number of superseded triggers.
pub fn render(views: &[JobView], superseded: usize, gauges: &Gauges) -> String {
    let t = tally(views);
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
        one(superseded.to_string()),
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
/// rendered from the journal after every job, and nothing recovers from it, so a power loss that leaves the
/// previous file costs nothing; two fsyncs (file and directory) on every job's way to the next did.
pub fn write(path: &Path, views: &[JobView], superseded: usize, gauges: &Gauges) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::fs::write_atomically(path, render(views, superseded, gauges).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_engines_journal_renders_the_metrics_it_rendered() {
        // The journal and the metrics t8k-engine 0.1.0 rendered from it (tests/fixtures/journal/).
        let events: Vec<crate::history::Event> =
            include_str!("../tests/fixtures/journal/journal.jsonl")
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        let gauges = Gauges {
            queue_depth: 2,
            set_aside: 3,
        };
        let (views, superseded) = crate::history::jobs(&events, false);
        assert_eq!(
            render(&views, superseded.len(), &gauges),
            include_str!("../tests/fixtures/journal/metrics.prom")
        );
    }
}
