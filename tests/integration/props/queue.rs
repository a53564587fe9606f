//! The queue against an in-memory model through generated sequences of drops, claims, attempts,
//! completions, set-asides, retries and crashes: after every operation the directories on disk and the
//! model agree, and no trigger is lost or in two places.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proptest::prelude::*;
use t8k_engine::config::Config;
use t8k_engine::layout::Layout;
use t8k_engine::queue::{Claim, Place, Queue, Reason};
use t8k_engine::trigger;

use super::cases;

/// Inbox names the operations pick from; few, so that names collide.
const NAMES: [&str; 3] = ["build-1.csv", "build-2.csv", "build-1.csv.9.csv"];
/// Names `pending` must set aside as unsafe, and the names it gives them.
const UNSAFE: [(&str, &str); 2] = [
    ("build-a b.csv", "build-a_b.csv"),
    ("build-x;y\u{e9}.csv", "build-x_y__.csv"),
];

#[derive(Debug, Clone)]
enum Op {
    /// A producer drops a new trigger (skipped if the inbox already has that name).
    Drop(usize),
    /// A producer drops a trigger under a name the queue must not handle.
    DropUnsafe(usize),
    Pending,
    Claim(usize),
    BeginAttempt(usize),
    ResetAttempts(usize, u32),
    Complete(usize),
    SetAside(usize, bool),
    Retry(usize),
    RemoveSuperseded(usize),
    /// The engine dies between two operations: the queue is dropped and opened again from disk.
    Crash,
    /// The engine dies inside `complete`, after the trigger is removed, before its attempt record is.
    CrashInComplete(usize),
    /// The engine dies inside `set_aside` from `work/`: after the reason is written (and, with `true`,
    /// after the trigger is moved), before the attempt record is removed.
    CrashInSetAside(usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0usize..8;
    prop_oneof![
        4 => i.clone().prop_map(Op::Drop),
        1 => (0usize..2).prop_map(Op::DropUnsafe),
        2 => Just(Op::Pending),
        4 => i.clone().prop_map(Op::Claim),
        3 => i.clone().prop_map(Op::BeginAttempt),
        1 => (i.clone(), 0u32..4).prop_map(|(i, n)| Op::ResetAttempts(i, n)),
        2 => i.clone().prop_map(Op::Complete),
        3 => (i.clone(), any::<bool>()).prop_map(|(i, inbox)| Op::SetAside(i, inbox)),
        3 => i.clone().prop_map(Op::Retry),
        1 => i.clone().prop_map(Op::RemoveSuperseded),
        2 => Just(Op::Crash),
        1 => i.clone().prop_map(Op::CrashInComplete),
        1 => (i, any::<bool>()).prop_map(|(i, moved)| Op::CrashInSetAside(i, moved)),
    ]
}

/// What the state directory should hold. Triggers are told apart by an id written in their content.
#[derive(Debug, Default)]
struct Model {
    next_id: u32,
    inbox: BTreeMap<String, u32>,
    work: BTreeMap<String, u32>,
    /// Attempt records in `work/`, by trigger name (left behind by a crash inside `complete`/`set_aside`).
    attempts: BTreeMap<String, u32>,
    failed: BTreeMap<String, u32>,
    /// Names in `failed/` with a `.reason` (a crash inside `set_aside` can leave one without a trigger).
    reasons: BTreeSet<String>,
    done: BTreeSet<u32>,
    superseded: BTreeSet<u32>,
}

impl Model {
    /// The names an operation's index picks from: the fixed ones and whatever the inbox and `work/` hold.
    fn pick(&self, i: usize) -> String {
        // Unsafe names are only ever set aside by `pending`, never claimed or handled by name.
        let names: BTreeSet<&str> = NAMES
            .iter()
            .copied()
            .chain(self.inbox.keys().map(String::as_str))
            .chain(self.work.keys().map(String::as_str))
            .filter(|n| !UNSAFE.iter().any(|(raw, _)| raw == n))
            .collect();
        names.iter().nth(i % names.len()).unwrap().to_string()
    }

    fn free_failed_name(&self, name: &str) -> String {
        // A reason without its trigger (left by a crash inside `set_aside`) does not take the name: the
        // next trigger set aside under it overwrites the stray reason.
        let taken = |n: &str| self.failed.contains_key(n);
        if !taken(name) {
            return name.to_string();
        }
        (1..)
            .map(|i| format!("{name}.{i}"))
            .find(|n| !taken(n))
            .unwrap()
    }
}

/// A real queue in a temporary TractStack root.
struct Real {
    _dir: tempfile::TempDir,
    layout: Layout,
    queue: Queue,
}

impl Real {
    fn new() -> Real {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(&Config {
            root: dir.path().to_path_buf(),
            ..Config::default()
        });
        let queue = Queue::open(&layout, 4096).unwrap();
        Real {
            _dir: dir,
            layout,
            queue,
        }
    }

