//! Owns `t8k-engine watch`: one event loop that waits on watch hints, signals and finished jobs, asks the
//! engine's scheduler which trigger runs next and starts it on a worker thread, so that the loop itself
//! stays free to answer systemd (`notify`) and to guard its inbox (`inbox`). It decides no order itself.

mod inbox;
mod notify;

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracing::{error, info, warn};

use crate::cancel::Cancel;
use crate::config::Config;
use crate::engine::schedule::{Next, Scheduler};
use crate::engine::{Engine, Summary};
use crate::layout::Layout;
use crate::lock::EngineLock;
use crate::supervise;
use crate::watch::Hint;
use inbox::{Checked, InboxGuard};
use notify::Notifier;

/// Quiet time that ends a burst of events, and the longest a burst may delay a scan.
const BURST_QUIET: Duration = Duration::from_millis(3);
const BURST_MAX: Duration = Duration::from_millis(30);
/// How long events do not bring a scan forward after one failed.
const SCAN_BACKOFF: Duration = Duration::from_secs(5);

enum Event {
    Hint(Hint),
    Signal(i32),
    Done {
        name: String,
        result: Result<bool>,
        summary: Summary,
    },
}

/// When the inbox is scanned next: soon after a burst of events ends, at once after a job, later after a
/// failed scan.
struct Debounce {
    scan_at: Option<Instant>,
    /// After a failed scan, events do not bring the next one forward: a scan that fails while writing
    /// (a full disk) makes events of its own and would otherwise spin.
    backoff_until: Option<Instant>,
    burst_start: Instant,
}

impl Debounce {
    fn hint(&mut self, now: Instant) {
        let at = match self.scan_at {
            None => {
                self.burst_start = now;
                now + BURST_QUIET
            }
            Some(_) => (now + BURST_QUIET).min(self.burst_start + BURST_MAX),
        };
        self.scan_at = Some(
            self.backoff_until
                .filter(|b| *b > now)
                .map_or(at, |b| at.max(b)),
        );
    }

    fn failed(&mut self, now: Instant) {
        self.scan_at = Some(now + SCAN_BACKOFF);
        self.backoff_until = self.scan_at;
    }

    fn due(&self, now: Instant) -> bool {
        self.scan_at.is_some_and(|t| t <= now)
    }
}

struct Daemon {
    engine: Arc<Engine>,
    schedule: Scheduler,
    cancel: Cancel,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    inbox: InboxGuard,
    notifier: Notifier,
    debounce: Debounce,
    rescan_every: Duration,
    next_periodic: Instant,
    running: Option<String>,
    /// The running job's thread, joined when its job is done so that what it freed on the way out (its
    /// allocator cache, thread-locals) is back in the allocator before an idle trim.
    job_thread: Option<std::thread::JoinHandle<()>>,
    stopping: bool,
    summary: Summary,
    /// Memory was given back since the last job ended (see `trim`).
    trimmed: bool,
    /// When status.json's queue is read again after the inbox changed (also while a job runs, when the
    /// scheduler does not look).
    status_refresh_at: Option<Instant>,
    /// What status.json's warnings are read from.
    config: Config,
    layout: Layout,
}

/// Runs the daemon until SIGTERM/SIGINT (a second one exits at once with 130).
pub fn watch(config: &Config, layout: &Layout) -> Result<()> {
    crate::trim::configure_allocator();
    let (tx, rx) = channel();
    listen_for_signals(tx.clone())?;
    let lock = EngineLock::acquire(&layout.engine_dir, |holder| {
        info!(
            "another t8k-engine ({holder}) holds the lock on {}; waiting for it",
            layout.state.display()
        )
    })?;
    let cancel = Cancel::new();
    let engine = Arc::new(Engine::new(config, layout, cancel.clone())?);
    let schedule = engine.watch_scheduler()?;
    let claimed = engine.queue().claimed()?;
    if !claimed.is_empty() {
        info!(
            "finishing {} trigger(s) an earlier engine left claimed: {}",
            claimed.len(),
            claimed.join(", ")
        );
    }
    let hints = tx.clone();
    let tell = Arc::new(move |hint| {
        let _ = hints.send(Event::Hint(hint));
    });
    let now = Instant::now();
    let mut daemon = Daemon {
        inbox: InboxGuard::new(layout, config.max_trigger_bytes, lock, tell)?,
        engine,
        schedule,
        cancel,
        tx,
        rx,
        notifier: Notifier::new(config.kill_grace()),
        debounce: Debounce {
            scan_at: Some(now),
            backoff_until: None,
            burst_start: now,
        },
        rescan_every: config.rescan_interval(),
        next_periodic: now + config.rescan_interval(),
        running: None,
        job_thread: None,
        stopping: false,
        summary: Summary::default(),
        trimmed: false,
        status_refresh_at: None,
        config: config.clone(),
        layout: layout.clone(),
    };
    daemon.refresh_warnings();
    let ended = daemon.run();
    daemon.engine.status().stopped();
    ended
}

