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

/// Renders the metrics from the journal's jobs (newest first, as `history::jobs` gives them) and the
/// number of superseded triggers.
pub fn render(views: &[JobView], superseded: usize, gauges: &Gauges) -> String {
    let mut by_result: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut last_success: BTreeMap<String, (i64, f64)> = BTreeMap::new();
    let mut last_steps: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for v in views.iter().rev() {
        let kind = v.target.split('/').next().unwrap_or("").to_string();
        *by_result.entry((kind, v.result.to_string())).or_default() += 1;
        if v.result == JobResult::Succeeded {
            let at = v
                .started_at
                .parse::<jiff::Timestamp>()
                .map_or(0, |t| t.as_second());
            last_success.insert(
                v.target.clone(),
                (at, v.duration_ms.unwrap_or(0) as f64 / 1000.0),
            );
        }
        if !v.steps.is_empty() {
            last_steps.insert(
                v.target.clone(),
                v.steps
                    .iter()
                    .map(|s| (s.name.clone(), s.wall_ms as f64 / 1000.0))
                    .collect(),
            );
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP t8k_jobs_total Jobs by type and result since the journal began.\n# TYPE t8k_jobs_total counter"
    );
    for ((kind, result), n) in &by_result {
        let _ = writeln!(
            out,
            "t8k_jobs_total{{type=\"{}\",result=\"{}\"}} {n}",
            label(kind),
            label(result)
        );
    }
    let _ = writeln!(
        out,
        "# HELP t8k_superseded_total Triggers dropped because a newer one asked for the same jobs.\n# TYPE t8k_superseded_total counter\nt8k_superseded_total {}",
        superseded
    );
    let _ = writeln!(
        out,
        "# HELP t8k_last_success_timestamp_seconds When the target's last successful job started.\n# TYPE t8k_last_success_timestamp_seconds gauge"
    );
    for (target, (at, _)) in &last_success {
        let _ = writeln!(
            out,
            "t8k_last_success_timestamp_seconds{{target=\"{}\"}} {at}",
            label(target)
        );
    }
    let _ = writeln!(
        out,
        "# HELP t8k_last_success_duration_seconds How long the target's last successful job took.\n# TYPE t8k_last_success_duration_seconds gauge"
    );
    for (target, (_, secs)) in &last_success {
        let _ = writeln!(
            out,
            "t8k_last_success_duration_seconds{{target=\"{}\"}} {secs}",
            label(target)
        );
    }
    let _ = writeln!(
        out,
        "# HELP t8k_step_duration_seconds Wall time of each step of the target's last finished job.\n# TYPE t8k_step_duration_seconds gauge"
    );
    for (target, steps) in &last_steps {
        for (step, secs) in steps {
            let _ = writeln!(
                out,
                "t8k_step_duration_seconds{{target=\"{}\",step=\"{}\"}} {secs}",
                label(target),
                label(step)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP t8k_queue_depth Triggers waiting in the inbox.\n# TYPE t8k_queue_depth gauge\nt8k_queue_depth {}",
        gauges.queue_depth
    );
    let _ = writeln!(
        out,
        "# HELP t8k_set_aside_triggers Triggers set aside in state/failed.\n# TYPE t8k_set_aside_triggers gauge\nt8k_set_aside_triggers {}",
        gauges.set_aside
    );
    out
}

/// Writes the metrics file atomically (node_exporter may read it at any moment).
pub fn write(path: &Path, views: &[JobView], superseded: usize, gauges: &Gauges) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::fs::write_durably(path, render(views, superseded, gauges).as_bytes())
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
