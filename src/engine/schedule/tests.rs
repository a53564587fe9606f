//! Unit tests of the ordering policy, one rule at a time, on a real state directory.

use std::io::Write;

use super::*;
use crate::config::Config;
use crate::layout::Layout;

struct Inbox {
    _dir: tempfile::TempDir,
    layout: Layout,
    queue: Queue,
    journal: Journal,
}

impl Inbox {
    fn new() -> Inbox {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            root: dir.path().to_path_buf(),
            ..Config::default()
        };
        let layout = Layout::new(&config);
        let queue = Queue::open(&layout, 4096).unwrap();
        Inbox {
            journal: Journal::open(&layout),
            _dir: dir,
            layout,
            queue,
        }
    }

    fn drop_file(&self, name: &str, text: &str) {
        std::fs::write(self.layout.state.join(name), text).unwrap();
    }

    fn claim(&self, name: &str, text: &str) {
        self.drop_file(name, text);
        self.queue.claim(name).unwrap();
    }

    fn next(&self, s: &mut Scheduler) -> Next {
        s.next(&self.queue, &self.journal, &mut Summary::default())
            .unwrap()
    }
}

fn policy(mode: Mode) -> Policy {
    let base = Policy {
        stale_after: Duration::from_secs(3600),
        ..Policy::pass()
    };
    match mode {
        Mode::Pass => base,
        Mode::Watch => Policy {
            coalesce: true,
            ..Policy::watch(&base)
        },
    }
}

const JOB: &str = "type=main,command=build\n";

#[test]
fn claimed_triggers_run_before_the_inbox_in_name_order() {
    let inbox = Inbox::new();
    inbox.claim("build-3.csv", JOB);
    inbox.claim("build-2.csv", JOB);
    inbox.drop_file("build-1.csv", "type=multi,tenant=a,command=build\n");
    for mode in [Mode::Pass, Mode::Watch] {
        let mut s = Scheduler::new(policy(mode), inbox.queue.claimed().unwrap());
        assert_eq!(inbox.next(&mut s), Next::Claimed("build-2.csv".into()));
        assert_eq!(inbox.next(&mut s), Next::Claimed("build-3.csv".into()));
        assert_eq!(inbox.next(&mut s), Next::Inbox("build-1.csv".into()));
    }
}

#[test]
fn a_claimed_trigger_no_longer_there_is_skipped() {
    let inbox = Inbox::new();
    inbox.claim("build-2.csv", JOB);
    let mut s = Scheduler::new(policy(Mode::Watch), inbox.queue.claimed().unwrap());
    inbox.queue.complete("build-2.csv").unwrap();
    assert_eq!(inbox.next(&mut s), Next::Idle);
}

#[test]
fn a_retry_holds_back_the_inbox_and_its_delay_doubles() {
    let inbox = Inbox::new();
    inbox.claim("build-2.csv", JOB);
    inbox.drop_file("build-1.csv", "type=multi,tenant=a,command=build\n");
    let mut s = Scheduler::new(
        Policy {
            first_retry: Duration::from_secs(5),
            last_retry: Duration::from_secs(12),
            ..policy(Mode::Watch)
        },
        Vec::new(),
    );
    assert_eq!(s.retry_later("build-2.csv"), Duration::from_secs(5));
    let now = Instant::now();
    assert!(!s.claimed_due(now) && s.has_claimed());
    match inbox.next(&mut s) {
        Next::Wait(at) => assert!(at > now + Duration::from_secs(4)),
        other => panic!("the ready inbox file must wait behind the retry: {other:?}"),
    }
    assert_eq!(s.retry_at(), s.retry.at);
    assert_eq!(s.retry_later("build-9.csv"), Duration::from_secs(10));
    assert_eq!(
        s.retry_later("build-9.csv"),
        Duration::from_secs(12),
        "capped"
    );
    s.ran();
    assert_eq!(
        s.retry.delay,
        Duration::from_secs(5),
        "a clean run resets it"
    );
    // Once due, the retried trigger runs first, then the inbox.
    s.retry.at = Some(Instant::now());
    s.claimed.retain(|n| n == "build-2.csv");
    assert!(s.claimed_due(Instant::now()));
    assert_eq!(inbox.next(&mut s), Next::Claimed("build-2.csv".into()));
    assert_eq!(inbox.next(&mut s), Next::Inbox("build-1.csv".into()));
}

