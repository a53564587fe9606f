//! Unit tests of the history: torn lines, rotation, derived results, and a journal an earlier engine wrote.
use std::io::Write;

use super::*;

fn started(id: &str, trigger: &str) -> Event {
    Event::JobStarted {
        job_id: id.into(),
        trigger: trigger.into(),
        line: 1,
        target: "main".into(),
        command: "build".into(),
        attempt: 1,
        at: "2026-11-24T00:00:00Z".into(),
    }
}

fn finished(id: &str, result: JobResult) -> Event {
    Event::JobFinished {
        job_id: id.into(),
        result,
        failed_step: None,
        reason: None,
        duration_ms: 5,
        steps: Vec::new(),
        at: "2026-11-24T00:00:01Z".into(),
    }
}

#[test]
fn a_torn_last_line_is_ignored_and_earlier_records_survive() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    let j = Journal::new(&dir, 1, 1 << 20);
    j.append(&started("a", "build-1.csv")).unwrap();
    j.append(&finished("a", JobResult::Succeeded)).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("journal.jsonl"))
        .unwrap();
    f.write_all(b"{\"event\":\"job_started\",\"job_id\":\"b\",\"trig")
        .unwrap();
    assert_eq!(
        j.read(),
        vec![
            started("a", "build-1.csv"),
            finished("a", JobResult::Succeeded)
        ]
    );
    // The next record after a crash starts on a line of its own, so it is not lost with the fragment.
    j.append(&started("c", "build-2.csv")).unwrap();
    assert_eq!(
        j.read(),
        vec![
            started("a", "build-1.csv"),
            finished("a", JobResult::Succeeded),
            started("c", "build-2.csv")
        ]
    );
    let raw = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap();
    assert_eq!(raw.lines().count(), 4, "{raw}");
    assert_eq!(
        streamed(&j),
        j.read(),
        "for_each skips the fragment as read does"
    );
}

/// What [`Journal::for_each`] hands over, in order.
fn streamed(j: &Journal) -> Vec<Event> {
    let mut events = Vec::new();
    j.for_each(|e| events.push(e));
    events
}

#[test]
fn rotation_keeps_a_bounded_number_of_files_and_reads_them_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    let j = Journal::new(&dir, 1, 200);
    for i in 0..40 {
        j.append(&started(&format!("j{i:02}"), "build-1.csv"))
            .unwrap();
    }
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert!(files <= journal::ROTATED + 1, "{files} files");
    let ids: Vec<String> = j
        .read()
        .into_iter()
        .map(|e| match e {
            Event::JobStarted { job_id, .. } => job_id,
            _ => unreachable!(),
        })
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "oldest first across rotated files");
    assert_eq!(ids.last().unwrap(), "j39");
    assert_eq!(
        streamed(&j),
        j.read(),
        "for_each reads the rotated files in order too"
    );
}

#[test]
fn unfinished_jobs_are_running_interrupted_or_rerun() {
    let events = vec![
        started("a", "build-1.csv"),
        started("b", "build-1.csv"),
        finished("b", JobResult::Failed),
        started("c", "build-2.csv"),
    ];
    let (jobs, _) = jobs(&events, true);
    let results: Vec<(&str, &str)> = jobs
        .iter()
        .map(|j| (j.job_id.as_str(), j.result.as_str()))
        .collect();
    assert_eq!(
        results,
        [
            ("c", "running"),
            ("b", "failed"),
            ("a", "interrupted_rerun")
        ]
    );
    let (jobs, _) = super::jobs(&events, false);
    assert_eq!(jobs[0].result, JobResult::Interrupted);
}

#[test]
fn an_earlier_engines_journal_reads_and_writes_back_byte_for_byte() {
    // Written by t8k-engine 0.1.0 (tests/fixtures/journal/generate.sh): every event kind and result.
    let text = include_str!("../../tests/fixtures/journal/journal.jsonl");
    for line in text.lines() {
        let event: Event = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let written = serde_json::to_value(&event).unwrap();
        let original: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(written, original, "{line}");
    }
}

#[test]
fn a_journal_from_before_serve_reads_the_same_and_requests_name_who_asked() {
    // Records as an engine without `step_finished` and `requested` wrote them.
    let old = "{\"event\":\"job_started\",\"job_id\":\"a\",\"trigger\":\"build-1.csv\",\"line\":1,\"target\":\"main\",\"command\":\"build\",\"attempt\":1,\"at\":\"2026-11-24T00:00:00Z\"}\n\
               {\"event\":\"step_started\",\"job_id\":\"a\",\"name\":\"pull\",\"branch\":\"\",\"at\":\"2026-11-24T00:00:00Z\"}\n";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("journal.jsonl"), old).unwrap();
    let j = Journal::new(&dir, 1, 1 << 20);
    assert_eq!(j.read().len(), 2);
    j.append(&Event::Requested {
        action: "trigger".into(),
        by: "ops".into(),
        detail: "type=main,tenant=default,command=build".into(),
        trigger: Some("build-2.csv".into()),
        job_id: None,
        delivery: None,
        at: "2026-11-24T00:00:01Z".into(),
    })
    .unwrap();
    j.append(&started("b", "build-2.csv")).unwrap();
    j.append(&Event::Requested {
        action: "cancel".into(),
        by: "cms".into(),
        detail: "job b".into(),
        trigger: None,
        job_id: Some("b".into()),
        delivery: None,
        at: "2026-11-24T00:00:02Z".into(),
    })
    .unwrap();
    let (jobs, _) = jobs(&j.read(), true);
    assert_eq!(jobs[0].job_id, "b");
    assert_eq!(jobs[0].requested_by.as_deref(), Some("ops"));
    assert_eq!(jobs[0].cancelled_by.as_deref(), Some("cms"));
    assert_eq!(
        jobs[1].requested_by, None,
        "the old job asked for by no one"
    );
    // The JSON of a job nobody asked for is what it was before.
    assert!(
        !serde_json::to_string(&jobs[1])
            .unwrap()
            .contains("requested_by")
    );
}
