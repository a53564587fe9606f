//! Unit tests of the queue: listing, claiming, attempts, setting aside, retrying, unsafe names and files.

use super::*;
use crate::config::Config;

fn queue() -> (tempfile::TempDir, Queue, Layout) {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(&Config {
        root: dir.path().to_path_buf(),
        ..Config::default()
    });
    let q = Queue::open(&layout, 4096).unwrap();
    (dir, q, layout)
}

#[test]
fn pending_is_sorted_and_ignores_other_names() {
    let (_d, q, l) = queue();
    for n in [
        "build-2.csv",
        "build-10.csv",
        "build-1.csv",
        ".build-0.csv",
        "notes.txt",
        "build-3.csv.tmp",
    ] {
        std::fs::write(l.state.join(n), "x").unwrap();
    }
    let Pending { names, set_aside } = q.pending().unwrap();
    assert_eq!(names, ["build-1.csv", "build-10.csv", "build-2.csv"]);
    assert!(set_aside.is_empty());
    // `date -Iseconds` names: `:` and `+` are as safe in a name as `-`.
    std::fs::write(l.state.join("build-2026-01-01T10:00:00+00:00.csv"), "x").unwrap();
    let Pending { names, set_aside } = q.pending().unwrap();
    assert_eq!(names[3], "build-2026-01-01T10:00:00+00:00.csv");
    assert!(set_aside.is_empty());
}

#[test]
fn other_csv_files_are_named_as_strays_with_what_to_do() {
    let (_d, q, l) = queue();
    for n in [
        "main_build.csv",
        "BUILD-1.CSV",
        "build-.csv",
        "build-1.csv",
        "build-a b.csv",
        ".build-2.csv",
        "notes.txt",
        "odd name.csv",
    ] {
        std::fs::write(l.state.join(n), "x").unwrap();
    }
    let strays = q.strays().unwrap();
    let names: Vec<&str> = strays.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "BUILD-1.CSV",
            "build-.csv",
            "main_build.csv",
            "odd name.csv"
        ]
    );
    let main = &strays[2].warning;
    assert!(
        main.starts_with(
            "ignored: main_build.csv does not match build-*.csv; rename it to build-….csv"
        ),
        "{main}"
    );
    assert!(
        main.contains(&format!("mv -n {}/main_build.csv ", l.state.display())),
        "{main}"
    );
    assert!(
        !strays[3].warning.contains("mv"),
        "no command for a name that needs quoting"
    );
}

#[test]
fn unsafe_names_are_set_aside_with_a_reason() {
    let (_d, q, l) = queue();
    std::fs::write(
        l.state.join("build-a b;rm.csv"),
        "type=main,command=build\n",
    )
    .unwrap();
    let Pending { names, set_aside } = q.pending().unwrap();
    assert!(names.is_empty());
    assert_eq!(set_aside.len(), 1);
    assert_eq!(set_aside[0].name, "build-a_b_rm.csv");
    assert!(l.failed.join("build-a_b_rm.csv").is_file());
    let reason = std::fs::read_to_string(l.failed.join("build-a_b_rm.csv.reason")).unwrap();
    assert!(
        reason.starts_with("build-a_b_rm.csv: unsafe file name"),
        "{reason}"
    );
}

#[test]
fn claim_complete_and_attempts() {
    let (_d, q, l) = queue();
    std::fs::write(l.state.join("build-1.csv"), "type=main,command=build\n").unwrap();
    assert!(matches!(q.claim("build-1.csv").unwrap(), Claim::Claimed));
    assert!(!l.state.join("build-1.csv").exists());
    assert_eq!(q.claimed().unwrap(), ["build-1.csv"]);
    assert_eq!(
        q.read_claimed("build-1.csv").unwrap(),
        b"type=main,command=build\n"
    );
    assert_eq!(q.begin_attempt("build-1.csv").unwrap(), 0);
    assert_eq!(q.begin_attempt("build-1.csv").unwrap(), 1);
    assert!(matches!(q.claim("build-1.csv").unwrap(), Claim::Vanished));
    std::fs::write(l.state.join("build-1.csv"), "again\n").unwrap();
    assert!(matches!(q.claim("build-1.csv").unwrap(), Claim::Duplicate));
    q.complete("build-1.csv").unwrap();
    assert!(q.claimed().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(&l.work).unwrap().count(),
        0,
        "attempt record removed too"
    );
}

#[test]
fn setting_aside_an_inbox_duplicate_keeps_the_claimed_triggers_attempts() {
    // Found by tests/integration/props/queue.rs: set_aside from the inbox removed the attempt record of the claimed
    // trigger of the same name, so a duplicate reset the count of engine deaths on it.
    let (_d, q, l) = queue();
    std::fs::write(l.state.join("build-1.csv"), "first\n").unwrap();
    q.claim("build-1.csv").unwrap();
    assert_eq!(q.begin_attempt("build-1.csv").unwrap(), 0);
    std::fs::write(l.state.join("build-1.csv"), "second\n").unwrap();
    assert!(matches!(q.claim("build-1.csv").unwrap(), Claim::Duplicate));
    let reason = |aside: &str| Reason {
        summary: aside.into(),
        details: String::new(),
    };
    q.set_aside("build-1.csv", Place::Inbox, reason).unwrap();
    assert_eq!(q.begin_attempt("build-1.csv").unwrap(), 1);
}

