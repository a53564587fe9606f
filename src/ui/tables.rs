//! Owns the text of `t8k-engine history` and `status`: one line per job with its steps' figures under it,
//! and the one-screen status; it only formats what it is given.

use std::path::Path;

use crate::history::{Event, JobResult, JobView, StepRecord};
use crate::status::Status;

/// `history`: the jobs given (newest first), each with its reason and steps, then the last superseded
/// triggers; `journal_dir` is named when there are none.
pub fn history(jobs: &[JobView], superseded: &[Event], journal_dir: &Path) -> String {
    let mut out = String::new();
    if jobs.is_empty() {
        out.push_str(&format!("no jobs recorded in {}\n", journal_dir.display()));
    }
    for j in jobs {
        out.push_str(&job_line(j));
        out.push('\n');
        if let Some(reason) = &j.reason
            && j.result != JobResult::Succeeded
        {
            out.push_str(&format!("    {reason}\n"));
        }
        let asked = [
            ("asked for by", &j.requested_by),
            ("cancelled by", &j.cancelled_by),
        ];
        for (what, who) in asked.iter().filter_map(|(w, b)| Some((w, b.as_ref()?))) {
            out.push_str(&format!("    {what} {who} (t8k-engine serve)\n"));
        }
        if !j.steps.is_empty() {
            let steps: Vec<String> = j.steps.iter().map(step_figures).collect();
            out.push_str(&format!("    steps: {}\n", steps.join(", ")));
        }
    }
    for s in superseded.iter().rev().take(5) {
        if let Event::Superseded { trigger, by, at } = s {
            out.push_str(&format!("superseded: {trigger} by {by} at {at}\n"));
        }
    }
    out
}

/// `ID  TIME  TARGET COMMAND RESULT TOOK  TRIGGER:LINE (attempt N)`.
fn job_line(j: &JobView) -> String {
    let result = match (&j.result, &j.failed_step) {
        (JobResult::Failed, Some(step)) => format!("failed at step `{step}`"),
        (JobResult::RolledBack, Some(step)) => format!("rolled back (step `{step}`)"),
        (JobResult::RolledBack, None) => "rolled back".to_string(),
        (JobResult::InterruptedRerun, _) => "interrupted, re-run".to_string(),
        (other, _) => other.to_string(),
    };
    let took = j
        .duration_ms
        .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
    let attempt = if j.attempt > 1 {
        format!(" (attempt {})", j.attempt)
    } else {
        String::new()
    };
    format!(
        "{}  {}  {:<16} {:<8} {:<28} {:>7}  {}:{}{attempt}",
        j.job_id,
        j.started_at
            .get(..19)
            .unwrap_or(&j.started_at)
            .replace('T', " "),
        j.target,
        j.command,
        result,
        took,
        j.trigger,
        j.line,
    )
}

/// `name 1.2s (cpu 0.8s, 42 MiB)`, with `, wrote 61 MiB` when the step wrote to storage, and how it
/// ended when not well.
fn step_figures(s: &StepRecord) -> String {
    let state = if s.cancelled {
        " cancelled"
    } else if s.ok == Some(false) {
        " FAILED"
    } else {
        ""
    };
    let wrote = if s.written_bytes > 0 {
        format!(", wrote {} MiB", s.written_bytes >> 20)
    } else {
        String::new()
    };
    format!(
        "{} {:.1}s (cpu {:.1}s, {} MiB{wrote}){state}",
        s.name,
        s.wall_secs(),
        s.cpu_secs(),
        s.rss_mib()
    )
}

/// `status`: the one-screen text form of the snapshot.
pub fn status(s: &Status) -> String {
    let mut lines = engine_lines(s);
    lines.extend(queue_lines(s));
    lines.extend(target_lines(s));
    if let Some(disk) = &s.disk {
        lines.extend(disk_lines(disk));
    }
    lines.into_iter().map(|l| l + "\n").collect()
}

