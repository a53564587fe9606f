//! Owns live progress on a terminal: a spinner per step with its elapsed time and current output line,
//! turned into a tick or a cross when the step ends, and a summary at the end; it only draws what the
//! log reports and is used instead of plain stderr lines when stderr is a terminal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

struct Message(Option<String>);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

struct StepName(String);

impl Visit for StepName {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "name" {
            self.0 = format!("{value:?}");
        }
    }
}

/// How a step ended, from its closing log line.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Running,
    Done,
    Failed,
    Cancelled,
}

/// The progress layer.
pub struct Progress {
    multi: MultiProgress,
    bars: Mutex<HashMap<Id, (ProgressBar, String, End)>>,
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
        let mut name = StepName(String::new());
        attrs.record(&mut name);
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed:>4} {wide_msg:.dim}")
                .expect("a valid template"),
        );
        bar.set_prefix(name.0.clone());
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bars
            .lock()
            .unwrap()
            .insert(id.clone(), (bar, name.0, End::Running));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut message = Message(None);
        event.record(&mut message);
        let Some(text) = message.0 else { return };
        let text = crate::redact::redact(&text).into_owned();
        if let Some(step) = Self::step_of(event, &ctx)
            && let Some((bar, name, end)) = self.bars.lock().unwrap().get_mut(&step)
        {
            // The step's own closing line says how it ended; anything else is its latest output.
            let closing = format!("step `{name}` ");
            if let Some(rest) = text.split_once(&closing).map(|(_, r)| r) {
                *end = if rest.starts_with("done") {
                    End::Done
                } else if rest.starts_with("failed") {
                    End::Failed
                } else if rest.starts_with("cancelled") {
                    End::Cancelled
                } else {
                    *end
                };
                if let Some(figures) = rest.split_once('(').map(|(_, f)| f.trim_end_matches(')')) {
                    bar.set_message(figures.to_string());
                }
            } else {
                bar.set_message(text.lines().next().unwrap_or("").to_string());
            }
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
            bar.set_style(
                ProgressStyle::with_template("{prefix} {wide_msg}").expect("a valid template"),
            );
            bar.set_prefix(format!("{mark} {name}"));
            bar.finish();
        }
    }
}
