//! Owns `t8k-engine watch`: one loop that waits on watch hints, signals and finished jobs, decides which
//! trigger runs next (order, readiness, staleness, coalescing) and speaks the systemd notify protocol. Jobs
//! run on a worker thread through the drain pass, so the loop itself stays free to answer the watchdog.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sd_notify::NotifyState;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::drain::{Drainer, Summary};
use crate::layout::Layout;
use crate::lock::EngineLock;
use crate::queue::{Place, Queue, Reason};
use crate::ready::{self, Readiness, WriterCheck};
use crate::supervise::{self, Cancel};
use crate::trigger::{JobSpec, Kind};
use crate::watch::{Hint, InboxWatch};

/// Quiet time that ends a burst of events, and the longest a burst may delay a scan.
const BURST_QUIET: Duration = Duration::from_millis(3);
const BURST_MAX: Duration = Duration::from_millis(30);
/// How often a file that is still being written is looked at again (events usually come sooner).
const RECHECK: Duration = Duration::from_millis(200);
/// The first wait before a claimed trigger whose run failed on the engine's own I/O runs again; it
/// doubles up to `LAST_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const LAST_RETRY: Duration = Duration::from_secs(60);

/// What makes two jobs the same job for coalescing: everything but `force` and the line.
type Key<'a> = (Kind, &'a str, Option<&'a str>, &'a str);

fn job_key(j: &JobSpec) -> Key<'_> {
    (
        j.kind,
        j.tenant.as_str(),
        j.site.as_deref(),
        j.command.as_str(),
    )
}

enum Event {
    Hint(Hint),
    Signal(i32),
    Done {
        name: String,
        result: Result<bool>,
        summary: Summary,
    },
}

/// When a not-yet-ready file was first seen in its current state, for the stale timeout.
struct Seen {
    state: (u64, u64, i64, i64),
    since: Instant,
}

/// A probe result kept while the file does not change, so a long queue is not re-read after every job.
struct Cached {
    state: (u64, u64, i64, i64),
    readiness: Readiness,
}

struct Daemon {
    layout: Layout,
    drainer: Arc<Drainer>,
    cancel: Cancel,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    watch: Option<InboxWatch>,
    lock: EngineLock,
    writer_check: WriterCheck,
    stale_after: Duration,
    rescan_every: Duration,
    coalesce: bool,
    kill_grace: Duration,
    running: Option<String>,
    recovering: VecDeque<String>,
    /// A claimed trigger whose run failed on the engine's own I/O is retried at this time, later each
    /// time it fails again, and nothing after it starts meanwhile (order is kept).
    retry_at: Option<Instant>,
    retry_delay: Duration,
    ready_sent: bool,
    stopping: bool,
    scan_at: Option<Instant>,
    /// After a failed scan, events do not bring the next one forward: a scan that fails while writing
    /// (a full disk) makes events of its own and would otherwise spin.
    backoff_until: Option<Instant>,
    inbox_check_at: Option<Instant>,
    inbox_missing_since: Option<Instant>,
    burst_start: Instant,
    next_periodic: Instant,
    watchdog: Option<Duration>,
    next_ping: Instant,
    next_extend: Instant,
    seen: HashMap<String, Seen>,
    cache: HashMap<String, Cached>,
    /// `*.csv` files in the inbox that no engine runs, each logged once while it stays.
    strays_told: std::collections::HashSet<String>,
    summary: Summary,
}