/// The engine, its running job and step, why it idles, what needs the operator, what stays claimed.
fn engine_lines(s: &Status) -> Vec<String> {
    let mut lines = vec![match &s.engine {
        Some(e) => format!(
            "engine: running (pid {}, since {})",
            e.pid.map_or("?".into(), |p| p.to_string()),
            e.since.as_deref().unwrap_or("?")
        ),
        None => "engine: not running".into(),
    }];
    match &s.running {
        Some(r) => {
            lines.push(format!(
                "running: {} {} ({}), job {}, {}s",
                r.target, r.command, r.trigger, r.job_id, r.elapsed_s
            ));
            if let Some((step, branch, secs)) = &r.step {
                lines.push(format!(
                    "  step: {step}{}, {secs}s",
                    super::branch_suffix(branch)
                ));
            }
        }
        None => lines.push("running: nothing".into()),
    }
    lines.extend(s.idle_because.iter().map(|why| format!("idle: {why}")));
    lines.extend(s.warnings.iter().map(|w| format!("warning: {w}")));
    let running = |c: &str| {
        s.running
            .as_ref()
            .is_some_and(|r| r.trigger.starts_with(&format!("{c}:")))
    };
    lines.extend(s.claimed.iter().filter(|c| !running(c)).map(|c| {
        format!("claimed: {c} (left by an engine that stopped; runs first at the next start)")
    }));
    lines
}

/// The inbox in run order with each trigger's jobs, and the set-aside triggers.
fn queue_lines(s: &Status) -> Vec<String> {
    let mut lines = vec![format!(
        "queue: {}",
        if s.queue.is_empty() {
            "empty".to_string()
        } else {
            format!("{} trigger(s), in run order", s.queue.len())
        }
    )];
    for q in &s.queue {
        lines.push(format!("  {}: {}", q.name, q.state));
        lines.extend(q.jobs.iter().map(|j| format!("    {j}")));
    }
    lines.push(format!(
        "set aside: {}",
        if s.set_aside.is_empty() {
            "none".to_string()
        } else {
            format!("{} (t8k-engine retry NAME requeues one)", s.set_aside.len())
        }
    ));
    lines.extend(
        s.set_aside
            .iter()
            .map(|a| format!("  {}: {}", a.name, a.reason)),
    );
    lines
}

