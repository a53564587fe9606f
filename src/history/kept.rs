//! Owns the history as kept by a process that reads it often (`serve`'s page, API and live status, the
//! fleet bridge's status reports): the job views, the records since the newest job started and the
//! requests, read once and then brought up to date from cursors, so that each read costs what was written
//! since, not the whole journal (32 MiB at its largest, a quarter second to parse). It starts over when
//! rotation deletes a file it counted, so that it always holds what the journals hold. It never writes.

use super::{Cursor, Event, Journal, Views};
use crate::layout::Layout;

/// The history kept between reads, brought up to date by [`Kept::catch_up`].
#[derive(Debug)]
pub struct Kept {
    /// Whether the views keep each job's steps (the history does, a status snapshot needs none).
    steps: bool,
    /// Whether the requests `serve` records are read (who asked for a job, who cancelled it).
    with_requests: bool,
    views: Views,
    /// The records since the newest job started: where a running job's steps are (one engine runs one
    /// job at a time).
    newest: Vec<Event>,
    /// The requests, oldest first.
    requests: Vec<Event>,
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
    /// The last error reading it, said once (a process that reads at every change would repeat it).
    told: Option<String>,
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

    /// Hands each record written since the last read to `each`; returns how many.
    fn read(&mut self, journal: &Journal, each: impl FnMut(Event)) -> usize {
        if self.start.is_none() {
            self.start = journal.start().ok().flatten();
        }
        match journal.each_after(&mut self.cursor, each) {
            Ok(read) => {
                self.told = None;
                read
            }
            Err(e) => {
                let said = format!("{e:#}");
                if self.told.as_ref() != Some(&said) {
                    tracing::warn!(
                        "cannot read the journal in {}: {said}; what was read before is shown, and reading is tried again at the next look",
                        journal.dir().display()
                    );
                    self.told = Some(said);
                }
                0
            }
        }
    }
}

impl Kept {
    /// Nothing read yet. `steps`: the views keep each job's steps; `requests`: who asked for what
    /// through `serve` is read too.
    pub fn new(steps: bool, requests: bool) -> Kept {
        Kept {
            steps,
            with_requests: requests,
            views: if steps {
                Views::default()
            } else {
                Views::summaries()
            },
            newest: Vec::new(),
            requests: Vec::new(),
            journal: Followed::default(),
            asked: Followed::default(),
        }
    }

    /// Reads what the journals gained since the last call, or all of them the first time and after
    /// rotation has deleted a file read before. Returns how many records it read.
    pub fn catch_up(&mut self, layout: &Layout) -> usize {
        let journal = Journal::open(layout);
        let requests = self.with_requests.then(|| Journal::requests(layout));
        if self.journal.rotated_away(&journal)
            || requests
                .as_ref()
                .is_some_and(|r| self.asked.rotated_away(r))
        {
            *self = Kept::new(self.steps, self.with_requests);
        }
        let mut read = 0;
        // Requests first: serve records one before the trigger it drops, so before the job starts.
        if let Some(journal) = &requests {
            let (views, requests) = (&mut self.views, &mut self.requests);
            read += self.asked.read(journal, |e| {
                views.note_request(&e);
                if matches!(e, Event::Requested { .. }) {
                    requests.push(e);
                }
            });
        }
        let (views, newest) = (&mut self.views, &mut self.newest);
        read += self.journal.read(&journal, |e| {
            if matches!(e, Event::JobStarted { .. }) {
                newest.clear();
            }
            views.add(&e);
            newest.push(e);
        });
        read
    }

    /// The job views.
    pub fn views(&self) -> &Views {
        &self.views
    }

    /// The records since the newest job started.
    pub fn newest(&self) -> &[Event] {
        &self.newest
    }

    /// The requests recorded through `serve`, oldest first (none unless asked for).
    pub fn requests(&self) -> &[Event] {
        &self.requests
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::JobView;
    use crate::history::testing::{generated_history, read_with_requests};

    /// Every job newest first with its result, as the views have them now.
    fn all(views: &Views, running: bool) -> Vec<JobView> {
        views
            .newest_first(running)
            .map(|(j, result)| JobView {
                result,
                ..j.clone()
            })
            .collect()
    }

    #[test]
    fn the_kept_history_is_after_every_record_what_a_whole_reading_is() {
        for seed in [1, 7, 42] {
            let mut kept = Kept::new(true, true);
            let mut summaries = Kept::new(false, true);
            let (mut oldest_before, mut deletions) = (None, 0);
            generated_history(seed, |layout, k| {
                let oldest = Journal::open(layout).start().unwrap();
                deletions += usize::from(oldest_before.is_some() && oldest != oldest_before);
                oldest_before = oldest.clone();
                kept.catch_up(layout);
                summaries.catch_up(layout);
                assert_eq!(kept.journal.start, oldest, "seed {seed}, job {k}");
                // What `history` and the API read: every event of both journals at once.
                let events = read_with_requests(layout);
                for running in [false, true] {
                    let context = format!("seed {seed}, job {k}, engine running {running}");
                    let (whole, superseded) = crate::history::jobs(&events, running);
                    assert_eq!(all(kept.views(), running), whole, "{context}");
                    assert_eq!(kept.views().superseded(), superseded, "{context}");
                    let without_steps: Vec<JobView> = whole
                        .into_iter()
                        .map(|j| JobView { steps: vec![], ..j })
                        .collect();
                    assert_eq!(all(summaries.views(), running), without_steps, "{context}");
                }
                let requests: Vec<&Event> = events
                    .iter()
                    .filter(|e| matches!(e, Event::Requested { .. }))
                    .collect();
                assert_eq!(kept.requests().iter().collect::<Vec<_>>(), requests);
                let since_newest = events
                    .iter()
                    .rposition(|e| matches!(e, Event::JobStarted { .. }))
                    .map_or(&[][..], |i| &events[i..]);
                let journal_only: Vec<&Event> = since_newest
                    .iter()
                    .filter(|e| !matches!(e, Event::Requested { .. }))
                    .collect();
                assert_eq!(kept.newest().iter().collect::<Vec<_>>(), journal_only);
            });
            // Rotation deleted the oldest file many times while the kept history followed.
            assert!(deletions >= 5, "seed {seed}: {deletions} deletions");
        }
    }
}
