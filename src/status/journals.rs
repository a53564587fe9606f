//! Owns what a status snapshot needs of the journals: each job in summary (no steps), who asked for it,
//! and the records since the newest job started. A one-shot `status` reads them once; `serve` and the
//! fleet bridge, which take a snapshot at every change, keep them and read only what was written since
//! (a full journal is 32 MiB, a quarter second to parse). It never writes a journal.

use std::collections::HashMap;

use crate::history::{Cursor, Event, JobView, Journal, Views};
use crate::layout::Layout;

/// What snapshots need of the journals, brought up to date by [`Journals::catch_up`].
#[derive(Debug)]
pub struct Journals {
    /// Whether the requests `serve` records are read (who asked for a job, who cancelled it).
    requests: bool,
    views: Views,
    /// The records since the newest job started: where a running job's steps are (one engine runs one
    /// job at a time).
    newest: Vec<Event>,
    journal: Followed,
    asked: Followed,
}

/// How far one journal has been read.
#[derive(Debug, Default)]
struct Followed {
    /// After the last record read.
    cursor: Option<Cursor>,
    /// The journal's oldest file when reading began: once rotation deletes it, what was counted from it
    /// is no longer in the journal.
    start: Option<Cursor>,
}

impl Followed {
    /// Whether the file this reader started from has been deleted since.
    fn rotated_away(&self, journal: &Journal) -> bool {
        let Some(start) = &self.start else {
            return false;
        };
        match journal.start() {
            Ok(Some(now)) => (now.ino, &now.head) != (start.ino, &start.head),
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Hands each record written since the last read to `each`.
    fn read(&mut self, journal: &Journal, each: impl FnMut(Event)) {
        if self.start.is_none() {
            self.start = journal.start().ok().flatten();
        }
        if let Err(e) = journal.each_after(&mut self.cursor, each) {
            tracing::warn!("cannot read the job journal: {e:#}");
        }
    }
}

impl Journals {
    /// Nothing read yet; `requests` reads who asked for what through `serve` too.
    pub fn new(requests: bool) -> Journals {
        Journals {
            requests,
            views: Views::summaries(),
            newest: Vec::new(),
            journal: Followed::default(),
            asked: Followed::default(),
        }
    }

    /// Reads what the journals gained since the last call. When rotation has deleted a file it read
    /// from, it starts over, so that a snapshot always shows what the journals hold, as `status` does.
    pub fn catch_up(&mut self, layout: &Layout) {
        let journal = Journal::open(layout);
        let requests = self.requests.then(|| Journal::requests(layout));
        if self.journal.rotated_away(&journal)
            || requests
                .as_ref()
                .is_some_and(|r| self.asked.rotated_away(r))
        {
            *self = Journals::new(self.requests);
        }
        // Requests first: serve records one before the trigger it drops, so before the job starts.
        if let Some(requests) = &requests {
            let views = &mut self.views;
            self.asked.read(requests, |e| views.note_request(&e));
        }
        let (views, newest) = (&mut self.views, &mut self.newest);
        self.journal.read(&journal, |e| {
            if matches!(e, Event::JobStarted { .. }) {
                newest.clear();
            }
            views.add(&e);
            newest.push(e);
        });
    }

    /// The jobs a snapshot shows, newest first: each target's newest job and its newest one that did not
    /// succeed (all `status` reads of the history), with their results as of now.
    pub(super) fn jobs(&self, engine_running: bool) -> Vec<JobView> {
        // Per target: whether its newest failure has been taken.
        let mut targets: HashMap<&str, bool> = HashMap::new();
        let mut out = Vec::new();
        for (view, result) in self.views.newest_first(engine_running) {
            let failure = result.is_failure();
            let keep = match targets.get_mut(view.target.as_str()) {
                None => {
                    targets.insert(&view.target, failure);
                    true
                }
                Some(taken) if failure && !*taken => {
                    *taken = true;
                    true
                }
                Some(_) => false,
            };
            if keep {
                out.push(JobView {
                    result,
                    ..view.clone()
                });
            }
        }
        out
    }

    /// The records since the newest job started.
    pub(super) fn newest(&self) -> &[Event] {
        &self.newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::history::{JobResult, StepRecord};

    /// A small deterministic generator, so that a failure names its seed and runs again the same.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    const TARGETS: [&str; 4] = ["main", "multi/a", "dedicated/s1", "dedicated/s2"];

    fn requested(action: &str, by: &str, trigger: Option<&str>, job: Option<&str>) -> Event {
        Event::Requested {
            action: action.into(),
            by: by.into(),
            detail: String::new(),
            trigger: trigger.map(String::from),
            job_id: job.map(String::from),
            at: "2026-12-06T00:00:00Z".into(),
        }
    }

    /// The events of job `k`: who asked (sometimes), its start, a step, maybe a cancel request, and an end
    /// of any kind or none (an engine that died); some triggers run again.
    fn job_events(rng: &mut Lcg, k: u64) -> Vec<(bool, Event)> {
        let id = format!("job{k:04}");
        let trigger = format!("build-{}.csv", if rng.below(4) == 0 { k / 2 } else { k });
        let at = format!("2026-12-06T00:{:02}:{:02}Z", k / 60 % 60, k % 60);
        let mut out = Vec::new();
        if rng.below(3) == 0 {
            out.push((true, requested("trigger", "ops", Some(&trigger), None)));
        }
        out.push((
            false,
            Event::JobStarted {
                job_id: id.clone(),
                trigger: trigger.clone(),
                line: 1,
                target: TARGETS[rng.below(4) as usize].into(),
                command: "build".into(),
                attempt: 1,
                at: at.clone(),
            },
        ));
        out.push((
            false,
            Event::StepStarted {
                job_id: id.clone(),
                name: "go build".into(),
                branch: String::new(),
                at: at.clone(),
            },
        ));
        if rng.below(5) == 0 {
            out.push((true, requested("cancel", "admin", None, Some(&id))));
        }
        let result = match rng.below(7) {
            0 => None,
            1 => Some(JobResult::Failed),
            2 => Some(JobResult::RolledBack),
            3 => Some(JobResult::Cancelled),
            4 => Some(JobResult::Interrupted),
            _ => Some(JobResult::Succeeded),
        };
        if let Some(result) = result {
            out.push((
                false,
                Event::JobFinished {
                    job_id: id,
                    result,
                    failed_step: None,
                    reason: Some("it broke".into()),
                    duration_ms: 5,
                    steps: vec![StepRecord::started("go build", "", 0)],
                    at,
                },
            ));
        }
        if rng.below(6) == 0 {
            out.push((
                false,
                Event::Superseded {
                    trigger: format!("build-{k}a.csv"),
                    by: trigger,
                    at: "2026-12-06T00:00:00Z".into(),
                },
            ));
        }
        out
    }

    /// Each target as a snapshot shows it, from jobs newest first.
    fn targets(layout: &Layout, jobs: &[JobView]) -> Vec<serde_json::Value> {
        crate::status_doc::target_states(layout, jobs)
            .iter()
            .map(|t| serde_json::to_value(t.doc()).unwrap())
            .collect()
    }

    #[test]
    fn kept_journals_show_after_every_record_what_the_whole_history_shows() {
        for seed in [1, 7, 42] {
            let dir = tempfile::tempdir().unwrap();
            let config = Config {
                root: dir.path().to_path_buf(),
                ..Config::default()
            };
            let layout = Layout::new(&config);
            crate::queue::Queue::open(&layout, 4096).unwrap();
            // Written as the engine and serve write them, rotated after a few records so that every
            // file is deleted in turn while the kept reader follows.
            let journal = Journal::new(&layout.journal_dir, 2, 3000);
            let requests = Journal::new(&layout.requests_dir, 2, 600);
            let mut rng = Lcg(seed);
            let mut kept = Journals::new(true);
            let (mut oldest_before, mut deletions) = (None, 0);
            for k in 0..150 {
                for (is_request, event) in job_events(&mut rng, k) {
                    let to = if is_request { &requests } else { &journal };
                    to.append(&event).unwrap();
                    let oldest = Journal::open(&layout).start().unwrap();
                    deletions += usize::from(oldest_before.is_some() && oldest != oldest_before);
                    oldest_before = oldest.clone();
                    kept.catch_up(&layout);
                    assert_eq!(kept.journal.start, oldest, "seed {seed}, job {k}");
                    let mut fresh = Journals::new(true);
                    fresh.catch_up(&layout);
                    let events = crate::history::read_with_requests(&layout);
                    for running in [false, true] {
                        let context = format!("seed {seed}, job {k}, engine running {running}");
                        let jobs = kept.jobs(running);
                        assert_eq!(jobs, fresh.jobs(running), "{context}");
                        let (all, _) = crate::history::jobs(&events, running);
                        assert_eq!(targets(&layout, &jobs), targets(&layout, &all), "{context}");
                        // The newest job, who asked for it and who cancelled it, as the whole view has it.
                        assert_eq!(
                            jobs.first().map(|j| &j.job_id),
                            all.first().map(|j| &j.job_id)
                        );
                        if let (Some(a), Some(b)) = (jobs.first(), all.first()) {
                            assert_eq!(
                                (&a.requested_by, &a.cancelled_by, &a.result),
                                (&b.requested_by, &b.cancelled_by, &b.result),
                                "{context}"
                            );
                        }
                    }
                    assert_eq!(kept.newest(), fresh.newest(), "seed {seed}, job {k}");
                }
            }
            // Rotation deleted the oldest file many times while the kept reader followed.
            assert!(deletions >= 5, "seed {seed}: {deletions} deletions");
        }
    }
}