#[test]
fn a_later_file_never_overtakes_one_still_being_written() {
    let inbox = Inbox::new();
    let mut writer = std::fs::File::create(inbox.layout.state.join("build-1.csv")).unwrap();
    writer.write_all(JOB.as_bytes()).unwrap();
    inbox.drop_file("build-2.csv", "type=multi,tenant=a,command=build\n");
    for mode in [Mode::Pass, Mode::Watch] {
        let mut s = Scheduler::new(policy(mode), Vec::new());
        let before = Instant::now();
        match inbox.next(&mut s) {
            Next::Wait(at) => assert!(at >= before && at <= Instant::now() + policy(mode).recheck),
            other => panic!("{mode:?}: build-2 overtook build-1: {other:?}"),
        }
    }
    drop(writer);
    let mut s = Scheduler::new(policy(Mode::Watch), Vec::new());
    assert_eq!(inbox.next(&mut s), Next::Inbox("build-1.csv".into()));
}

#[test]
fn a_file_that_never_completes_goes_stale_in_watch_and_runs_in_a_pass() {
    let stale = |mode| Policy {
        stale_after: Duration::ZERO,
        ..policy(mode)
    };
    let inbox = Inbox::new();
    inbox.drop_file("build-1.csv", "type=main,command=build");
    inbox.drop_file("build-2.csv", JOB);
    // `run` takes a closed file without its final newline at once: the parse decides.
    let mut s = Scheduler::new(policy(Mode::Pass), Vec::new());
    assert_eq!(inbox.next(&mut s), Next::Inbox("build-1.csv".into()));
    // `watch` waits for the newline, then sets the file aside and moves on.
    let mut s = Scheduler::new(policy(Mode::Watch), Vec::new());
    assert!(matches!(inbox.next(&mut s), Next::Wait(_)));
    let mut s = Scheduler::new(stale(Mode::Watch), Vec::new());
    let mut summary = Summary::default();
    let next = s.next(&inbox.queue, &inbox.journal, &mut summary).unwrap();
    assert_eq!(next, Next::Inbox("build-2.csv".into()));
    assert_eq!(summary.set_aside, 1);
    let reason = std::fs::read_to_string(inbox.layout.failed.join("build-1.csv.reason")).unwrap();
    assert!(
        reason.starts_with("build-1.csv: incomplete: the last line has no newline after 0s"),
        "{reason}"
    );
    // A file still open for writing past `stale_after`: `run` claims it anyway.
    let _writer = std::fs::File::options()
        .append(true)
        .open(inbox.layout.state.join("build-2.csv"))
        .unwrap();
    let mut s = Scheduler::new(stale(Mode::Pass), Vec::new());
    assert_eq!(inbox.next(&mut s), Next::Inbox("build-2.csv".into()));
}

#[test]
fn files_that_cannot_run_are_handed_on_and_unsafe_names_set_aside() {
    let inbox = Inbox::new();
    inbox.drop_file("build-1.csv", "type=main,bogus=1\n");
    inbox.drop_file("build-a b.csv", JOB);
    let mut s = Scheduler::new(policy(Mode::Watch), Vec::new());
    let mut summary = Summary::default();
    let next = s.next(&inbox.queue, &inbox.journal, &mut summary).unwrap();
    assert_eq!(
        next,
        Next::Inbox("build-1.csv".into()),
        "the pass sets it aside"
    );
    assert_eq!(summary.set_aside, 1);
    assert!(inbox.layout.failed.join("build-a_b.csv").exists());
}

#[test]
fn identical_jobs_coalesce_onto_the_newest_trigger_keeping_force() {
    let inbox = Inbox::new();
    inbox.drop_file("build-1.csv", "type=main,command=build,force=true\n");
    inbox.drop_file("build-2.csv", "type=multi,tenant=a,command=build\n");
    inbox.drop_file("build-3.csv", JOB);
    let mut s = Scheduler::new(policy(Mode::Watch), Vec::new());
    assert_eq!(inbox.next(&mut s), Next::Inbox("build-2.csv".into()));
    assert!(!inbox.layout.state.join("build-1.csv").exists());
    assert_eq!(
        std::fs::read_to_string(inbox.layout.state.join("build-3.csv")).unwrap(),
        "type=main,tenant=default,command=build,force=true\n"
    );
    let superseded: Vec<Event> = inbox.journal.read();
    assert!(
        matches!(&superseded[..], [Event::Superseded { trigger, by, .. }] if trigger == "build-1.csv" && by == "build-3.csv"),
        "{superseded:?}"
    );
    // `run` runs every file it finds.
    inbox.drop_file("build-4.csv", JOB);
    let mut s = Scheduler::new(policy(Mode::Pass), Vec::new());
    assert_eq!(inbox.next(&mut s), Next::Inbox("build-2.csv".into()));
    assert!(inbox.layout.state.join("build-3.csv").exists());
}