fn listen_for_signals(tx: Sender<Event>) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGUSR1,
    ])
    .context("cannot install signal handlers")?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if tx.send(Event::Signal(sig)).is_err() {
                return;
            }
        }
    });
    Ok(())
}

impl Daemon {
    /// status.json's warnings, read again (the inbox may hold strays now, the scripts may have changed).
    fn refresh_warnings(&self) {
        let warnings = crate::preflight::standing_warnings(&self.config, &self.layout);
        self.engine.status().set_warnings(warnings);
    }

    fn run(&mut self) -> Result<()> {
        loop {
            let now = Instant::now();
            if self.stopping && self.running.is_none() {
                info!(
                    "stopped: {} job(s) succeeded, {} failed, {} trigger(s) set aside since start",
                    self.summary.jobs_ok, self.summary.jobs_failed, self.summary.set_aside
                );
                return Ok(());
            }
            if self.running.is_none() && !self.stopping {
                self.start_next(now);
            }
            if now >= self.next_periodic {
                self.next_periodic = now + self.rescan_every;
                self.inbox.check_at = Some(now);
                self.debounce.scan_at.get_or_insert(now);
            }
            if self.inbox.check_at.is_some_and(|t| t <= now) {
                self.inbox.check_at = None;
                if self.inbox.check()? == Checked::Renewed {
                    self.schedule.forget();
                    self.debounce.scan_at = Some(Instant::now());
                }
            }
            if self.status_refresh_at.is_some_and(|t| t <= now) {
                self.status_refresh_at = None;
                self.engine.refresh_status_queue(self.running.as_deref());
                self.refresh_warnings();
            }
            self.notifier.keepalive(now, self.extending());
            self.trim_when_idle();
            let wake = self.wake(now);
            match self
                .rx
                .recv_timeout(wake.saturating_duration_since(Instant::now()))
            {
                Ok(Event::Hint(Hint::Lost)) => self.inbox.lost(),
                Ok(Event::Hint(_)) => {
                    let now = Instant::now();
                    self.debounce.hint(now);
                    self.status_refresh_at.get_or_insert(now + BURST_MAX);
                }
                Ok(Event::Signal(sig)) => self.signal(sig),
                Ok(Event::Done {
                    name,
                    result,
                    summary,
                }) => {
                    // `pause` here hangs the loop that answers the watchdog (the systemd tests).
                    crate::fault_point!("daemon.loop");
                    self.done(&name, result, summary)
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => unreachable!("the daemon holds a sender"),
            }
        }
    }

    /// Starts the next trigger when one is due: a claimed one first (rule 1 of the schedule), else the
    /// inbox's once the debounce says to scan. READY goes out once no claimed trigger is about to run.
    fn start_next(&mut self, now: Instant) {
        let claimed_due = self.schedule.claimed_due(now);
        if !claimed_due {
            // A claimed trigger waiting for its retry holds back the inbox (order), not readiness.
            self.notifier.ready(self.inbox.path());
        }
        let scan_due = !self.schedule.has_claimed() && self.debounce.due(now);
        if !claimed_due && !scan_due {
            return;
        }
        if scan_due {
            self.debounce.scan_at = None;
        }
        let engine = self.engine.clone();
        let next = self
            .schedule
            .next(engine.queue(), engine.journal(), &mut self.summary);
        let started = match next {
            Ok(Next::Claimed(name)) => {
                self.start(name);
                Ok(())
            }
            Ok(Next::Inbox(name)) => self.claim_and_start(name),
            Ok(Next::Wait(at)) => {
                self.debounce.scan_at = Some(at);
                Ok(())
            }
            Ok(Next::Idle) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            // Never spin on a persistent problem (a full disk, a read-only state directory).
            error!("{e:#}; trying again in {}s", SCAN_BACKOFF.as_secs());
            self.debounce.failed(now);
        }
    }

    fn claim_and_start(&mut self, name: String) -> Result<()> {
        let mut summary = Summary::default();
        let claimed = self.engine.claim(&name, &mut summary)?;
        self.summary.add(&summary);
        if claimed {
            self.start(name);
        } else {
            self.debounce.scan_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Once nothing runs and no scan is due, ends the round (what scripts remembered for it is forgotten)
    /// and gives back what start-up or the last job left resident: the idle daemon then holds only what its
    /// loop touches. Once per idle period, so a queue of triggers pays nothing between its jobs.
    fn trim_when_idle(&mut self) {
        if self.trimmed || self.running.is_some() || self.debounce.scan_at.is_some() {
            return;
        }
        self.trimmed = true;
        self.engine.round_over();
        let t = crate::trim::idle();
        tracing::debug!(
            "idle: resident memory {}; {} after the allocator's trim; {} once the engine's code left the page tables (it stays in the page cache)",
            t.before,
            t.heap_trimmed,
            t.after
        );
    }

    /// The earliest time the loop must wake at, whatever arrives.
    fn wake(&self, now: Instant) -> Instant {
        let idle = self.running.is_none();
        [
            Some(self.next_periodic),
            // A scan waits for the running job: its deadline must not wake an otherwise idle loop.
            self.debounce.scan_at.filter(|_| idle && !self.stopping),
            self.inbox.check_at,
            self.schedule.retry_at().filter(|_| idle),
            self.notifier.next_due(self.extending()),
            self.status_refresh_at,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + self.rescan_every)
    }

    /// Startup recovery and a stop both run a job while systemd waits: keep extending its timeout.
    fn extending(&self) -> bool {
        self.running.is_some() && (!self.notifier.ready_sent() || self.stopping)
    }

    fn signal(&mut self, sig: i32) {
        if sig == signal_hook::consts::SIGUSR1 {
            // `t8k-engine cancel`: stop this job, set its trigger aside, keep running.
            if !self.engine.cancel_job("cancelled by `t8k-engine cancel`") {
                info!("cancel requested, but no job is running");
            }
            return;
        }
        let name = if sig == signal_hook::consts::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        if self.stopping {
            warn!("{name} again: killing the running step now and exiting");
            if let Some(running) = &self.running {
                supervise::kill_job(&self.engine.queue().claimed_path(running), Duration::ZERO);
            }
            std::process::exit(130);
        }
        self.stopping = true;
        self.notifier.stopping();
        match &self.running {
            Some(running) => {
                info!(
                    "{name} received: stopping the running step of {running} (its trigger stays claimed for the next start)"
                );
                self.cancel.cancel(&format!("engine stopping ({name})"));
            }
            None => info!("{name} received: stopping"),
        }
    }

    fn start(&mut self, name: String) {
        let engine = self.engine.clone();
        let tx = self.tx.clone();
        self.running = Some(name.clone());
        self.trimmed = false;
        self.notifier.job_started();
        let thread = std::thread::Builder::new()
            .name("job".into())
            .spawn(move || {
                let mut summary = Summary::default();
                let result = engine.run_claimed(&name, &mut summary);
                let _ = tx.send(Event::Done {
                    name,
                    result,
                    summary,
                });
            })
            .expect("cannot start a job thread");
        self.job_thread = Some(thread);
    }

    fn done(&mut self, name: &str, result: Result<bool>, summary: Summary) {
        self.running = None;
        // It has sent its result and only exits now; a panic after the send has nothing left to report.
        if let Some(thread) = self.job_thread.take() {
            let _ = thread.join();
        }
        self.summary.add(&summary);
        match result {
            Err(e) if !self.stopping => {
                // The engine's own I/O failed (a full disk, a read-only state directory): keep the trigger
                // claimed and first in line, and try again later rather than in a loop.
                let delay = self.schedule.retry_later(name);
                error!(
                    "{name}: {e:#}; it stays claimed and runs again in {}s, before any later trigger",
                    delay.as_secs()
                );
            }
            Err(e) => {
                error!("{name}: {e:#}; it stays claimed and runs again when the engine starts")
            }
            Ok(_) => self.schedule.ran(),
        }
        self.debounce.scan_at = Some(Instant::now());
    }
}