    fn crash(&mut self) {
        // Nothing of a Queue outlives it but the files: a new one is what a restarted engine opens.
        self.queue = Queue::open(&self.layout, 4096).unwrap();
    }
}

fn reason(aside: &str) -> Reason {
    Reason {
        summary: format!("{aside}: set aside by the model test"),
        details: "details".into(),
    }
}

/// Applies one operation to both, checking every result the queue returns against the model.
fn step(real: &mut Real, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let q = &real.queue;
    let l = &real.layout;
    match *op {
        Op::Drop(i) | Op::DropUnsafe(i) => {
            let name = match op {
                Op::Drop(_) => model.pick(i),
                _ => UNSAFE[i].0.to_string(),
            };
            if !model.inbox.contains_key(&name) {
                let id = model.next_id;
                model.next_id += 1;
                std::fs::write(l.state.join(&name), format!("trigger {id}\n")).unwrap();
                model.inbox.insert(name, id);
            }
        }
        Op::Pending => {
            let pending = q.pending().unwrap();
            let (good, bad) = (pending.names, pending.set_aside);
            let mut set_aside = BTreeSet::new();
            for (raw, clean) in UNSAFE {
                if let Some(id) = model.inbox.remove(raw) {
                    let aside = model.free_failed_name(clean);
                    model.failed.insert(aside.clone(), id);
                    model.reasons.insert(aside.clone());
                    set_aside.insert(aside);
                }
            }
            let expected: Vec<&String> = model.inbox.keys().collect();
            prop_assert_eq!(good.iter().collect::<Vec<_>>(), expected);
            prop_assert_eq!(
                bad.iter().map(|a| a.name.clone()).collect::<BTreeSet<_>>(),
                set_aside
            );
        }
        Op::Claim(i) => {
            let name = model.pick(i);
            let got = q.claim(&name).unwrap();
            match (
                model.inbox.contains_key(&name),
                model.work.contains_key(&name),
            ) {
                (false, _) => prop_assert!(matches!(got, Claim::Vanished), "{got:?}"),
                (true, true) => prop_assert!(matches!(got, Claim::Duplicate), "{got:?}"),
                (true, false) => {
                    prop_assert!(matches!(got, Claim::Claimed), "{got:?}");
                    let id = model.inbox.remove(&name).unwrap();
                    model.work.insert(name.clone(), id);
                    // A freshly claimed trigger has never been started, whatever a crash left behind.
                    model.attempts.remove(&name);
                }
            }
        }
        Op::BeginAttempt(i) => {
            let name = model.pick(i);
            if model.work.contains_key(&name) {
                let before = model.attempts.get(&name).copied().unwrap_or(0);
                prop_assert_eq!(q.begin_attempt(&name).unwrap(), before, "{}", name);
                model.attempts.insert(name, before + 1);
            }
        }
        Op::ResetAttempts(i, n) => {
            let name = model.pick(i);
            if model.work.contains_key(&name) {
                q.reset_attempts(&name, n).unwrap();
                if n == 0 {
                    model.attempts.remove(&name);
                } else {
                    model.attempts.insert(name, n);
                }
            }
        }
        Op::Complete(i) => {
            let name = model.pick(i);
            if let Some(id) = model.work.remove(&name) {
                q.complete(&name).unwrap();
                model.attempts.remove(&name);
                model.done.insert(id);
            }
        }
        Op::SetAside(i, from_inbox) => {
            let name = model.pick(i);
            let (place, from) = if from_inbox {
                (Place::Inbox, &mut model.inbox)
            } else {
                (Place::Work, &mut model.work)
            };
            if let Some(id) = from.remove(&name) {
                let expected = model.free_failed_name(&name);
                let got = q.set_aside(&name, place, reason).unwrap();
                prop_assert_eq!(&got, &expected);
                model.failed.insert(got.clone(), id);
                model.reasons.insert(got.clone());
                // The attempt record belongs to the claimed trigger, not to an inbox file of the same name.
                if place == Place::Work {
                    model.attempts.remove(&name);
                }
                let text = std::fs::read_to_string(l.failed.join(format!("{got}.reason"))).unwrap();
                prop_assert_eq!(
                    text,
                    format!("{got}: set aside by the model test\n\ndetails\n")
                );
            }
        }
        Op::Retry(i) => {
            let names: BTreeSet<&String> =
                model.failed.keys().chain(model.reasons.iter()).collect();
            let name = match names.iter().nth(i % (names.len() + 1)) {
                Some(n) => n.to_string(),
                None => "build-404.csv".to_string(),
            };
            let result = q.retry(&name);
            let original = original_name(&name);
            match model.failed.get(&name) {
                None => prop_assert!(result.is_err(), "retried {name}, which is not set aside"),
                Some(_) if model.inbox.contains_key(&original) => {
                    let e = result.unwrap_err().to_string();
                    prop_assert!(e.contains("already has"), "{e}");
                }
                Some(&id) => {
                    prop_assert_eq!(result.unwrap(), l.state.join(&original));
                    model.failed.remove(&name);
                    model.reasons.remove(&name);
                    model.inbox.insert(original, id);
                }
            }
        }
        Op::RemoveSuperseded(i) => {
            let name = model.pick(i);
            if let Some(id) = model.inbox.remove(&name) {
                q.remove_superseded(&name).unwrap();
                model.superseded.insert(id);
            }
        }
        Op::Crash => real.crash(),
        Op::CrashInComplete(i) => {
            let name = model.pick(i);
            if let Some(id) = model.work.remove(&name) {
                std::fs::remove_file(l.work.join(&name)).unwrap();
                model.done.insert(id);
                real.crash();
            }
        }
        Op::CrashInSetAside(i, moved) => {
            let name = model.pick(i);
            if model.work.contains_key(&name) {
                let aside = model.free_failed_name(&name);
                let r = reason(&aside);
                std::fs::write(
                    l.failed.join(format!("{aside}.reason")),
                    format!("{}\n\n{}\n", r.summary, r.details),
                )
                .unwrap();
                model.reasons.insert(aside.clone());
                if moved {
                    std::fs::rename(l.work.join(&name), l.failed.join(&aside)).unwrap();
                    let id = model.work.remove(&name).unwrap();
                    model.failed.insert(aside, id);
                }
                real.crash();
            }
        }
    }
    Ok(())
}

/// The model's copy of the queue's rule: `build-1.csv.2` was the second `build-1.csv` set aside.
fn original_name(name: &str) -> String {
    match name.rsplit_once(".csv.") {
        Some((stem, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{stem}.csv")
        }
        _ => name.to_string(),
    }
}

/// Regular files in `dir` by name, with the id written in each.
fn files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read_to_string(e.path()).unwrap())
        })
        .collect()
}

