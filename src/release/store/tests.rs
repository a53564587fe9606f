//! Unit tests of the release store: numbering, states, files by identity, pruning, rolled-back commits
//! and the records of older engines.

use super::*;
use crate::release::rolled_back_to;

struct Install {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    parts: Parts,
}

fn install() -> Install {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state/.t8k-engine/releases");
    let parts = Parts::of_install(tmp.path(), "main");
    std::fs::create_dir_all(parts.backend.parent().unwrap()).unwrap();
    std::fs::create_dir_all(&parts.frontend).unwrap();
    std::fs::write(parts.frontend.join("index.html"), "v0").unwrap();
    std::fs::write(&parts.backend, "v0").unwrap();
    Install {
        _tmp: tmp,
        dir,
        parts,
    }
}

impl Install {
    /// A build of `version` of the parts named: switched in as a script does, then recorded.
    fn release(&self, version: &str, backend: bool, frontend: bool, keep: usize) -> Release {
        let tracker = Tracker::default();
        tracker.set_parts(self.parts.clone());
        for (part, on) in [(Part::Backend, backend), (Part::Frontend, frontend)] {
            if !on {
                continue;
            }
            let live = self.parts.path(part);
            let new = super::super::sibling(live, ".new");
            if part == Part::Backend {
                std::fs::write(&new, version).unwrap();
            } else {
                std::fs::create_dir_all(&new).unwrap();
                std::fs::write(new.join("index.html"), version).unwrap();
            }
            super::super::switch_in_for_job(&new, live, None, 3, None, &tracker).unwrap();
        }
        let facts = json!({"backend": format!("b-{version}"), "frontend": format!("f-{version}"),
            "built": {"backend": backend, "frontend": frontend}, "id": 99});
        let Value::Object(facts) = facts else {
            unreachable!()
        };
        record_release(
            &self.dir,
            Recording {
                install: "main".into(),
                target: "main".into(),
                parts: self.parts.clone(),
                job_id: format!("job-{version}"),
                trigger: "build-1.csv".into(),
                duration_ms: 5,
                steps: Vec::new(),
                facts,
                failed: None,
                keep,
            },
            &tracker,
        )
        .unwrap()
    }

    fn live(&self) -> (String, String) {
        (
            std::fs::read_to_string(&self.parts.backend).unwrap(),
            std::fs::read_to_string(self.parts.frontend.join("index.html")).unwrap(),
        )
    }

    fn store(&self) -> Store {
        Store::load(&self.dir, "main").unwrap()
    }

    /// Puts release `id` back as the engine and the shipped script do, and records it.
    fn roll_back_to(&self, id: u64) -> Option<Release> {
        let tracker = Tracker::default();
        let plan = self.store().plan_rollback(Some(id), &self.parts).unwrap();
        assert_eq!(plan.to.id, id);
        super::super::put_back_release(&self.dir, "main", &self.parts, id, None, &tracker).unwrap();
        rolled_back_to(&self.dir, "main", &self.parts, id, "job-rb", 3, &tracker).unwrap()
    }
}

use serde_json::json;

#[test]
fn releases_are_numbered_the_newest_live_and_the_facts_kept_apart_from_the_engines() {
    let i = install();
    let r1 = i.release("v1", true, true, 3);
    let r2 = i.release("v2", false, true, 3);
    assert_eq!((r1.id, r2.id), (1, 2));
    assert_eq!(r2.fact("backend"), Some("b-v2"));
    assert!(
        !r2.facts.contains_key("id"),
        "a script cannot set the engine's keys"
    );
    let s = i.store();
    assert_eq!(s.live().map(|r| r.id), Some(2));
    let old = s.get(1).unwrap();
    assert_eq!(old.state, State::Replaced);
    assert_eq!(old.ended.as_ref().unwrap().reason, "replaced by release 2");
    // Release 2 built only the frontend: both share the backend binary.
    assert_eq!(
        old.files.unwrap().backend,
        s.get(2).unwrap().files.unwrap().backend
    );
    assert_ne!(
        old.files.unwrap().frontend,
        s.get(2).unwrap().files.unwrap().frontend
    );
    // The older engine's record is still written for those who read it.
    let legacy: Value =
        serde_json::from_str(&std::fs::read_to_string(i.dir.join("main.json")).unwrap()).unwrap();
    assert_eq!(
        (legacy["id"].as_u64(), legacy["backend"].as_str()),
        (Some(2), Some("b-v2"))
    );
}

#[test]
fn a_rollback_puts_back_the_files_of_any_kept_release_and_marks_the_one_it_replaced() {
    let i = install();
    i.release("v1", true, true, 3);
    i.release("v2", true, false, 3);
    i.release("v3", true, true, 3);
    assert_eq!(i.live(), ("v3".into(), "v3".into()));
    let from = i.roll_back_to(1).unwrap();
    assert_eq!(from.id, 3);
    assert_eq!(i.live(), ("v1".into(), "v1".into()));
    let s = i.store();
    assert_eq!(s.live().unwrap().id, 1);
    assert_eq!(s.get(3).unwrap().state, State::RolledBack);
    assert_eq!(
        s.get(1).unwrap().restored[0].reason,
        "rolled back from release 3"
    );
    let bad = s
        .bad_for(
            json!({"backend": "b-v3", "frontend": "f-v3"})
                .as_object()
                .unwrap(),
        )
        .unwrap();
    assert_eq!((bad.release, &bad.how), (3, &State::RolledBack));
    assert!(
        s.bad_for(json!({"backend": "b-v2"}).as_object().unwrap())
            .is_none()
    );
    // Release 2 had release 1's frontend: forward again to it switches the backend only.
    let tracker = Tracker::default();
    let changed =
        super::super::put_back_release(&i.dir, "main", &i.parts, 2, None, &tracker).unwrap();
    assert_eq!((changed.backend, changed.frontend), (true, false));
    assert_eq!(i.live(), ("v2".into(), "v1".into()));
    // A rolled-back release can be put back by name (an operator undoing a rollback), a failed one not.
    assert!(s.plan_rollback(Some(3), &i.parts).is_ok());
    assert!(
        s.plan_rollback(Some(9), &i.parts)
            .unwrap_err()
            .message()
            .contains("not kept (kept: 3, 2, 1)")
    );
}

