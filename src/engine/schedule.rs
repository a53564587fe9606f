//! Owns the one answer to "which trigger runs next", for `run` and `watch` alike: the ordering policy
//! below, the probes it caches and the set-asides it decides (unsafe names, files that never complete)
//! and the coalescing of identical jobs. It never runs a job and never claims a file.
//!
//! The policy, in order:
//! 1. **Claimed first.** Triggers left in `work/` (by a crash, a stop, or a run that failed on the
//!    engine's own I/O) run before anything in the inbox, in name order.
//! 2. **A retry holds back the inbox.** A claimed trigger whose run failed on the engine's own I/O (a full
//!    disk) runs again after a delay that doubles up to a minute; nothing after it starts meanwhile, so
//!    order is kept.
//! 3. **Name order.** Inbox files run in byte-wise name order (`build-$(date +%s).csv` sorts by time).
//! 4. **A later file never overtakes one still being written.** While a producer has a file open (or
//!    it has no final newline yet), nothing after it runs; `stale_after` bounds the wait. Past it,
//!    `watch` sets the file aside as incomplete, while `run` (started once files have landed, as the
//!    concierge was) claims it anyway and lets the parse decide, and accepts a missing final newline.
//! 5. **Coalescing** (`watch` only, with `coalesce = true`): a pending trigger all of whose jobs newer
//!    pending triggers ask for too is removed, its `force=true` carried to the survivor; each job runs
//!    once, for its newest trigger. `run` runs every file it finds, as the concierge did.
//! 6. Files that are not regular, too large or do not parse are claimed like any other, so that the pass
//!    sets them aside with their reason; files with unsafe names are set aside while listing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::{error, info, warn};

use super::Summary;
use crate::history::{Event, Journal};
use crate::queue::ready::{self, Readiness, WriterProbe};
use crate::queue::{Pending, Place, Queue, Reason};
use crate::trigger::{JobSpec, Kind};

/// Which command asks: `run` drains what is there once, `watch` waits for triggers as they come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `t8k-engine run`.
    Pass,
    /// `t8k-engine watch`.
    Watch,
}

/// The knobs of the policy (see the module's documentation).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `run` or `watch`.
    pub mode: Mode,
    /// How long a file may be written (or stay without a final newline) before rule 4 gives up on it.
    pub stale_after: Duration,
    /// How a producer still writing is detected.
    pub writer: WriterProbe,
    /// Rule 5.
    pub coalesce: bool,
    /// How soon a file still being written is looked at again (events usually come sooner in `watch`).
    pub recheck: Duration,
    /// The first delay of rule 2, doubled after each failure up to `last_retry`.
    pub first_retry: Duration,
    /// The longest delay of rule 2.
    pub last_retry: Duration,
}

impl Policy {
    /// `run`'s policy with the default timings.
    pub fn pass() -> Policy {
        Policy {
            mode: Mode::Pass,
            stale_after: Duration::from_secs(60),
            writer: WriterProbe::Lease,
            coalesce: false,
            recheck: Duration::from_millis(20),
            first_retry: Duration::from_secs(5),
            last_retry: Duration::from_secs(60),
        }
    }

    /// `watch`'s policy on the same settings.
    pub fn watch(base: &Policy) -> Policy {
        Policy {
            mode: Mode::Watch,
            recheck: Duration::from_millis(200),
            ..*base
        }
    }
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Run this claimed trigger now.
    Claimed(String),
    /// Claim this inbox trigger and run it.
    Inbox(String),
    /// Nothing may start before this time (a retry, a file still being written); ask again then.
    Wait(Instant),
    /// Nothing to do until the inbox changes.
    Idle,
}

/// What identifies a file's content for the probe cache: a new inode, size or mtime is a new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileState {
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileState {
    fn of(path: &std::path::Path) -> FileState {
        std::fs::symlink_metadata(path).map_or(
            FileState {
                ino: 0,
                size: 0,
                mtime: 0,
                mtime_nsec: 0,
            },
            |m| FileState {
                ino: m.ino(),
                size: m.size(),
                mtime: m.mtime(),
                mtime_nsec: m.mtime_nsec(),
            },
        )
    }
}

