//! Test helpers: a generated history, written as the engine and `serve` write theirs, for the readers'
//! tests (the kept history, the status snapshot).

use super::{Event, JobResult, Journal, StepRecord};
use crate::config::Config;
use crate::layout::Layout;

/// The engine's events followed by the requests `serve` recorded, read whole: what the readers that keep
/// or stream the history are checked against.
pub fn read_with_requests(layout: &Layout) -> Vec<Event> {
    let mut events = Journal::open(layout).read();
    events.extend(Journal::requests(layout).read());
    events
}

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
        delivery: None,
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

/// A root whose journals rotate after a few records (the journal past 3,000 bytes, the requests past 600),
/// so that every file is deleted in turn while a reader follows; `after_each(job)` runs after every record
/// of 150 generated jobs.
pub fn generated_history(seed: u64, mut after_each: impl FnMut(&Layout, u64)) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        root: dir.path().to_path_buf(),
        ..Config::default()
    };
    let layout = Layout::new(&config);
    std::fs::create_dir_all(&layout.state).unwrap();
    let journal = Journal::new(&layout.journal_dir, 2, 3000);
    let requests = Journal::new(&layout.requests_dir, 2, 600);
    let mut rng = Lcg(seed);
    for k in 0..150 {
        for (is_request, event) in job_events(&mut rng, k) {
            let to = if is_request { &requests } else { &journal };
            to.append(&event).unwrap();
            after_each(&layout, k);
        }
    }
}
