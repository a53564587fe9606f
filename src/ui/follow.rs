//! Owns following one trigger through the journal (`t8k-engine trigger --wait`): each of its jobs as it
//! starts, its steps, its end and why, a newer trigger that superseded it, and an idle engine; on a
//! terminal each job is a spinner showing its current step and latest output line. It only reads.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar};

use crate::history::{Cursor, Event, JobResult, Journal};
use crate::layout::Layout;
use crate::lock::EngineLock;

/// How often the journal is read.
const POLL: Duration = Duration::from_millis(100);

/// Where the journal ends now: taken before a trigger is dropped, so that following it from there misses
/// none of its events, however fast the engine picks it up. `None` (an empty journal, or one that cannot
/// be read now) follows from the journal's start: slower, never wrong, since a trigger's name is unique.
pub fn journal_end(layout: &Layout) -> Option<Cursor> {
    Journal::open(layout).end().ok().flatten()
}

/// How following a trigger ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Followed {
    /// It is done: true when it ran and every job of it succeeded.
    Ended(bool),
    /// The deadline passed first; where it stood then, in words. It goes on: nothing was cancelled.
    TimedOut(String),
}

/// Follows trigger `name` from journal position `from` (see [`journal_end`]) until it is done or
/// `deadline` passes. Each poll reads only what the journal gained since the last (it was the whole
/// journal, up to 32 MiB, every 100 ms), and follows it across rotations.
pub fn follow(
    layout: &Layout,
    name: String,
    from: Option<Cursor>,
    deadline: Option<Instant>,
) -> Result<Followed> {
    let mut f = Follower::new(layout, name, from);
    loop {
        f.read_events();
        f.show_latest_lines();
        if let Some(all_succeeded) = f.finished() {
            return Ok(Followed::Ended(all_succeeded));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Followed::TimedOut(f.where_it_stands()));
        }
        f.tell_if_idle()?;
        let pause = deadline.map_or(POLL, |d| {
            d.saturating_duration_since(Instant::now()).min(POLL)
        });
        std::thread::sleep(pause);
    }
}

/// A job of the followed trigger, with its result once it ended.
struct Mine {
    job_id: String,
    result: Option<JobResult>,
}

/// On a terminal, a spinner per running job with its current step; else plain lines.
enum Screen {
    Terminal {
        multi: MultiProgress,
        bars: HashMap<String, (ProgressBar, String)>,
    },
    Plain,
}

impl Screen {
    /// A line above the spinners (or on stdout).
    fn say(&self, text: String) {
        match self {
            Screen::Terminal { multi, .. } => {
                let _ = multi.println(text);
            }
            Screen::Plain => println!("{text}"),
        }
    }
}

struct Follower {
    layout: Layout,
    journal: Journal,
    jobs_dir: PathBuf,
    name: String,
    /// Where reading the journal has got to.
    cursor: Option<Cursor>,
    mine: Vec<Mine>,
    told_idle: bool,
    screen: Screen,
}

impl Follower {
    fn new(layout: &Layout, name: String, from: Option<Cursor>) -> Follower {
        let journal = Journal::open(layout);
        let screen = if std::io::stderr().is_terminal() {
            Screen::Terminal {
                multi: MultiProgress::new(),
                bars: HashMap::new(),
            }
        } else {
            Screen::Plain
        };
        Follower {
            cursor: from,
            journal,
            jobs_dir: layout.jobs_dir.clone(),
            layout: layout.clone(),
            name,
            mine: Vec::new(),
            told_idle: false,
            screen,
        }
    }

    fn read_events(&mut self) {
        // A journal that cannot be read now is read again at the next poll, from the same cursor.
        let events = self
            .journal
            .events_after(&mut self.cursor)
            .unwrap_or_default();
        for event in &events {
            self.event(event);
        }
    }

    fn event(&mut self, event: &Event) {
        match event {
            Event::JobStarted {
                job_id,
                trigger,
                target,
                command,
                ..
            } if *trigger == self.name => self.job_started(job_id, &format!("{target} {command}")),
            Event::StepStarted {
                job_id,
                name,
                branch,
                ..
            } if self.is_mine(job_id) => {
                let step = format!("{name}{}", super::branch_suffix(branch));
                match &mut self.screen {
                    Screen::Terminal { bars, .. } => {
                        if let Some((bar, current)) = bars.get_mut(job_id) {
                            bar.set_message(step.clone());
                            *current = step;
                        }
                    }
                    Screen::Plain => println!("  step {step}"),
                }
            }
            Event::JobFinished {
                job_id,
                result,
                reason,
                duration_ms,
                ..
            } if self.is_mine(job_id) => {
                self.job_finished(job_id, result, reason.as_deref(), *duration_ms)
            }
            Event::Superseded { trigger, by, .. } if *trigger == self.name => {
                self.screen
                    .say(format!("{trigger} was superseded by {by}: following it"));
                self.name = by.clone();
            }
            _ => {}
        }
    }