/// Runs the daemon until SIGTERM/SIGINT; returns the exit code.
pub fn watch(config: &Config, layout: &Layout) -> Result<u8> {
    let (tx, rx) = channel();
    let signals_tx = tx.clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGUSR1,
    ])
    .context("cannot install signal handlers")?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if signals_tx.send(Event::Signal(sig)).is_err() {
                return;
            }
        }
    });
    let lock = EngineLock::acquire(&layout.engine_dir, |holder| {
        info!(
            "another t8k-engine ({holder}) holds the lock on {}; waiting for it",
            layout.state.display()
        )
    })?;
    let cancel = Cancel::new();
    let drainer = Arc::new(Drainer::new(config, layout, cancel.clone())?);
    let recovering: VecDeque<String> = drainer.queue().claimed()?.into();
    if !recovering.is_empty() {
        info!(
            "finishing {} trigger(s) an earlier engine left claimed: {}",
            recovering.len(),
            recovering.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let now = Instant::now();
    let mut daemon = Daemon {
        layout: layout.clone(),
        drainer,
        cancel,
        tx,
        rx,
        watch: None,
        lock,
        writer_check: config.writer_check(),
        stale_after: Duration::from_secs(config.stale_after),
        rescan_every: Duration::from_secs(config.rescan_interval),
        coalesce: config.coalesce,
        kill_grace: Duration::from_secs(config.kill_grace),
        running: None,
        recovering,
        retry_at: None,
        retry_delay: FIRST_RETRY,
        ready_sent: false,
        stopping: false,
        scan_at: Some(now),
        backoff_until: None,
        inbox_check_at: None,
        inbox_missing_since: None,
        burst_start: now,
        next_periodic: now + Duration::from_secs(config.rescan_interval),
        watchdog: sd_notify::watchdog_enabled(),
        next_ping: now,
        next_extend: now,
        seen: HashMap::new(),
        cache: HashMap::new(),
        strays_told: std::collections::HashSet::new(),
        summary: Summary::default(),
    };
    daemon.arm()?;
    daemon.run()
}

impl Daemon {
    fn queue(&self) -> &Queue {
        self.drainer.queue()
    }

    /// (Re)arms the watch on the inbox; the inbox is recreated if it is missing.
    fn arm(&mut self) -> Result<()> {
        self.watch = None;
        let tx = self.tx.clone();
        let watch = InboxWatch::arm(
            &self.layout.state,
            std::slice::from_ref(&self.layout.engine_dir),
            move |hint| {
                let _ = tx.send(Event::Hint(hint));
            },
        )?;
        self.watch = Some(watch);
        Ok(())
    }

    /// Checks that the watched inbox and the locked engine directory are still the ones on disk. After
    /// they were deleted or replaced: wait a moment (an `rm -rf` may still be running; give the operator
    /// 2 s to recreate the inbox), then recreate the engine's directories, lock the new engine directory
    /// (the old lock died with the old one) and watch the new inbox.
    fn check_inbox(&mut self) -> Result<()> {
        let now = Instant::now();
        let intact =
            self.watch.as_ref().is_some_and(InboxWatch::still_valid) && self.lock.still_valid();
        if intact {
            self.inbox_missing_since = None;
            return Ok(());
        }
        if !self.layout.state.is_dir() {
            let since = *self.inbox_missing_since.get_or_insert(now);
            if since.elapsed() < Duration::from_secs(2) {
                self.inbox_check_at = Some(now + Duration::from_millis(200));
                return Ok(());
            }
        }
        self.inbox_missing_since = None;
        warn!(
            "the inbox {} was deleted or replaced; watching it again",
            self.layout.state.display()
        );
        Queue::open(&self.layout, self.queue().max_bytes())?;
        match EngineLock::try_acquire(&self.layout.engine_dir)? {
            Ok(lock) => self.lock = lock,
            Err(holder) => anyhow::bail!(
                "after {} was replaced, another t8k-engine ({holder}) locked it; stopping so that only one engine runs",
                self.layout.state.display()
            ),
        }
        self.cache.clear();
        self.seen.clear();
        self.arm()?;
        self.scan_at = Some(Instant::now());
        Ok(())
    }

    fn run(&mut self) -> Result<u8> {
        loop {
            let now = Instant::now();
            if self.stopping && self.running.is_none() {
                info!(
                    "stopped: {} job(s) succeeded, {} failed, {} trigger(s) set aside since start",
                    self.summary.jobs_ok, self.summary.jobs_failed, self.summary.set_aside
                );
                return Ok(0);
            }
            if self.running.is_none() && !self.stopping {
                let retry_due = self.retry_at.is_none_or(|t| t <= now);
                if !self.recovering.is_empty() && retry_due {
                    self.retry_at = None;
                    let name = self.recovering.pop_front().expect("not empty");
                    if self.queue().claimed_path(&name).exists() {
                        self.start(name);
                    } else {
                        info!("{name} is no longer claimed; nothing to retry");
                    }
                } else {
                    // A claimed trigger waiting for its retry holds back the inbox (order), not readiness.
                    self.announce_ready();
                    if self.recovering.is_empty() && self.scan_at.is_some_and(|t| t <= now) {
                        self.scan_at = None;
                        if let Err(e) = self.scan_and_start() {
                            // Never spin on a persistent problem (a full disk, a read-only state directory).
                            error!("{e:#}; trying again in 5s");
                            self.scan_at = Some(now + Duration::from_secs(5));
                            self.backoff_until = self.scan_at;
                        }
                    }
                }
            }
            if now >= self.next_periodic {
                self.next_periodic = now + self.rescan_every;
                self.inbox_check_at = Some(now);
                self.scan_at.get_or_insert(now);
            }
            if self.inbox_check_at.is_some_and(|t| t <= now) {
                self.inbox_check_at = None;
                self.check_inbox()?;
            }
            self.keepalive(now);
            let wake = [
                Some(self.next_periodic),
                // A scan waits for the running job: its deadline must not wake an otherwise idle loop.
                self.scan_at
                    .filter(|_| self.running.is_none() && !self.stopping),
                self.inbox_check_at,
                self.retry_at.filter(|_| self.running.is_none()),
                self.watchdog.map(|_| self.next_ping),
                self.extending().then_some(self.next_extend),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + self.rescan_every);
            match self
                .rx
                .recv_timeout(wake.saturating_duration_since(Instant::now()))
            {
                Ok(Event::Hint(Hint::Lost)) => {
                    self.inbox_check_at
                        .get_or_insert(Instant::now() + Duration::from_millis(200));
                }
                Ok(Event::Hint(_)) => self.hint(),
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

    /// Startup recovery and a stop both run a job while systemd waits: keep extending its timeout.
    fn extending(&self) -> bool {
        self.running.is_some() && (!self.ready_sent || self.stopping)
    }

    fn keepalive(&mut self, now: Instant) {
        if let Some(period) = self.watchdog
            && now >= self.next_ping
        {
            // Sent from this loop only: if the loop hangs, the pings stop and systemd sees it.
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            self.next_ping = now + period / 2;
        }
        if self.extending() && now >= self.next_extend {
            let extend = self.kill_grace + Duration::from_secs(30);
            let _ = sd_notify::notify(&[NotifyState::ExtendTimeoutUsec(
                extend.as_micros().min(u32::MAX as u128) as u32,
            )]);
            self.next_extend = now + Duration::from_secs(10);
        }
    }

    fn announce_ready(&mut self) {
        if !self.ready_sent {
            self.ready_sent = true;
            let _ = sd_notify::notify(&[
                NotifyState::Ready,
                NotifyState::Status("watching for triggers"),
            ]);
            info!("watching {} for triggers", self.layout.state.display());
        }
    }

    fn hint(&mut self) {
        let now = Instant::now();
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

    fn signal(&mut self, sig: i32) {
        if sig == signal_hook::consts::SIGUSR1 {
            // `t8k-engine cancel`: stop this job, set its trigger aside, keep running.
            if !self.drainer.cancel_job("cancelled by `t8k-engine cancel`") {
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
                let tag = self.queue().claimed_path(running).display().to_string();
                supervise::kill_tagged_groups(crate::script::JOB_TAG_VAR, &tag, Duration::ZERO);
            }
            std::process::exit(130);
        }
        self.stopping = true;
        let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        match &self.running {
            Some(running) => {
                info!(
                    "{name} received: stopping the running step of {running} (its trigger stays claimed for the next start)"
                );
                self.cancel.cancel(&format!("engine stopping ({name})"));
                self.next_extend = Instant::now();
            }
            None => info!("{name} received: stopping"),
        }
    }

    fn start(&mut self, name: String) {
        let drainer = self.drainer.clone();
        let tx = self.tx.clone();
        self.running = Some(name.clone());
        self.next_extend = Instant::now();
        std::thread::Builder::new()
            .name("job".into())
            .spawn(move || {
                let mut summary = Summary::default();
                let result = drainer.run_claimed(&name, &mut summary);
                let _ = tx.send(Event::Done {
                    name,
                    result,
                    summary,
                });
            })
            .expect("cannot start a job thread");
    }

    fn done(&mut self, name: &str, result: Result<bool>, summary: Summary) {
        self.running = None;
        self.summary.jobs_ok += summary.jobs_ok;
        self.summary.jobs_failed += summary.jobs_failed;
        self.summary.set_aside += summary.set_aside;
        match result {
            Err(e) if !self.stopping => {
                // The engine's own I/O failed (a full disk, a read-only state directory): keep the trigger
                // claimed and first in line, and try again later rather than in a loop.
                let delay = self.retry_delay;
                error!(
                    "{name}: {e:#}; it stays claimed and runs again in {}s, before any later trigger",
                    delay.as_secs()
                );
                self.recovering.push_front(name.to_string());
                self.retry_at = Some(Instant::now() + delay);
                self.retry_delay = (delay * 2).min(LAST_RETRY);
            }
            Err(e) => {
                error!("{name}: {e:#}; it stays claimed and runs again when the engine starts")
            }
            Ok(_) => self.retry_delay = FIRST_RETRY,
        }
        self.scan_at = Some(Instant::now());
    }

    /// Looks at the inbox in name order and starts the first trigger that may run.
    fn scan_and_start(&mut self) -> Result<()> {
        let (names, bad) = self.queue().pending()?;
        for (name, reason) in &bad {
            error!("set aside {name}: {}", reason.summary);
        }
        self.summary.set_aside += bad.len();
        self.tell_strays();
        let present: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        self.cache.retain(|n, _| present.contains(n.as_str()));
        self.seen.retain(|n, _| present.contains(n.as_str()));
        let mut runnable: Vec<(String, Option<Vec<JobSpec>>)> = Vec::new();
        for name in names {
            match self.probe(&name) {
                Readiness::Ready(specs) => runnable.push((name, Some(specs))),
                Readiness::Invalid => runnable.push((name, None)),
                Readiness::Gone => {}
                waiting @ (Readiness::Writing | Readiness::Incomplete(_)) => {
                    let since = self
                        .seen
                        .get(&name)
                        .map_or(Duration::ZERO, |s| s.since.elapsed());
                    if since < self.stale_after {
                        // A later file never overtakes one that is still being written.
                        self.scan_at = Some(Instant::now() + RECHECK.min(self.stale_after - since));
                        break;
                    }
                    let what = match waiting {
                        Readiness::Incomplete(what) => what,
                        _ => "a writer still has it open",
                    };
                    self.set_aside_incomplete(&name, what)?;
                }
            }
        }
        if self.coalesce {
            runnable = self.coalesced(runnable)?;
        }
        if let Some((name, _)) = runnable.into_iter().next() {
            self.cache.remove(&name);
            self.seen.remove(&name);
            let mut summary = Summary::default();
            let claimed = self.drainer.claim(&name, &mut summary)?;
            self.summary.set_aside += summary.set_aside;
            if claimed {
                self.start(name);
            } else {
                self.scan_at = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// Logs each `*.csv` that does not match `build-*.csv` once, while it stays in the inbox.
    fn tell_strays(&mut self) {
        let Ok(strays) = self.queue().strays() else {
            return;
        };
        self.strays_told
            .retain(|told| strays.iter().any(|(name, _)| name == told));
        for (name, warning) in strays {
            if self.strays_told.insert(name) {
                warn!("{warning}");
            }
        }
    }

    fn probe(&mut self, name: &str) -> Readiness {
        let path = self.queue().inbox_path(name);
        let state = std::fs::symlink_metadata(&path).map_or((0, 0, 0, 0), |m| {
            (m.ino(), m.size(), m.mtime(), m.mtime_nsec())
        });
        if let Some(c) = self.cache.get(name)
            && c.state == state
        {
            return c.readiness.clone();
        }
        let readiness = ready::probe(&path, self.queue().max_bytes(), self.writer_check);
        match &readiness {
            Readiness::Ready(_) | Readiness::Invalid => {
                self.cache.insert(
                    name.to_string(),
                    Cached {
                        state,
                        readiness: readiness.clone(),
                    },
                );
            }
            Readiness::Writing | Readiness::Incomplete(_) => {
                let seen = self.seen.entry(name.to_string()).or_insert(Seen {
                    state,
                    since: Instant::now(),
                });
                if seen.state != state {
                    *seen = Seen {
                        state,
                        since: Instant::now(),
                    };
                }
            }
            Readiness::Gone => {}
        }
        readiness
    }

    fn set_aside_incomplete(&mut self, name: &str, what: &str) -> Result<()> {
        let stale = self.stale_after.as_secs();
        let aside = self.queue().set_aside(name, Place::Inbox, |aside| Reason {
            summary: format!(
                "{name}: incomplete: {what} after {stale}s; write triggers with a final newline (echo does), or write a dot-file and rename it; fix failed/{aside}, then `t8k-engine retry {aside}`"
            ),
            details: format!("set aside at {}", jiff::Timestamp::now()),
        })?;
        error!("set aside {name} as failed/{aside}: incomplete ({what} after {stale}s)");
        self.seen.remove(name);
        self.summary.set_aside += 1;
        Ok(())
    }

    /// Drops pending triggers all of whose jobs newer pending triggers ask for too: each job runs once,
    /// for its newest trigger. One pass from the newest back, so a long queue costs O(n) per scan. A
    /// superseded `force=true` is carried over: the surviving trigger is rewritten with it first, so that
    /// a crash in between leaves both files (coalesced again at the next scan), never a lost force.
    fn coalesced(
        &mut self,
        runnable: Vec<(String, Option<Vec<JobSpec>>)>,
    ) -> Result<Vec<(String, Option<Vec<JobSpec>>)>> {
        let key = job_key;
        let mut newest: HashMap<Key, &str> = HashMap::new();
        let mut superseded = Vec::new();
        // Survivor → the jobs (keys) a superseded trigger asked to force.
        let mut forced: HashMap<&str, Vec<Key>> = HashMap::new();
        for (name, specs) in runnable.iter().rev() {
            let Some(specs) = specs else { continue };
            let keys: Vec<Key> = specs.iter().map(key).collect();
            if let Some(by) = keys
                .iter()
                .map(|k| newest.get(k).copied())
                .collect::<Option<Vec<&str>>>()
            {
                for (spec, survivor) in specs.iter().zip(&by) {
                    if spec.force {
                        forced.entry(survivor).or_default().push(key(spec));
                    }
                }
                superseded.push((
                    name.clone(),
                    by.into_iter().max().unwrap_or_default().to_string(),
                ));
            } else {
                for k in keys {
                    newest.entry(k).or_insert(name);
                }
            }
        }
        for (survivor, keys) in &forced {
            let Some((_, Some(specs))) = runnable.iter().find(|(n, _)| n == survivor) else {
                continue;
            };
            if specs.iter().all(|s| s.force || !keys.contains(&key(s))) {
                continue;
            }
            let text: String = specs
                .iter()
                .map(|s| {
                    let force = s.force || keys.contains(&key(s));
                    JobSpec { force, ..s.clone() }.to_line() + "\n"
                })
                .collect();
            self.queue().rewrite_pending(survivor, text.as_bytes())?;
            self.cache.remove(*survivor);
            info!(
                "{survivor} now asks for force=true: a trigger it supersedes asked to build everything"
            );
        }
        for (name, by) in &superseded {
            self.queue().remove_superseded(name)?;
            self.cache.remove(name);
            info!(
                "superseded {name} by {by}: the same job(s) run once, for the newest trigger; removed"
            );
            let event = crate::history::Event::Superseded {
                trigger: name.clone(),
                by: by.clone(),
                at: jiff::Timestamp::now().to_string(),
            };
            if let Err(e) = self.drainer.journal().append(&event) {
                warn!("cannot record {name} as superseded in the history: {e:#}");
            }
        }
        Ok(runnable
            .into_iter()
            .filter(|(n, _)| !superseded.iter().any(|(s, _)| s == n))
            .collect())
    }
}