/// When a not-yet-ready file was first seen in its current state, for the stale timeout.
struct Seen {
    state: FileState,
    since: Instant,
}

/// A probe result kept while the file does not change, so a long queue is not re-read after every job.
struct Cached {
    state: FileState,
    readiness: Readiness,
}

/// Rule 2's state: when the claimed trigger at the front may run again, and the delay after that.
struct Retry {
    at: Option<Instant>,
    delay: Duration,
}

/// Decides which trigger runs next, by the policy in the module's documentation.
pub struct Scheduler {
    policy: Policy,
    claimed: VecDeque<String>,
    retry: Retry,
    seen: HashMap<String, Seen>,
    cache: HashMap<String, Cached>,
    /// `*.csv` files in the inbox that no engine runs, each logged once while it stays.
    strays_told: HashSet<String>,
}

/// A file that may run, with its jobs when it parsed (`None`: the pass will set it aside).
struct Runnable {
    name: String,
    specs: Option<Vec<JobSpec>>,
}

impl Scheduler {
    /// A scheduler that finishes `claimed` (in name order) before the inbox.
    pub fn new(policy: Policy, claimed: Vec<String>) -> Scheduler {
        Scheduler {
            retry: Retry {
                at: None,
                delay: policy.first_retry,
            },
            policy,
            claimed: claimed.into(),
            seen: HashMap::new(),
            cache: HashMap::new(),
            strays_told: HashSet::new(),
        }
    }

    /// Claimed triggers are waiting (rule 1), due or not.
    pub fn has_claimed(&self) -> bool {
        !self.claimed.is_empty()
    }

    /// A claimed trigger may run now: no retry delay holds it back (rule 2).
    pub fn claimed_due(&self, now: Instant) -> bool {
        self.has_claimed() && self.retry.at.is_none_or(|t| t <= now)
    }

