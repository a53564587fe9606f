//! Owns live progress on a terminal: a spinner per step with its elapsed time and current output line,
//! turned into a tick or a cross when the step ends (from the `outcome` and `figures` fields its span
//! records), and a summary at the end; it only draws what the log reports and is used instead of plain
//! stderr lines when stderr is a terminal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::joblog::field;

/// How a step ended: the `outcome` field the step's span records when it ends.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Running,
    Done,
    Failed,
    Cancelled,
}

impl End {
    fn from_outcome(outcome: &str) -> End {
        match outcome {
            "done" => End::Done,
            "failed" => End::Failed,
            "cancelled" => End::Cancelled,
            _ => End::Running,
        }
    }
}

/// The progress layer.
pub struct Progress {
    multi: MultiProgress,
    bars: Mutex<HashMap<Id, (ProgressBar, String, End)>>,
    /// Each ended step as its bar was left: mark, name, figures.
    ended: Arc<Mutex<Vec<String>>>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Draws on stderr.
    pub fn new() -> Progress {
        Progress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
            ended: Arc::default(),
        }
    }

    fn step_of<S: Subscriber + for<'a> LookupSpan<'a>>(
        event: &Event<'_>,
        ctx: &Context<'_, S>,
    ) -> Option<Id> {
        ctx.event_scope(event)?
            .find(|span| span.name() == "step")
            .map(|span| span.id())
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Progress {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        if attrs.metadata().name() != "step" {
            return;
        }
        let name = field("name", |f| attrs.record(f)).unwrap_or_default();
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(super::running_style());
        bar.set_prefix(name.clone());
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bars
            .lock()
            .unwrap()
            .insert(id.clone(), (bar, name, End::Running));
    }

    /// A step's span records `outcome` and `figures` when the step ends.
    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut bars = self.bars.lock().unwrap();
        let Some((bar, _, end)) = bars.get_mut(id) else {
            return;
        };
        if let Some(outcome) = field("outcome", |f| values.record(f)) {
            *end = End::from_outcome(&outcome);
        }
        if let Some(figures) = field("figures", |f| values.record(f)) {
            bar.set_message(figures);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(text) = field("message", |v| event.record(v)) else {
            return;
        };
        let text = crate::joblog::branch_prefix(ctx.event_scope(event)) + text.as_str();
        let text = crate::redact::redact(&text).into_owned();
        if let Some(step) = Self::step_of(event, &ctx)
            && let Some((bar, _, _)) = self.bars.lock().unwrap().get_mut(&step)
        {
            // A step's lines show as its latest output; how it ended comes from its span's fields.
            bar.set_message(text.lines().next().unwrap_or("").to_string());
            return;
        }
        // Lines outside steps (job start and end, warnings) scroll above the spinners.
        let level = *event.metadata().level();
        let mark = if level <= Level::WARN { "! " } else { "" };
        let _ = self.multi.println(format!("{mark}{text}"));
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        if let Some((bar, name, end)) = self.bars.lock().unwrap().remove(&id) {
            let mark = match end {
                End::Done => "✓",
                End::Failed => "✗",
                End::Cancelled => "-",
                End::Running => "?",
            };
            bar.set_style(super::finished_style());
            bar.set_prefix(format!("{mark} {name}"));
            bar.finish();
            let line = format!("{} {}", bar.prefix(), bar.message());
            self.ended.lock().unwrap().push(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn a_step_ends_with_the_outcome_and_figures_its_span_records() {
        let progress = Progress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
            ..Progress::new()
        };
        let ended = progress.ended.clone();
        let subscriber = tracing_subscriber::registry().with(progress);
        tracing::subscriber::with_default(subscriber, || {
            for (name, outcome) in [("pull", "done"), ("build", "failed"), ("lint", "cancelled")] {
                let empty = tracing::field::Empty;
                let span = tracing::info_span!("step", name, outcome = empty, figures = empty);
                let _entered = span.enter();
                // The closing line's prose is no longer read: only the fields count.
                tracing::info!("step `{name}` done (this text is not parsed)");
                span.record("outcome", outcome);
                span.record("figures", "1.0s, cpu 0.5s, peak rss 3 MiB");
            }
            let span = tracing::info_span!("step", name = "hung");
            let _entered = span.enter();
            tracing::info!("some output");
        });
        assert_eq!(
            *ended.lock().unwrap(),
            [
                "✓ pull 1.0s, cpu 0.5s, peak rss 3 MiB",
                "✗ build 1.0s, cpu 0.5s, peak rss 3 MiB",
                "- lint 1.0s, cpu 0.5s, peak rss 3 MiB",
                "? hung some output",
            ]
        );
    }
}