    fn is_mine(&self, job_id: &str) -> bool {
        self.mine.iter().any(|m| m.job_id == job_id)
    }

    fn job_started(&mut self, job_id: &str, what: &str) {
        if let Screen::Terminal { multi, bars } = &mut self.screen {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(super::running_style());
            bar.set_prefix(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bars.insert(job_id.to_string(), (bar, String::new()));
        }
        self.screen.say(format!("job {job_id} started: {what}"));
        self.mine.push(Mine {
            job_id: job_id.to_string(),
            result: None,
        });
    }

    fn job_finished(&mut self, job_id: &str, result: &JobResult, reason: Option<&str>, ms: u64) {
        let line = format!("job {job_id} {result} in {:.1}s", ms as f64 / 1000.0);
        let succeeded = *result == JobResult::Succeeded;
        let bar = match &mut self.screen {
            Screen::Terminal { bars, .. } => bars.remove(job_id),
            Screen::Plain => None,
        };
        match bar {
            Some((bar, _)) => {
                let mark = if succeeded { "✓" } else { "✗" };
                bar.set_style(super::finished_style());
                bar.set_prefix(format!("{mark} {}", bar.prefix()));
                bar.finish_with_message(line);
            }
            None => println!("{line}"),
        }
        if let Some(reason) = reason.filter(|_| !succeeded) {
            self.screen.say(format!("  {reason}"));
        }
        if let Some(m) = self.mine.iter_mut().find(|m| m.job_id == job_id) {
            m.result = Some(result.clone());
        }
    }

    /// Each spinner's current step with the latest line of its job's own log.
    fn show_latest_lines(&self) {
        let Screen::Terminal { bars, .. } = &self.screen else {
            return;
        };
        for (job_id, (bar, step)) in bars {
            let text = std::fs::read_to_string(crate::joblog::log_path(&self.jobs_dir, job_id))
                .unwrap_or_default();
            if let Some(last) = text.lines().last() {
                let last = last.split_once(' ').map_or(last, |(_, rest)| rest);
                bar.set_message(format!("{step}: {last}"));
            }
        }
    }

    /// `Some(all succeeded)` once the trigger is neither waiting nor claimed and every job of it ended.
    fn finished(&self) -> Option<bool> {
        let (state, work) = (&self.layout.state, &self.layout.work);
        let pending = state.join(&self.name).exists() || work.join(&self.name).exists();
        if pending || self.mine.iter().any(|m| m.result.is_none()) {
            return None;
        }
        if self.mine.is_empty() {
            let reason = format!("{}.reason", self.name);
            let reason = crate::fs::read_small(&self.layout.failed, 1, &reason).unwrap_or_default();
            self.screen.say(format!(
                "{} was set aside: {}",
                self.name,
                reason.lines().next().unwrap_or("see state/failed/")
            ));
            return Some(false);
        }
        Some(
            self.mine
                .iter()
                .all(|m| m.result == Some(JobResult::Succeeded)),
        )
    }

    /// Where the trigger stands while it is not done: waiting, claimed, or its running job and step.
    fn where_it_stands(&self) -> String {
        if let Some(m) = self.mine.iter().find(|m| m.result.is_none()) {
            return match &self.screen {
                Screen::Terminal { bars, .. } => match bars.get(&m.job_id) {
                    Some((_, step)) if !step.is_empty() => {
                        format!("job {} is running (step {step})", m.job_id)
                    }
                    _ => format!("job {} is running", m.job_id),
                },
                Screen::Plain => format!("job {} is running", m.job_id),
            };
        }
        if self.layout.state.join(&self.name).exists() {
            let engine = match EngineLock::probe(&self.layout.engine_dir) {
                Ok(None) => " and no engine is running to pick it up",
                _ => "",
            };
            format!("{} is still waiting in the inbox{engine}", self.name)
        } else {
            format!("{} is claimed; its job has not started yet", self.name)
        }
    }

    /// Says once when the trigger waits in the inbox and no engine runs to pick it up.
    fn tell_if_idle(&mut self) -> Result<()> {
        if !self.told_idle
            && self.layout.state.join(&self.name).exists()
            && EngineLock::probe(&self.layout.engine_dir)?.is_none()
        {
            self.screen.say(format!(
                "waiting: no engine is running to pick {} up (start `t8k-engine watch`)",
                self.name
            ));
            self.told_idle = true;
        }
        Ok(())
    }
}