    /// When a claimed trigger that waits for its retry is due.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry.at.filter(|_| self.has_claimed())
    }

    /// Rule 2: the run of claimed trigger `name` failed on the engine's own I/O. It runs again first, after
    /// a delay that doubles each time; returns the delay.
    pub fn retry_later(&mut self, name: &str) -> Duration {
        let delay = self.retry.delay;
        self.claimed.push_front(name.to_string());
        self.retry.at = Some(Instant::now() + delay);
        self.retry.delay = (delay * 2).min(self.policy.last_retry);
        delay
    }

    /// A run ended without an I/O failure of the engine's: the next retry waits the first delay again.
    pub fn ran(&mut self) {
        self.retry.delay = self.policy.first_retry;
    }

    /// Forgets what was seen of the inbox (it was replaced).
    pub fn forget(&mut self) {
        self.cache.clear();
        self.seen.clear();
    }

    /// The next trigger to run, by the policy; sets aside what the policy gives up on (counted in
    /// `summary`) and coalesces. `journal` records superseded triggers.
    pub fn next(
        &mut self,
        queue: &Queue,
        journal: &Journal,
        summary: &mut Summary,
    ) -> Result<Next> {
        let now = Instant::now();
        while let Some(name) = self.claimed.front().cloned() {
            if let Some(at) = self.retry.at.filter(|t| *t > now) {
                return Ok(Next::Wait(at));
            }
            self.retry.at = None;
            self.claimed.pop_front();
            if queue.claimed_path(&name).exists() {
                return Ok(Next::Claimed(name));
            }
            info!("{name} is no longer claimed; nothing to retry");
        }
        let (mut runnable, wait) = self.scan(queue, summary)?;
        if self.policy.coalesce {
            runnable = self.coalesced(runnable, queue, journal)?;
        }
        Ok(match (runnable.into_iter().next(), wait) {
            (Some(first), _) => {
                self.cache.remove(&first.name);
                self.seen.remove(&first.name);
                Next::Inbox(first.name)
            }
            (None, Some(at)) => Next::Wait(at),
            (None, None) => Next::Idle,
        })
    }

    /// The inbox in order up to the first file still being written (rule 4), and when to look at that
    /// one again.
    fn scan(
        &mut self,
        queue: &Queue,
        summary: &mut Summary,
    ) -> Result<(Vec<Runnable>, Option<Instant>)> {
        let Pending { names, set_aside } = queue.pending()?;
        for a in &set_aside {
            error!("set aside {}: {}", a.name, a.reason.summary);
        }
        summary.set_aside += set_aside.len();
        self.tell_strays(queue);
        let present: HashSet<&str> = names.iter().map(String::as_str).collect();
        self.cache.retain(|n, _| present.contains(n.as_str()));
        self.seen.retain(|n, _| present.contains(n.as_str()));
        let mut runnable = Vec::new();
        for name in names {
            let waiting = match self.probe(queue, &name) {
                Readiness::Ready(specs) => Some(Runnable {
                    name,
                    specs: Some(specs),
                }),
                Readiness::Invalid => Some(Runnable { name, specs: None }),
                // A run accepts a closed file without its final newline (the concierge did).
                Readiness::Incomplete(_) if self.policy.mode == Mode::Pass => {
                    Some(Runnable { name, specs: None })
                }
                Readiness::Gone => continue,
                waiting @ (Readiness::Writing | Readiness::Incomplete(_)) => {
                    let since = self
                        .seen
                        .get(&name)
                        .map_or(Duration::ZERO, |s| s.since.elapsed());
                    if since < self.policy.stale_after {
                        let left = self.policy.stale_after - since;
                        return Ok((
                            runnable,
                            Some(Instant::now() + self.policy.recheck.min(left)),
                        ));
                    }
                    if self.policy.mode == Mode::Watch {
                        let what = match waiting {
                            Readiness::Incomplete(what) => what,
                            _ => "a writer still has it open",
                        };
                        self.set_aside_incomplete(queue, &name, what)?;
                        summary.set_aside += 1;
                        continue;
                    }
                    // A run gives the writer `stale_after`, then lets the claim and the parse decide.
                    Some(Runnable { name, specs: None })
                }
            };
            runnable.extend(waiting);
            if !self.policy.coalesce {
                // Only coalescing needs to look past the first file that may run.
                break;
            }
        }
        Ok((runnable, None))
    }

    /// Logs each `*.csv` that does not match `build-*.csv` once, while it stays in the inbox.
    fn tell_strays(&mut self, queue: &Queue) {
        let Ok(strays) = queue.strays() else {
            return;
        };
        self.strays_told
            .retain(|told| strays.iter().any(|s| s.name == *told));
        for s in strays {
            if self.strays_told.insert(s.name) {
                warn!("{}", s.warning);
            }
        }
    }

    fn probe(&mut self, queue: &Queue, name: &str) -> Readiness {
        let path = queue.inbox_path(name);
        let state = FileState::of(&path);
        if let Some(c) = self.cache.get(name)
            && c.state == state
        {
            return c.readiness.clone();
        }
        let readiness = ready::probe(&path, queue.max_bytes(), self.policy.writer);
        match &readiness {
            Readiness::Ready(_) | Readiness::Invalid => {
                let readiness = readiness.clone();
                self.cache
                    .insert(name.to_string(), Cached { state, readiness });
            }
            Readiness::Writing | Readiness::Incomplete(_) => {
                let fresh = Seen {
                    state,
                    since: Instant::now(),
                };
                match self.seen.get_mut(name) {
                    Some(seen) if seen.state == state => {}
                    Some(seen) => *seen = fresh,
                    None => {
                        if readiness == Readiness::Writing {
                            info!("waiting for {name}: a producer still has it open for writing");
                        }
                        self.seen.insert(name.to_string(), fresh);
                    }
                }
            }
            Readiness::Gone => {}
        }
        readiness
    }

    fn set_aside_incomplete(&mut self, queue: &Queue, name: &str, what: &str) -> Result<()> {
        let stale = self.policy.stale_after.as_secs();
        let aside = queue.set_aside(name, Place::Inbox, |aside| Reason {
            summary: format!(
                "{name}: incomplete: {what} after {stale}s; write triggers with a final newline (echo does), or write a dot-file and rename it; fix failed/{aside}, then `t8k-engine retry {aside}`"
            ),
            details: format!("set aside at {}", jiff::Timestamp::now()),
        })?;
        error!("set aside {name} as failed/{aside}: incomplete ({what} after {stale}s)");
        self.seen.remove(name);
        Ok(())
    }

    /// Rule 5, in one pass from the newest back, so a long queue costs O(n) per scan. A superseded
    /// `force=true` is carried over: the surviving trigger is rewritten with it first, so that a crash in
    /// between leaves both files (coalesced again at the next scan), never a lost force.
    fn coalesced(
        &mut self,
        runnable: Vec<Runnable>,
        queue: &Queue,
        journal: &Journal,
    ) -> Result<Vec<Runnable>> {
        let plan = coalescing_plan(&runnable);
        for (survivor, text) in &plan.rewrites {
            queue.rewrite_pending(survivor, text.as_bytes())?;
            self.cache.remove(survivor);
            info!(
                "{survivor} now asks for force=true: a trigger it supersedes asked to build everything"
            );
        }
        for (name, by) in &plan.superseded {
            queue.remove_superseded(name)?;
            self.cache.remove(name);
            info!(
                "superseded {name} by {by}: the same job(s) run once, for the newest trigger; removed"
            );
            let event = Event::Superseded {
                trigger: name.clone(),
                by: by.clone(),
                at: jiff::Timestamp::now().to_string(),
            };
            if let Err(e) = journal.append(&event) {
                warn!("cannot record {name} as superseded in the history: {e:#}");
            }
        }
        Ok(runnable
            .into_iter()
            .filter(|r| !plan.superseded.iter().any(|(s, _)| *s == r.name))
            .collect())
    }
}

