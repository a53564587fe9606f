//! `t8k-engine watch` as a real daemon over real files: concurrent and slow producers, rename-in, order,
//! a replaced inbox, signals, kill -9, script edits, special files, coalescing and the systemd protocol.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use crate::common::{Root, alive, root_with, stop, wait_until};

/// Marks each job as `trigger:line:tenant` (the type is always main here).
const TENANT_MARKING: &str = r#"fn build(job) { run("mark", [`${job.trigger}:${job.line}:${job.tenant}`]); }
"#;

/// Writes a file the way `mv` delivers it: complete, under its final name, in one rename.
fn rename_in(root: &Root, name: &str, content: &str) {
    let tmp = root.path.join(format!("outside-{name}"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, root.path.join("state").join(name)).unwrap();
}

#[test]
fn concurrent_slow_and_renamed_triggers_each_run_once_in_order() {
    let root = root_with(TENANT_MARKING, "");
    let daemon = root.daemon(&[]);
    root.wait_watching();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let state = root.path.join("state");
            let outside = root.path.clone();
            std::thread::spawn(move || {
                for i in 0..125 {
                    let name = format!("build-{w}-{i:04}.csv");
                    // Two lines: a file parsed before the second arrives would run one job, not two.
                    let (first, second) = (
                        format!("type=multi,tenant=w{w}a{i}\n"),
                        format!("type=multi,tenant=w{w}b{i}\n"),
                    );
                    let (first, second) = (
                        first.replace('\n', ",command=build\n"),
                        second.replace('\n', ",command=build\n"),
                    );
                    match i % 25 {
                        0 => {
                            // A slow producer: `(printf ...; sleep; printf ...) > file`, half a second apart.
                            let mut f = std::fs::File::create(state.join(&name)).unwrap();
                            f.write_all(first.as_bytes()).unwrap();
                            f.flush().unwrap();
                            std::thread::sleep(Duration::from_millis(500));
                            f.write_all(second.as_bytes()).unwrap();
                        }
                        1 | 2 => {
                            let tmp = outside.join(format!("tmp-{name}"));
                            std::fs::write(&tmp, format!("{first}{second}")).unwrap();
                            std::fs::rename(&tmp, state.join(&name)).unwrap();
                        }
                        _ => {
                            let mut f = std::fs::File::create(state.join(&name)).unwrap();
                            f.write_all(first.as_bytes()).unwrap();
                            f.write_all(second.as_bytes()).unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    wait_until(
        Duration::from_secs(240),
        "2,000 jobs from 1,000 triggers",
        || root.marks().len() >= 2000,
    );
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
    let marks = root.marks();
    assert_eq!(marks.len(), 2000, "no job ran twice");
    assert!(
        root.failed().is_empty(),
        "nothing was parsed early or set aside: {:?}",
        root.failed()
    );
    assert!(root.inbox().is_empty() && root.work().is_empty());
    for w in 0..8 {
        let mine: Vec<&String> = marks
            .iter()
            .filter(|m| m.starts_with(&format!("build-{w}-")))
            .collect();
        let expected: Vec<String> = (0..125)
            .flat_map(|i| {
                [
                    format!("build-{w}-{i:04}.csv:1:w{w}a{i}"),
                    format!("build-{w}-{i:04}.csv:2:w{w}b{i}"),
                ]
            })
            .collect();
        assert_eq!(
            mine,
            expected.iter().collect::<Vec<_>>(),
            "writer {w}'s triggers ran once each, whole, in order"
        );
    }
}

#[test]
fn a_later_file_never_overtakes_one_still_being_written() {
    let root = root_with(TENANT_MARKING, "");
    let daemon = root.daemon(&[]);
    root.wait_watching();
    let mut slow = std::fs::File::create(root.path.join("state/build-1.csv")).unwrap();
    slow.write_all(b"type=main,").unwrap();
    rename_in(&root, "build-2.csv", "type=multi,tenant=t2,command=build\n");
    wait_until(
        Duration::from_secs(10),
        "the daemon to see both files",
        || root.daemon_out().contains("watching") && root.inbox().len() == 2,
    );
    assert!(root.marks().is_empty(), "build-2.csv waits for build-1.csv");
    slow.write_all(b"command=build\n").unwrap();
    drop(slow);
    wait_until(Duration::from_secs(10), "both jobs", || {
        root.marks().len() == 2
    });
    assert_eq!(root.marks(), ["build-1.csv:1:default", "build-2.csv:1:t2"]);
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
}

#[test]
fn an_incomplete_file_goes_stale_and_the_queue_moves_on() {
    let root = root_with(TENANT_MARKING, "stale_after = 1\n");
    let daemon = root.daemon(&[]);
    root.wait_watching();
    std::fs::write(
        root.path.join("state/build-1.csv"),
        "type=main,command=build",
    )
    .unwrap();
    std::fs::write(
        root.path.join("state/build-2.csv"),
        "type=multi,tenant=x,command=build\n",
    )
    .unwrap();
    wait_until(
        Duration::from_secs(10),
        "build-2 to run after build-1 went stale",
        || root.marks().len() == 1,
    );
    assert_eq!(root.marks(), ["build-2.csv:1:x"]);
    assert!(
        root.reason("build-1.csv")
            .starts_with("build-1.csv: incomplete: the last line has no newline after 1s")
    );
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
}

#[test]
fn the_inbox_deleted_and_recreated_is_watched_again() {
    let root = root_with(TENANT_MARKING, "");
    let daemon = root.daemon(&[]);
    root.wait_watching();
    std::fs::write(
        root.path.join("state/build-1.csv"),
        "type=main,command=build\n",
    )
    .unwrap();
    // Until its trigger is removed the engine still writes under the inbox (history, completion), and an
    // `rm -rf` racing those writes fails with "directory not empty".
    wait_until(Duration::from_secs(10), "the first job", || {
        root.marks().len() == 1 && root.work().is_empty()
    });
    std::fs::remove_dir_all(root.path.join("state")).unwrap();
    std::fs::create_dir_all(root.path.join("state")).unwrap();
    wait_until(Duration::from_secs(10), "the daemon to notice", || {
        root.daemon_out().contains("was deleted or replaced")
    });
    std::fs::write(
        root.path.join("state/build-2.csv"),
        "type=main,command=build\n",
    )
    .unwrap();
    wait_until(
        Duration::from_secs(10),
        "a trigger in the new inbox",
        || root.marks().len() == 2,
    );
    assert!(
        root.path.join("state/.t8k-engine/work").is_dir(),
        "the engine's directories are back"
    );
    let second = root.run(&["run", "--no-wait"]);
    assert_eq!(
        second.status.code(),
        Some(75),
        "the daemon holds the lock on the new directory"
    );
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
}

/// A script that records its step's pid, then blocks until `release` exists.
fn blocking(root: &Root) -> String {
    format!(
        r#"fn build(job) {{
    run("mark", [`start ${{job.trigger}}`]);
    step("block", || run("sh", ["-c", "echo $$ >> {1}; while [ ! -f {0} ]; do sleep 0.05; done"]));
    run("mark", [`end ${{job.trigger}}`]);
}}
"#,
        root.path.join("release").display(),
        root.path.join("step-pids").display()
    )
}

fn step_pids(root: &Root) -> Vec<i32> {
    std::fs::read_to_string(root.path.join("step-pids"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
fn sigterm_during_a_step_kills_its_tree_and_the_next_start_finishes_it() {
    let root = root_with(TENANT_MARKING, "");
    root.script("main.rhai", &blocking(&root));
    root.trigger("build-1.csv", "type=main,command=build\n");
    let daemon = root.daemon(&[]);
    wait_until(Duration::from_secs(20), "the step to start", || {
        step_pids(&root).len() == 1
    });
    let step = step_pids(&root)[0];
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
    assert!(
        !alive(step),
        "the step's process tree is gone when the daemon exits"
    );
    assert_eq!(root.work(), ["build-1.csv"], "the trigger is still claimed");

    std::fs::write(root.path.join("release"), "").unwrap();
    let daemon = root.daemon(&[]);
    wait_until(Duration::from_secs(20), "the job to finish", || {
        root.marks().len() == 3
    });
    assert_eq!(
        root.marks(),
        ["start build-1.csv", "start build-1.csv", "end build-1.csv"]
    );
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
    assert!(root.work().is_empty());
}

#[test]
fn kill_9_during_a_job_then_restart_finishes_it_first() {
    let root = root_with(TENANT_MARKING, "");
    root.script("main.rhai", &blocking(&root));
    root.trigger("build-1.csv", "type=main,command=build\n");
    let mut daemon = root.daemon(&[]);
    wait_until(Duration::from_secs(20), "the step to start", || {
        step_pids(&root).len() == 1
    });
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    root.trigger("build-0.csv", "type=main,command=build\n");
    std::fs::write(root.path.join("release"), "").unwrap();
    let daemon = root.daemon(&[]);
    wait_until(Duration::from_secs(20), "both triggers", || {
        root.marks().len() == 5
    });
    assert_eq!(
        root.marks(),
        [
            "start build-1.csv",
            "start build-1.csv",
            "end build-1.csv",
            "start build-0.csv",
            "end build-0.csv"
        ],
        "the claimed trigger finishes before the inbox, even one that sorts earlier"
    );
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
}

#[test]
fn an_edited_script_takes_effect_from_the_next_job_and_a_broken_one_fails_only_its_job() {
    let root = root_with(TENANT_MARKING, "");
    let daemon = root.daemon(&[]);
    root.wait_watching();
    root.trigger("build-1.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(10), "job 1", || root.marks().len() == 1);
    root.script("lib/extra.rhai", "fn tag() { \"edited\" }\n");
    root.script(
        "main.rhai",
        "import \"lib/extra\" as x;\nfn build(job) { run(\"mark\", [x::tag()]); }\n",
    );
    root.trigger("build-2.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(10), "job 2", || root.marks().len() == 2);
    root.script("lib/extra.rhai", "fn tag() { \"edited again\" }\n");
    root.trigger("build-3.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(10), "job 3", || root.marks().len() == 3);
    assert_eq!(
        root.marks(),
        ["build-1.csv:1:default", "edited", "edited again"],
        "imported modules are reloaded too"
    );

    root.script("main.rhai", "fn build(job) { let x = ; }\n");
    root.trigger("build-4.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(10), "build-4 to be set aside", || {
        root.failed().len() == 1
    });
    let reason = root.reason("build-4.csv");
    assert!(
        reason.contains(&format!(
            "{}:1:",
            root.path.join("scripts/main.rhai").display()
        )),
        "{reason}"
    );
    root.script("main.rhai", TENANT_MARKING);
    root.trigger("build-5.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(10), "the daemon to go on", || {
        root.marks().len() == 4
    });
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
}

#[test]
fn special_files_are_set_aside_while_the_daemon_keeps_going() {
    let root = root_with(TENANT_MARKING, "");
    let daemon = root.daemon(&[]);
    root.wait_watching();
    let state = root.path.join("state");
    std::os::unix::fs::symlink("/etc/hostname", state.join("build-1.csv")).unwrap();
    let fifo = std::ffi::CString::new(state.join("build-2.csv").to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::create_dir(state.join("build-3.csv")).unwrap();
    std::fs::write(state.join("build-4.csv"), "type=main,command=build\n").unwrap();
    wait_until(Duration::from_secs(10), "the good trigger", || {
        root.marks().len() == 1
    });
    assert_eq!(root.failed(), ["build-1.csv", "build-2.csv", "build-3.csv"]);
    assert!(
        root.reason("build-1.csv")
            .starts_with("build-1.csv: a symlink is not a regular file")
    );
    assert!(
        root.reason("build-2.csv")
            .starts_with("build-2.csv: a FIFO is not a regular file")
    );
    assert!(
        root.reason("build-3.csv")
            .starts_with("build-3.csv: a directory is not a regular file")
    );
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
}

#[test]
fn duplicate_pending_triggers_run_once_for_the_newest() {
    for coalesce in [true, false] {
        let root = root_with(TENANT_MARKING, &format!("coalesce = {coalesce}\n"));
        root.script("dedicated.rhai", &blocking(&root));
        root.trigger("build-0.csv", "type=dedicated,site=busy,command=build\n");
        let daemon = root.daemon(&[]);
        wait_until(Duration::from_secs(20), "the blocking job", || {
            step_pids(&root).len() == 1
        });
        root.trigger("build-1.csv", "type=main,command=build\n");
        root.trigger("build-2.csv", "type=multi,tenant=a,command=build\n");
        root.trigger("build-3.csv", "type=main,command=build\n");
        root.trigger(
            "build-4.csv",
            "type=main,command=build\ntype=multi,tenant=b,command=build\n",
        );
        std::fs::write(root.path.join("release"), "").unwrap();
        let expected: &[&str] = if coalesce {
            &[
                "build-2.csv:1:a",
                "build-4.csv:1:default",
                "build-4.csv:2:b",
            ]
        } else {
            &[
                "build-1.csv:1:default",
                "build-2.csv:1:a",
                "build-3.csv:1:default",
                "build-4.csv:1:default",
                "build-4.csv:2:b",
            ]
        };
        wait_until(Duration::from_secs(20), "the queue to drain", || {
            root.marks().len() == 2 + expected.len() && root.inbox().is_empty()
        });
        assert_eq!(root.marks()[2..], *expected, "coalesce = {coalesce}");
        if coalesce {
            let out = root.daemon_out();
            assert!(
                out.contains("superseded build-1.csv by build-4.csv"),
                "{out}"
            );
            assert!(
                out.contains("superseded build-3.csv by build-4.csv"),
                "{out}"
            );
        }
        assert!(root.failed().is_empty());
        assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
    }
}

/// Reads datagrams from the notify socket until a line starting with `want` arrives; returns everything read.
fn read_until(sock: &UnixDatagram, want: &str, limit: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(std::time::Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.lines().any(|l| l.starts_with(want));
                seen.push(msg);
                if done {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no {want} within {limit:?}; got {seen:?}");
}

#[test]
fn systemd_notify_ready_after_recovery_watchdog_and_stopping() {
    let root = root_with(TENANT_MARKING, "");
    root.script("main.rhai", &blocking(&root));
    // A trigger left claimed by a dead engine: READY must wait until it is finished.
    std::fs::create_dir_all(root.path.join("state/.t8k-engine/work")).unwrap();
    std::fs::write(
        root.path.join("state/.t8k-engine/work/build-1.csv"),
        "type=main,command=build\n",
    )
    .unwrap();
    let sock_path = root.path.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let daemon = root.daemon(&[
        ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "400000"),
    ]);
    wait_until(Duration::from_secs(20), "recovery to start", || {
        step_pids(&root).len() == 1
    });
    let before: Vec<String> = read_until(&sock, "EXTEND_TIMEOUT_USEC=", Duration::from_secs(5));
    assert!(
        !before.iter().any(|m| m.contains("READY=1")),
        "not ready while recovering: {before:?}"
    );
    std::fs::write(root.path.join("release"), "").unwrap();
    let ready = read_until(&sock, "READY=1", Duration::from_secs(20));
    assert_eq!(
        root.marks(),
        ["start build-1.csv", "end build-1.csv"],
        "READY came after recovery: {ready:?}"
    );
    // Idle, the loop keeps pinging the watchdog at half its interval.
    read_until(&sock, "WATCHDOG=1", Duration::from_secs(2));
    read_until(&sock, "WATCHDOG=1", Duration::from_secs(2));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    read_until(&sock, "STOPPING=1", Duration::from_secs(10));
    let mut daemon = daemon;
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
}

#[test]
fn the_shipped_units_pass_systemd_analyze_verify() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd");
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    for unit in [
        "t8k-engine.service",
        "t8k-build-watcher.service",
        "t8k-build-watcher.path",
    ] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap().replace(
            "/usr/local/bin/t8k-engine",
            env!("CARGO_BIN_EXE_t8k-engine"),
        );
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(
            [
                "t8k-engine.service",
                "t8k-build-watcher.service",
                "t8k-build-watcher.path",
            ]
            .map(|u| dir.path().join(u)),
        )
        .output()
        .expect("systemd-analyze is installed (.ci/install.sh installs systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("/run/systemd/system") && !l.trim().is_empty())
        .collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze verify: {err}"
    );
}

#[test]
fn a_second_signal_kills_the_step_at_once() {
    // The step ignores SIGTERM and the grace period is long: only the second signal can end it soon.
    let root = root_with(TENANT_MARKING, "kill_grace = 300\n");
    let pids = root.path.join("step-pids");
    root.script(
        "main.rhai",
        &format!(r#"fn build(job) {{ step("stubborn", || run("sh", ["-c", "trap '' TERM; echo $$ >> {}; while :; do sleep 0.05; done"])); }}"#, pids.display()),
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    let mut daemon = root.daemon(&[]);
    wait_until(Duration::from_secs(20), "the step to start", || {
        step_pids(&root).len() == 1
    });
    let step = step_pids(&root)[0];
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    wait_until(
        Duration::from_secs(10),
        "the first signal to be handled",
        || root.daemon_out().contains("stopping the running step"),
    );
    assert!(
        alive(step),
        "the step survives SIGTERM during the grace period"
    );
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon waits for the step"
    );
    // SAFETY: as above.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let mut code = None;
    wait_until(Duration::from_secs(10), "the daemon to exit", || {
        code = daemon.try_wait().unwrap();
        code.is_some()
    });
    assert_eq!(code.unwrap().code(), Some(130));
    wait_until(Duration::from_secs(5), "the step to be killed", || {
        !alive(step)
    });
    assert_eq!(
        root.work(),
        ["build-1.csv"],
        "the trigger stays claimed for the next start"
    );
}

#[test]
fn a_scan_that_keeps_failing_backs_off_instead_of_spinning() {
    let root = root_with(TENANT_MARKING, "");
    let daemon = root.daemon(&[]);
    root.wait_watching();
    // Setting a trigger aside now fails (failed/ is a file), so every scan fails.
    std::fs::remove_dir(root.path.join("state/failed")).unwrap();
    std::fs::write(root.path.join("state/failed"), "not a directory").unwrap();
    std::fs::write(
        root.path.join("state/build-a b.csv"),
        "type=main,command=build\n",
    )
    .unwrap();
    wait_until(Duration::from_secs(10), "the first failed scan", || {
        root.daemon_out().contains("trying again in 5s")
    });
    // A producer keeps the inbox busy; each event would trigger a scan if the back-off did not hold.
    for i in 0..50 {
        std::fs::write(root.path.join("state/notes.txt"), format!("{i}")).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let failures = root.daemon_out().matches("trying again in 5s").count();
    assert!(
        failures <= 2,
        "{failures} failed scans in about a second: the daemon spins"
    );
    // Once the problem is gone, the trigger is set aside and the daemon carries on.
    std::fs::remove_file(root.path.join("state/failed")).unwrap();
    std::fs::create_dir(root.path.join("state/failed")).unwrap();
    wait_until(
        Duration::from_secs(15),
        "the bad name to be set aside",
        || root.failed().len() == 1,
    );
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
}
