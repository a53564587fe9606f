//! Owns how a job's end reads for people: the set-aside reason of a failed job (a summary line that says
//! how to retry, and the details under it), the one-line list of its steps, and the failure that
//! `on_failure` hooks receive (redacted: hooks post it to chat and mail). It only formats.

use std::time::Duration;

use super::pass::Position;
use crate::history::StepRecord;
use crate::redact::redact;
use crate::script::{Job, JobCtx, JobError};

/// Why a job failed, as its set-aside reason and its history record say it.
pub struct FailureReport {
    /// The summary up to how to retry it: file, line, job, step and error.
    head: String,
    /// When, which job, the error with its call chain, the output's tail, every step's figures.
    pub details: String,
}

impl FailureReport {
    /// The report of a job that failed with `err` after `took`.
    pub fn new(
        name: &str,
        job: &Job,
        ctx: &JobCtx,
        err: &JobError,
        took: Duration,
        at: Position,
    ) -> FailureReport {
        let failure = ctx.failure();
        let step = failure.as_ref().and_then(|f| f.step.clone());
        let step_part = step
            .as_ref()
            .map(|s| format!("step `{s}` failed: "))
            .unwrap_or_default();
        let head = format!(
            "{name} line {} ({} {}): {step_part}{}",
            job.spec.line,
            job.spec.target_name(),
            job.spec.command,
            err.headline()
        );
        let mut details = format!(
            "when: {}\ntrigger: {name} line {}: {}\njob: {} ({} of {}), ran {:.1}s\nfailed step: {}\n",
            jiff::Timestamp::now(),
            job.spec.line,
            job.spec.to_line(),
            job.id,
            at.index + 1,
            at.total,
            took.as_secs_f64(),
            step.as_deref().unwrap_or("(outside any step)")
        );
        if at.index > 0 {
            details.push_str(&format!(
                "note: the {} job(s) before it in this file succeeded and will run again on retry\n",
                at.index
            ));
        }
        details.push_str(&format!(
            "\nerror:\n  {}\n",
            err.details().replace('\n', "\n  ")
        ));
        // run() errors quote the tail of stderr when it has several lines; then it is not repeated here.
        if let Some(f) = &failure
            && !f.tail.is_empty()
            && !err.details().contains("output tail:")
        {
            details.push_str(&format!("\noutput tail:\n  {}\n", f.tail.join("\n  ")));
        }
        let steps = ctx.steps();
        if !steps.is_empty() {
            details.push_str("\nsteps:\n");
            for s in &steps {
                details.push_str(&format!("  {}\n", step_state_line(s)));
            }
        }
        FailureReport { head, details }
    }

    /// The one-line summary, telling to retry the trigger as `aside` (its name in `failed/`).
    pub fn summary(&self, aside: &str) -> String {
        format!(
            "{}; fix the cause, then `t8k-engine retry {aside}`",
            self.head
        )
    }
}

/// `name [branch]: state, figures` for a failure's step list.
fn step_state_line(s: &StepRecord) -> String {
    let state = match s.ok {
        _ if s.cancelled => "cancelled",
        Some(true) => "ok",
        Some(false) => "FAILED",
        None => "unfinished",
    };
    let branch = if s.branch.is_empty() {
        String::new()
    } else {
        format!(" [{}]", s.branch)
    };
    format!("{}{branch}: {state}, {}", s.name, s.figures())
}