#[test]
fn a_claimed_trigger_starts_at_attempt_zero_whatever_a_crash_left() {
    // Found by tests/integration/props/queue.rs: an engine that died inside set_aside (or complete) left the attempt
    // record behind, and a retried trigger of that name inherited its count.
    let (_d, q, l) = queue();
    std::fs::write(l.work.join(".build-1.csv.attempts"), "2\n").unwrap();
    std::fs::write(l.state.join("build-1.csv"), "retried\n").unwrap();
    assert!(matches!(q.claim("build-1.csv").unwrap(), Claim::Claimed));
    assert_eq!(q.begin_attempt("build-1.csv").unwrap(), 0);
}

#[test]
fn set_aside_keeps_file_and_reason_and_retry_restores_it() {
    let (_d, q, l) = queue();
    for round in 0..2 {
        std::fs::write(l.state.join("build-1.csv"), format!("round {round}\n")).unwrap();
        q.claim("build-1.csv").unwrap();
        let reason = Reason {
            summary: format!("build-1.csv: failed {round}"),
            details: "tail".into(),
        };
        let name = q.set_aside("build-1.csv", Place::Work, |_| reason).unwrap();
        assert_eq!(
            name,
            if round == 0 {
                "build-1.csv"
            } else {
                "build-1.csv.1"
            }
        );
    }
    let reason = std::fs::read_to_string(l.failed.join("build-1.csv.1.reason")).unwrap();
    assert_eq!(reason, "build-1.csv: failed 1\n\ntail\n");
    assert_eq!(
        std::fs::read_to_string(l.failed.join("build-1.csv")).unwrap(),
        "round 0\n"
    );
    let back = q.retry("build-1.csv.1").unwrap();
    assert_eq!(back, l.state.join("build-1.csv"));
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "round 1\n");
    assert!(!l.failed.join("build-1.csv.1.reason").exists());
    let err = q.retry("build-1.csv").unwrap_err().to_string();
    assert!(err.contains("already has"), "{err}");
    assert!(
        q.retry("nope.csv")
            .unwrap_err()
            .to_string()
            .contains("no set-aside trigger")
    );
    assert!(q.retry("../x").is_err());
}

#[test]
fn bytes_are_set_aside_like_a_trigger_never_replacing_and_retry_runs_them() {
    let (_d, q, l) = queue();
    std::fs::write(l.state.join("build-7.csv"), "from the inbox\n").unwrap();
    q.claim("build-7.csv").unwrap();
    let by_queue = q
        .set_aside("build-7.csv", Place::Work, |_| Reason {
            summary: "build-7.csv: failed".into(),
            details: "x".into(),
        })
        .unwrap();
    let failed = failed_dir(&l).unwrap();
    // A stray reason (a crash mid-set-aside) does not keep its name; an entry of any kind does.
    std::fs::write(l.failed.join("build-7.csv.1.reason"), "stray\n").unwrap();
    let victim = l.root.join("victim");
    std::fs::write(&victim, "keep\n").unwrap();
    std::os::unix::fs::symlink(&victim, l.failed.join("build-7.csv.2")).unwrap();
    let mut told = Vec::new();
    for body in ["job one\n", "job two\n"] {
        let aside = set_aside_bytes(&failed, "build-7.csv", body.as_bytes(), |aside| {
            told.push(aside.to_string());
            Reason {
                summary: format!("{aside}: rejected; retry {aside}"),
                details: format!("body:\n{body}  \n"),
            }
        })
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(l.failed.join(&aside)).unwrap(),
            body
        );
    }
    assert_eq!(by_queue, "build-7.csv");
    assert_eq!(told, ["build-7.csv.1", "build-7.csv.3"]);
    assert_eq!(
        std::fs::read_to_string(l.failed.join("build-7.csv.3.reason")).unwrap(),
        "build-7.csv.3: rejected; retry build-7.csv.3\n\nbody:\njob two\n"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    assert!(
        std::fs::symlink_metadata(l.failed.join("build-7.csv.2"))
            .unwrap()
            .is_symlink()
    );
    // What was set aside runs like any set-aside trigger: back into the inbox under its name.
    let back = q.retry("build-7.csv.3").unwrap();
    assert_eq!(std::fs::read_to_string(back).unwrap(), "job two\n");
    for bad in ["../x.csv", ".hidden.csv", "a/b.csv"] {
        assert!(
            set_aside_bytes(&failed, bad, b"x", |_| Reason {
                summary: String::new(),
                details: String::new(),
            })
            .is_err()
        );
    }
}

#[test]
fn non_regular_and_oversized_files_are_refused_without_blocking() {
    let (_d, q, l) = queue();
    std::os::unix::fs::symlink("/etc/hostname", l.work.join("build-l.csv")).unwrap();
    std::fs::create_dir(l.work.join("build-d.csv")).unwrap();
    let fifo = std::ffi::CString::new(l.work.join("build-f.csv").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::write(l.work.join("build-big.csv"), vec![b'a'; 5000]).unwrap();
    std::fs::write(l.work.join("build-h.csv"), "type=main,command=build\n").unwrap();
    std::fs::hard_link(l.work.join("build-h.csv"), l.root.join("other")).unwrap();
    let msg = |n: &str| q.read_claimed(n).unwrap_err().to_string();
    assert_eq!(msg("build-l.csv"), "a symlink is not a regular file");
    assert_eq!(msg("build-d.csv"), "a directory is not a regular file");
    assert_eq!(msg("build-f.csv"), "a FIFO is not a regular file");
    assert!(msg("build-big.csv").contains("5000 bytes"));
    assert!(msg("build-h.csv").contains("hard link"));
    let name = q.set_aside("build-d.csv", Place::Work, |aside| Reason {
        summary: aside.into(),
        details: String::new(),
    });
    assert_eq!(name.unwrap(), "build-d.csv");
    assert!(l.failed.join("build-d.csv").is_dir());
}