fn ids(text: &str) -> u32 {
    text.strip_prefix("trigger ")
        .and_then(|t| t.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("not a test trigger: {text:?}"))
}

/// Checks the directories against the model: no trigger lost or duplicated, attempt counts as modelled,
/// every set-aside trigger explained, and nothing else left lying around.
fn check(real: &Real, model: &Model, dropped: u32) -> Result<(), TestCaseError> {
    let l = &real.layout;
    let inbox: BTreeMap<String, u32> = files(&l.state)
        .into_iter()
        .map(|(n, t)| (n, ids(&t)))
        .collect();
    prop_assert_eq!(&inbox, &model.inbox, "inbox");

    let mut work = BTreeMap::new();
    let mut attempts = BTreeMap::new();
    for (name, text) in files(&l.work) {
        if let Some(trigger) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".attempts"))
        {
            attempts.insert(trigger.to_string(), text.trim_end().parse::<u32>().unwrap());
        } else {
            prop_assert!(trigger::is_trigger_name(&name), "stray file work/{}", name);
            work.insert(name, ids(&text));
        }
    }
    prop_assert_eq!(&work, &model.work, "work/");
    prop_assert_eq!(&attempts, &model.attempts, "attempt records");
    prop_assert_eq!(
        real.queue.claimed().unwrap(),
        model.work.keys().cloned().collect::<Vec<_>>()
    );

    let mut failed = BTreeMap::new();
    let mut reasons = BTreeSet::new();
    for (name, text) in files(&l.failed) {
        match name.strip_suffix(".reason") {
            Some(of) => {
                prop_assert!(
                    text.starts_with(&format!("{of}: ")),
                    "{}.reason: {:?}",
                    of,
                    text
                );
                reasons.insert(of.to_string());
            }
            None => {
                failed.insert(name, ids(&text));
            }
        }
    }
    prop_assert_eq!(&failed, &model.failed, "failed/");
    prop_assert_eq!(&reasons, &model.reasons, "reasons");
    for name in failed.keys() {
        prop_assert!(reasons.contains(name), "failed/{} has no reason", name);
    }

    // Every trigger ever dropped is in exactly one place.
    let mut seen: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for (place, ids) in [
        ("inbox", inbox.values().copied().collect::<Vec<_>>()),
        ("work", work.values().copied().collect()),
        ("failed", failed.values().copied().collect()),
        ("done", model.done.iter().copied().collect()),
        ("superseded", model.superseded.iter().copied().collect()),
    ] {
        for id in ids {
            seen.entry(id).or_default().push(place);
        }
    }
    for id in 0..dropped {
        let places = seen.get(&id).cloned().unwrap_or_default();
        prop_assert_eq!(places.len(), 1, "trigger {} is in {:?}", id, places);
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    /// Random sequences of queue operations and crashes keep the disk and the model in step.
    #[test]
    fn the_queue_follows_its_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut real = Real::new();
        let mut model = Model::default();
        for (n, op) in ops.iter().enumerate() {
            step(&mut real, &mut model, op)
                .map_err(|e| TestCaseError::fail(format!("op {n} {op:?}: {e}")))?;
            check(&real, &model, model.next_id)
                .map_err(|e| TestCaseError::fail(format!("after op {n} {op:?}: {e}")))?;
        }
    }
}