/// `pull 0.4s, build 12.0s FAILED`: a job's steps on one line.
pub fn steps_line(steps: &[StepRecord]) -> String {
    if steps.is_empty() {
        return "none recorded".into();
    }
    steps
        .iter()
        .map(|s| {
            format!(
                "{} {:.1}s{}",
                s.name,
                s.wall_secs(),
                if s.ok == Some(false) { " FAILED" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `on_failure(job, failure)` receives. Hooks post it to chat and mail, so its text is redacted.
#[derive(serde::Serialize)]
struct HookFailure {
    job_id: String,
    trigger: String,
    /// The failed step, `()` outside any step.
    step: Option<String>,
    message: String,
    reason: String,
    tail: Vec<String>,
}

/// The map `on_failure(job, failure)` receives (see [`HookFailure`]).
pub fn failure_map(job: &Job, ctx: &JobCtx, message: &str, reason: &str) -> rhai::Map {
    let failure = ctx.failure();
    let hook = HookFailure {
        job_id: job.id.clone(),
        trigger: job.trigger.clone(),
        step: failure.as_ref().and_then(|f| f.step.clone()),
        message: redact(message).into_owned(),
        reason: redact(reason).into_owned(),
        tail: failure
            .map(|f| f.tail.iter().map(|l| redact(l).into_owned()).collect())
            .unwrap_or_default(),
    };
    rhai::serde::to_dynamic(hook)
        .ok()
        .and_then(|d| d.try_cast::<rhai::Map>())
        .expect("a struct of strings converts to a map")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, branch: &str, ok: Option<bool>, cancelled: bool) -> StepRecord {
        StepRecord {
            name: name.into(),
            branch: branch.into(),
            start_ms: 0,
            wall_ms: 12_345,
            user_cpu_ms: 800,
            sys_cpu_ms: 450,
            max_rss_kib: 43_008,
            read_bytes: 0,
            written_bytes: 0,
            ok,
            cancelled,
        }
    }

    #[test]
    fn steps_read_with_their_figures_and_state() {
        let steps = [
            step("pull", "", Some(true), false),
            step("go build", "backend", Some(false), false),
            step("pnpm build", "frontend", Some(false), true),
            step("switch", "", None, false),
        ];
        assert_eq!(
            steps_line(&steps),
            "pull 12.3s, go build 12.3s FAILED, pnpm build 12.3s FAILED, switch 12.3s"
        );
        assert_eq!(steps_line(&[]), "none recorded");
        let lines: Vec<String> = steps.iter().map(step_state_line).collect();
        assert_eq!(
            lines,
            [
                "pull: ok, 12.3s, cpu 1.2s, peak rss 42 MiB",
                "go build [backend]: FAILED, 12.3s, cpu 1.2s, peak rss 42 MiB",
                "pnpm build [frontend]: cancelled, 12.3s, cpu 1.2s, peak rss 42 MiB",
                "switch: unfinished, 12.3s, cpu 1.2s, peak rss 42 MiB",
            ]
        );
    }

    #[test]
    fn a_failure_report_names_the_file_line_step_and_how_to_retry() {
        let spec = crate::trigger::parse_line("type=main,command=build", 2).unwrap();
        let config = crate::config::Config::default();
        let layout = crate::layout::Layout::new(&config);
        let job = Job {
            id: "01JOB".into(),
            target: layout.target(&spec).unwrap(),
            spec,
            trigger: "build-1.csv".into(),
            root: "/home/t8k".into(),
        };
        let ctx = JobCtx::new(
            crate::script::Settings::from_config(&config, &layout),
            crate::cancel::Cancel::new(),
            Duration::from_secs(60),
            true,
        );
        let err = JobError::Compile("main.rhai:1:5: syntax error".into());
        let at = Position {
            index: 1,
            total: 2,
            attempts_before: 0,
        };
        let report =
            FailureReport::new("build-1.csv", &job, &ctx, &err, Duration::from_secs(3), at);
        assert_eq!(
            report.summary("build-1.csv.1"),
            "build-1.csv line 2 (main build): script does not compile: main.rhai:1:5: syntax error; fix the cause, then `t8k-engine retry build-1.csv.1`"
        );
        for needle in [
            "trigger: build-1.csv line 2: type=main,tenant=default,command=build\n",
            "job: 01JOB (2 of 2), ran 3.0s\nfailed step: (outside any step)\n",
            "note: the 1 job(s) before it in this file succeeded and will run again on retry\n",
            "\nerror:\n  script does not compile: main.rhai:1:5: syntax error\n",
        ] {
            assert!(
                report.details.contains(needle),
                "{needle:?} in {}",
                report.details
            );
        }
    }
}