#[test]
fn pruning_keeps_the_newest_and_always_the_live_and_previous_releases() {
    let i = install();
    for v in ["v1", "v2", "v3", "v4"] {
        i.release(v, true, true, 2);
    }
    let ids: Vec<u64> = i.store().releases.iter().map(|r| r.id).collect();
    assert_eq!(ids, [4, 3]);
    assert_eq!(
        kept::kept_siblings(&i.parts.backend).len(),
        1,
        "only release 3's binary is kept beside the live one"
    );
    // Back to release 3, then two new releases with keep 1: the live and the previous stay.
    i.roll_back_to(3);
    i.release("v5", true, true, 1);
    let s = i.store();
    let ids: Vec<u64> = s.releases.iter().map(|r| r.id).collect();
    assert_eq!(ids, [5, 3], "the live release and the previous one");
    assert_eq!(s.previous().unwrap().id, 3);
    for part in Part::ALL {
        let prev = s.get(3).unwrap().files.unwrap().get(part).unwrap();
        assert!(kept::locate(i.parts.path(part), &prev).is_some());
        assert_eq!(kept::kept_siblings(i.parts.path(part)).len(), 1);
    }
    // The rolled-back commits are remembered after their record was pruned.
    assert!(
        s.bad_for(json!({"backend": "b-v4"}).as_object().unwrap())
            .is_some()
    );
}

#[test]
fn a_failed_release_is_recorded_without_files_and_its_commits_remembered() {
    let i = install();
    i.release("v1", true, true, 3);
    let Value::Object(facts) = json!({"backend": "b-bad", "frontend": "f-v1"}) else {
        unreachable!()
    };
    let failed = record_release(
        &i.dir,
        Recording {
            install: "main".into(),
            target: "multi/blue".into(),
            parts: i.parts.clone(),
            job_id: "job-bad".into(),
            trigger: "build-2.csv".into(),
            duration_ms: 5,
            steps: Vec::new(),
            facts: facts.clone(),
            failed: Some("http_check: status 503".into()),
            keep: 3,
        },
        &Tracker::default(),
    )
    .unwrap();
    assert_eq!((failed.id, &failed.state), (2, &State::Failed));
    let s = i.store();
    assert_eq!(s.live().unwrap().id, 1, "the failed release never served");
    assert_eq!(s.bad_for(&facts).unwrap().reason, "http_check: status 503");
    let e = s.plan_rollback(Some(2), &i.parts).err().unwrap();
    assert!(e.message().contains("failed its checks"), "{e}");
    assert!(
        !i.dir.join("multi_blue.json").exists(),
        "older engines read <target>.json as the live record"
    );
}

#[test]
fn an_older_engines_records_are_read_numbered_and_the_live_one_adopted() {
    let i = install();
    std::fs::create_dir_all(&i.dir).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/releases-0.1.0");
    for f in std::fs::read_dir(&fixtures).unwrap().flatten() {
        std::fs::copy(f.path(), i.dir.join(f.file_name())).unwrap();
    }
    let s = i.store();
    assert!(s.from_legacy);
    let ids: Vec<(u64, &str, &str)> = s
        .releases
        .iter()
        .map(|r| (r.id, r.target.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            (3, "main", "live"),
            (2, "multi/blue", "replaced"),
            (1, "main", "replaced")
        ]
    );
    assert_eq!(s.live().unwrap().steps.len(), 4, "every step's figures");
    assert!(
        Store::load(&i.dir, "dedicated/acme")
            .unwrap()
            .releases
            .is_empty()
    );
    assert_eq!(installs(&i.dir), ["main"]);
    // Not rolled back to (their files are unknown), but the live one learns its files from the next
    // release, and can be put back then.
    assert!(
        s.plan_rollback(Some(2), &i.parts)
            .unwrap_err()
            .message()
            .contains("older t8k-engine")
    );
    i.release("v1", true, true, 3);
    let s = i.store();
    assert!(!s.from_legacy);
    assert_eq!(
        s.releases.iter().map(|r| r.id).collect::<Vec<_>>(),
        [4, 3, 2]
    );
    assert!(s.get(3).unwrap().files.is_some());
    i.roll_back_to(3);
    assert_eq!(i.live(), ("v0".into(), "v0".into()));
}

#[test]
fn a_store_of_a_newer_format_or_garbage_is_refused_with_what_to_do() {
    let i = install();
    std::fs::create_dir_all(&i.dir).unwrap();
    std::fs::write(i.dir.join("main.releases.json"), "{\"version\": 2}").unwrap();
    let e = format!("{:#}", Store::load(&i.dir, "main").unwrap_err());
    assert!(e.contains("newer t8k-engine"), "{e}");
    std::fs::write(i.dir.join("main.releases.json"), "{").unwrap();
    let e = format!("{:#}", Store::load(&i.dir, "main").unwrap_err());
    assert!(e.contains("move it aside"), "{e}");
}