/// Each target's live release and last failure.
fn target_lines(s: &Status) -> Vec<String> {
    let mut lines = vec!["targets:".to_string()];
    if s.targets.is_empty() {
        lines.push("  no release recorded yet".into());
    }
    for t in &s.targets {
        lines.push(match &t.live {
            Some(r) => format!(
                "  {}: live backend {} frontend {}, released {} (took {:.1}s){}",
                t.target,
                short(&r["backend"]),
                short(&r["frontend"]),
                r["released_at"].as_str().unwrap_or("?"),
                r["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                release_of(&t.target, r)
            ),
            None => format!("  {}: no release recorded", t.target),
        });
        if let Some((job, at, reason)) = &t.last_failure {
            lines.push(format!("    last failure: job {job} at {at}: {reason}"));
        }
    }
    lines
}

/// `disk:` per target (live, kept releases, node_modules) and per shared cache, with the artifact cache's
/// hit rate.
fn disk_lines(d: &crate::usage::Disk) -> Vec<String> {
    use crate::resources::human;
    let mut lines = vec![format!("disk: {} in all", human(d.total_bytes))];
    for t in &d.targets {
        lines.push(format!(
            "  {}: live {}, {} kept release(s) {}, node_modules {}",
            t.target,
            human(t.live_bytes),
            t.kept,
            human(t.kept_bytes),
            human(t.node_modules_bytes)
        ));
    }
    let a = &d.artifacts;
    let rate = a.hit_rate.map_or("no lookups yet".to_string(), |r| {
        format!("hit rate {:.0}%", r * 100.0)
    });
    lines.push(format!(
        "  artifact cache: {} entr(ies), {} of {} cap ({} in use by releases; {} of its own), {rate} ({} hit(s), {} miss(es), {} evicted, {} corrupt)",
        a.entries,
        human(a.bytes),
        human(a.max_bytes),
        a.in_use,
        human(d.artifacts_own_bytes),
        a.stats.hits,
        a.stats.misses,
        a.stats.evictions,
        a.stats.corrupt
    ));
    for c in &d.caches {
        lines.push(match &c.at {
            Some(l) => format!(
                "  {}: {} in {} ({})",
                c.name,
                human(c.bytes),
                l.path.display(),
                l.from
            ),
            None => format!("  {}: nowhere (see warnings)", c.name),
        });
    }
    lines
}

/// `, release 3` (`, release 3 of main` for a multi target, which shares main's install).
fn release_of(target: &str, r: &serde_json::Value) -> String {
    match r["id"].as_u64() {
        Some(id) if target.starts_with("multi/") => format!(", release {id} of main"),
        Some(id) => format!(", release {id}"),
        None => String::new(),
    }
}

fn short(commit: &serde_json::Value) -> String {
    commit
        .as_str()
        .map_or("?".into(), |c| c.chars().take(10).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Engine, Queued, Running, SetAside, Target};

    #[test]
    fn history_reads_as_an_earlier_engine_printed_it() {
        // The journal and `history -n 100` of t8k-engine 0.1.0 (tests/fixtures/journal/).
        let events: Vec<Event> = include_str!("../../tests/fixtures/journal/journal.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let (jobs, superseded) = crate::history::jobs(&events, false);
        assert_eq!(
            history(&jobs, &superseded, Path::new("/x")),
            include_str!("../../tests/fixtures/journal/history.txt")
        );
        assert_eq!(
            history(&[], &[], Path::new("/srv/state/.t8k-engine/history")),
            "no jobs recorded in /srv/state/.t8k-engine/history\n"
        );
    }

    #[test]
    fn status_shows_each_part_on_its_own_lines() {
        let s = Status {
            engine: Some(Engine {
                pid: Some(42),
                since: Some("2026-12-04T10:00:00Z".into()),
            }),
            running: Some(Running {
                job_id: "01JOB".into(),
                trigger: "build-2.csv:1".into(),
                target: "main".into(),
                command: "build".into(),
                elapsed_s: 12,
                step: Some(("go build".into(), "backend".into(), 7)),
            }),
            claimed: vec!["build-1.csv".into(), "build-2.csv".into()],
            queue: vec![Queued {
                name: "build-3.csv".into(),
                state: "ready".into(),
                jobs: vec!["type=main,tenant=default,command=build".into()],
            }],
            set_aside: vec![SetAside {
                name: "build-0.csv".into(),
                reason: "build-0.csv line 1: bad".into(),
            }],
            targets: vec![Target {
                target: "main".into(),
                live: Some(serde_json::json!({
                    "backend": "0123456789abcdef", "frontend": "fedcba9876543210",
                    "released_at": "2026-12-04T09:00:00Z", "duration_ms": 61500
                })),
                last_failure: Some(("01OLD".into(), "2026-12-03".into(), "rolled back".into())),
            }],
            idle_because: None,
            warnings: vec!["ignored: main_build.csv does not match build-*.csv".into()],
            disk: None,
        };
        assert_eq!(
            status(&s),
            "engine: running (pid 42, since 2026-12-04T10:00:00Z)
running: main build (build-2.csv:1), job 01JOB, 12s
  step: go build [backend], 7s
warning: ignored: main_build.csv does not match build-*.csv
claimed: build-1.csv (left by an engine that stopped; runs first at the next start)
queue: 1 trigger(s), in run order
  build-3.csv: ready
    type=main,tenant=default,command=build
set aside: 1 (t8k-engine retry NAME requeues one)
  build-0.csv: build-0.csv line 1: bad
targets:
  main: live backend 0123456789 frontend fedcba9876, released 2026-12-04T09:00:00Z (took 61.5s)
    last failure: job 01OLD at 2026-12-03: rolled back
"
        );
    }
}