/// What makes two jobs the same job for coalescing: everything but `force` and the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct JobKey<'a> {
    kind: Kind,
    tenant: &'a str,
    site: Option<&'a str>,
    command: &'a str,
    release: Option<u64>,
}

impl<'a> JobKey<'a> {
    fn of(j: &'a JobSpec) -> JobKey<'a> {
        JobKey {
            kind: j.kind,
            tenant: j.tenant.as_str(),
            site: j.site.as_deref(),
            command: j.command.as_str(),
            release: j.release,
        }
    }
}

/// What coalescing does to the inbox: triggers removed (with the newest trigger that runs their jobs)
/// and survivors rewritten to carry a superseded `force=true`.
struct Plan {
    superseded: Vec<(String, String)>,
    rewrites: Vec<(String, String)>,
}

fn coalescing_plan(runnable: &[Runnable]) -> Plan {
    let mut newest: HashMap<JobKey, &str> = HashMap::new();
    let mut superseded = Vec::new();
    // Survivor → the jobs (keys) a superseded trigger asked to force.
    let mut forced: HashMap<&str, Vec<JobKey>> = HashMap::new();
    for r in runnable.iter().rev() {
        let Some(specs) = &r.specs else { continue };
        let keys: Vec<JobKey> = specs.iter().map(JobKey::of).collect();
        if let Some(by) = keys
            .iter()
            .map(|k| newest.get(k).copied())
            .collect::<Option<Vec<&str>>>()
        {
            for (spec, survivor) in specs.iter().zip(&by) {
                if spec.force {
                    forced.entry(survivor).or_default().push(JobKey::of(spec));
                }
            }
            let by = by.into_iter().max().unwrap_or_default().to_string();
            superseded.push((r.name.clone(), by));
        } else {
            for k in keys {
                newest.entry(k).or_insert(&r.name);
            }
        }
    }
    let mut rewrites = Vec::new();
    for (survivor, keys) in &forced {
        let Some(specs) = runnable
            .iter()
            .find(|r| r.name == *survivor)
            .and_then(|r| r.specs.as_ref())
        else {
            continue;
        };
        if specs
            .iter()
            .all(|s| s.force || !keys.contains(&JobKey::of(s)))
        {
            continue;
        }
        let text: String = specs
            .iter()
            .map(|s| {
                let force = s.force || keys.contains(&JobKey::of(s));
                JobSpec { force, ..s.clone() }.to_line() + "\n"
            })
            .collect();
        rewrites.push((survivor.to_string(), text));
    }
    Plan {
        superseded,
        rewrites,
    }
}

#[cfg(test)]
mod tests;
