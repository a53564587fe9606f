//! `t8k-engine run` against a temporary root: order, set-aside, failures, timeouts, runaway scripts, the lock
//! and crash recovery, all through the real binary.

use std::time::Duration;

use crate::common::{Root, alive, marking_root, text, wait_until};

#[test]
fn files_and_lines_run_in_sorted_order() {
    let root = marking_root();
    root.trigger(
        "build-2.csv",
        "type=multi,tenant=a,command=build\ntype=dedicated,site=s1,command=build\n",
    );
    root.trigger("build-10.csv", "type=prod,command=build");
    root.trigger(
        "build-1.csv",
        "\u{feff}type=main,tenant=default,command=build\r\n",
    );
    root.trigger("notes.txt", "type=main,command=build\n");
    root.trigger(".build-0.csv", "type=main,command=build\n");
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        root.marks(),
        [
            "build-1.csv:1:main:default:",
            "build-10.csv:1:main:default:",
            "build-2.csv:1:multi:a:",
            "build-2.csv:2:dedicated:default:s1",
        ]
    );
    assert!(root.inbox().is_empty() && root.work().is_empty() && root.failed().is_empty());
    assert!(
        root.path.join("state/notes.txt").exists() && root.path.join("state/.build-0.csv").exists(),
        "other files are left alone"
    );
    let log = root.log();
    assert!(
        log.contains("job{id=") && log.contains("build-2.csv: all 2 job(s) succeeded"),
        "{log}"
    );
}

#[test]
fn a_bad_file_runs_none_of_its_jobs_and_the_next_file_still_runs() {
    let root = marking_root();
    root.trigger(
        "build-1.csv",
        "type=main,command=build\ntype=main,comand=build\n",
    );
    root.trigger("build-2.csv", "type=main,command=build\n");
    root.trigger("build-3.csv", "type=dedicated,command=build\n");
    root.trigger("build-4.csv", "type=main,command=deploy\n");
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        root.marks(),
        ["build-2.csv:1:main:default:"],
        "only the good file ran"
    );
    assert_eq!(root.failed(), ["build-1.csv", "build-3.csv", "build-4.csv"]);
    let r1 = root.reason("build-1.csv");
    assert!(
        r1.lines()
            .next()
            .unwrap()
            .starts_with("build-1.csv line 2: unknown key `comand`"),
        "{r1}"
    );
    assert!(r1.contains("t8k-engine retry build-1.csv"), "{r1}");
    assert!(
        root.reason("build-3.csv")
            .starts_with("build-3.csv line 1: type=dedicated needs a `site`")
    );
    let r4 = root.reason("build-4.csv");
    assert!(
        r4.contains("defines no `fn deploy(job)`") && r4.contains("commands it defines: build"),
        "{r4}"
    );

    // Never retried by itself: a second run leaves it alone.
    let again = root.run(&["run"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(root.marks().len(), 1);

    // Fixed and retried, it runs.
    std::fs::write(
        root.path.join("state/failed/build-1.csv"),
        "type=main,command=build\ntype=multi,tenant=t,command=build\n",
    )
    .unwrap();
    let retry = root.run(&["retry", "build-1.csv"]);
    assert_eq!(retry.status.code(), Some(0), "{}", text(&retry));
    assert!(!root.path.join("state/failed/build-1.csv.reason").exists());
    assert_eq!(root.run(&["run"]).status.code(), Some(0));
    assert_eq!(
        root.marks()[1..],
        ["build-1.csv:1:main:default:", "build-1.csv:2:multi:t:"]
    );
    assert_eq!(
        root.run(&["retry", "build-nope.csv"]).status.code(),
        Some(2)
    );
}

#[test]
fn special_files_are_set_aside_without_blocking() {
    let root = marking_root();
    let state = root.path.join("state");
    std::os::unix::fs::symlink(root.path.join("config.toml"), state.join("build-1.csv")).unwrap();
    std::fs::create_dir(state.join("build-2.csv")).unwrap();
    let fifo = std::ffi::CString::new(state.join("build-3.csv").to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    root.trigger("build-4.csv", &"x".repeat(10_000));
    root.trigger("build-5.csv", "type=main,command=build\n");
    root.trigger("build-6 ;rm -rf.csv", "type=main,command=build\n");
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(root.marks(), ["build-5.csv:1:main:default:"]);
    assert!(
        root.reason("build-1.csv")
            .starts_with("build-1.csv: a symlink is not a regular file")
    );
    assert!(
        root.reason("build-2.csv")
            .starts_with("build-2.csv: a directory is not a regular file")
    );
    assert!(
        root.reason("build-3.csv")
            .starts_with("build-3.csv: a FIFO is not a regular file")
    );
    assert!(
        root.reason("build-4.csv")
            .contains("10000 bytes, larger than the 4096-byte limit")
    );
    assert!(
        root.reason("build-6__rm_-rf.csv")
            .contains("unsafe file name")
    );
    assert!(
        root.path.join("config.toml").is_file(),
        "the symlink's target is untouched"
    );
}

#[test]
fn a_failing_step_is_named_with_its_output_and_not_retried() {
    let root = Root::new();
    root.script(
        "main.rhai",
        r#"
fn build(job) {
    step("pull", || run("mark", ["pulled"]));
    step("compile", || run("sh", ["-c", "echo compiling; echo './main.go:7:2: undefined: nope' >&2; exit 2"]));
    run("mark", ["never"]);
}"#,
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    root.trigger("build-2.csv", "type=main,command=build\n");
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        root.marks(),
        ["pulled", "pulled"],
        "both files ran up to the failure"
    );
    let reason = root.reason("build-1.csv");
    let first = reason.lines().next().unwrap();
    assert!(
        first.starts_with("build-1.csv line 1 (main build): step `compile` failed:"),
        "{first}"
    );
    assert!(
        first.contains("main.rhai:4:")
            && first.contains("exited with code 2: ./main.go:7:2: undefined: nope"),
        "{first}"
    );
    assert!(
        reason
            .split_once("output tail:\n")
            .is_some_and(|(_, tail)| {
                // stdout and stderr arrive through two pipes: their interleaving is not fixed.
                let tail: Vec<&str> = tail.lines().take(2).collect();
                tail.contains(&"  compiling") && tail.contains(&"  ./main.go:7:2: undefined: nope")
            }),
        "{reason}"
    );
    assert!(
        reason.contains("pull: ok") && reason.contains("compile: FAILED"),
        "{reason}"
    );
    assert_eq!(root.run(&["run"]).status.code(), Some(0));
    assert_eq!(
        root.marks().len(),
        2,
        "set-aside files are not retried automatically"
    );
}

#[test]
fn a_timeout_kills_the_whole_process_tree() {
    let root = Root::new();
    let pidfile = root.path.join("grandchild.pid");
    root.script(
        "main.rhai",
        &format!(
            r#"fn build(job) {{ step("hang", || run("sh", ["-c", "sleep 300 & echo $! > {}; wait"], #{{ timeout: 1 }})); }}"#,
            pidfile.display()
        ),
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(Duration::from_secs(5), "the grandchild to be gone", || {
        !alive(pid)
    });
    let reason = root.reason("build-1.csv");
    assert!(
        reason
            .lines()
            .next()
            .unwrap()
            .contains("timed out after 1s; its process group was killed"),
        "{reason}"
    );
}

#[test]
fn runaway_scripts_are_stopped_and_the_engine_carries_on() {
    let root = Root::with_config("job_timeout = 2\n");
    root.script(
        "main.rhai",
        r#"
fn build(job) { loop { } }
fn recurse(job) { recurse(job) }
fn grow(job) { let s = "xxxxxxxx"; loop { s += s; } }
fn ok(job) { run("mark", ["still running"]); }
"#,
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    root.trigger("build-2.csv", "type=main,command=recurse\n");
    root.trigger("build-3.csv", "type=main,command=grow\n");
    root.trigger("build-4.csv", "type=main,command=ok\n");
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(root.marks(), ["still running"]);
    assert!(
        root.reason("build-1.csv")
            .contains("job exceeded its time limit of 2s"),
        "{}",
        root.reason("build-1.csv")
    );
    assert!(
        root.reason("build-2.csv").contains("Stack overflow"),
        "{}",
        root.reason("build-2.csv")
    );
    assert!(
        root.reason("build-3.csv")
            .contains("Length of string too large"),
        "{}",
        root.reason("build-3.csv")
    );
}

/// A script that marks its start, then blocks until `release` exists.
fn blocking_root() -> Root {
    let root = Root::new();
    let release = root.path.join("release");
    root.script(
        "main.rhai",
        &format!(
            r#"fn build(job) {{
    run("mark", [`start ${{job.trigger}}`]);
    step("block", || run("sh", ["-c", "echo $$ >> {1}; while [ ! -f {0} ]; do sleep 0.05; done"]));
    run("mark", [`end ${{job.trigger}}`]);
}}"#,
            release.display(),
            root.path.join("step-pids").display()
        ),
    );
    root
}

#[test]
fn a_second_run_waits_for_the_lock_or_exits_75() {
    let root = blocking_root();
    root.trigger("build-1.csv", "type=main,command=build\n");
    let mut first = root.spawn(&["run"]);
    wait_until(Duration::from_secs(20), "the first job to start", || {
        root.marks().len() == 1
    });

    let busy = root.run(&["run", "--no-wait"]);
    assert_eq!(busy.status.code(), Some(75), "{}", text(&busy));
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains(&format!("pid {}", first.id())),
        "{}",
        text(&busy)
    );

    let mut second = root.spawn(&["run"]);
    let mut err = second.stderr.take().unwrap();
    let waiting = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).unwrap();
        s
    });
    wait_until(
        Duration::from_secs(10),
        "the second run to report it is waiting",
        || root.log().contains("holds the lock"),
    );
    root.trigger("build-2.csv", "type=main,command=build\n");
    std::fs::write(root.path.join("release"), "").unwrap();
    assert_eq!(first.wait().unwrap().code(), Some(0));
    assert_eq!(second.wait().unwrap().code(), Some(0));
    assert!(
        waiting
            .join()
            .unwrap()
            .contains(&format!("pid {}", first.id()))
    );
    assert_eq!(
        root.marks(),
        [
            "start build-1.csv",
            "end build-1.csv",
            "start build-2.csv",
            "end build-2.csv"
        ]
    );
}

#[test]
fn a_job_interrupted_by_kill_9_is_finished_by_the_next_run() {
    let root = blocking_root();
    let pids = |root: &Root| -> Vec<i32> {
        std::fs::read_to_string(root.path.join("step-pids"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    root.trigger("build-1.csv", "type=main,command=build\n");
    root.trigger("build-2.csv", "type=main,command=build\n");
    let mut engine = root.spawn(&["run"]);
    wait_until(Duration::from_secs(20), "the step to start", || {
        pids(&root).len() == 1
    });
    engine.kill().unwrap();
    engine.wait().unwrap();
    assert_eq!(
        root.work(),
        ["build-1.csv"],
        "the claimed trigger stays claimed"
    );
    assert_eq!(root.inbox(), ["build-2.csv"]);
    let orphan = pids(&root)[0];
    assert!(
        alive(orphan),
        "the step outlived the engine that was killed"
    );

    let resumed = root.spawn(&["run"]);
    wait_until(Duration::from_secs(20), "the step to run again", || {
        pids(&root).len() == 2
    });
    assert!(
        !alive(orphan),
        "recovery stopped the dead engine's step before running the job again"
    );
    std::fs::write(root.path.join("release"), "").unwrap();
    let out = resumed.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        root.marks(),
        [
            "start build-1.csv",
            "start build-1.csv",
            "end build-1.csv",
            "start build-2.csv",
            "end build-2.csv"
        ],
        "the claimed job runs again first, then the inbox"
    );
    let log = root.log();
    assert!(
        log.contains("resuming build-1.csv: an engine stopped while running it (attempt 2 of 3)"),
        "{log}"
    );
    assert!(
        log.contains(
            "stopped 1 process group(s) that the engine which died left running for build-1.csv"
        ),
        "{log}"
    );
    assert!(root.work().is_empty() && root.inbox().is_empty() && root.failed().is_empty());
}

#[test]
fn a_trigger_that_kills_the_engine_three_times_is_set_aside() {
    let root = blocking_root();
    root.trigger("build-1.csv", "type=main,command=build\n");
    for round in 1..=3 {
        let mut engine = root.spawn(&["run"]);
        wait_until(Duration::from_secs(20), "the job to start", || {
            root.marks().len() == round
        });
        engine.kill().unwrap();
        engine.wait().unwrap();
    }
    root.trigger("build-2.csv", "type=main,command=build\n");
    std::fs::write(root.path.join("release"), "").unwrap();
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(root.failed(), ["build-1.csv"]);
    assert!(
        root.reason("build-1.csv")
            .starts_with("build-1.csv: the engine died 3 times while running it")
    );
    assert_eq!(root.marks()[3..], ["start build-2.csv", "end build-2.csv"]);
}

#[test]
fn sigterm_stops_the_step_and_leaves_the_trigger_claimed() {
    let root = blocking_root();
    root.trigger("build-1.csv", "type=main,command=build\n");
    let engine = root.spawn(&["run"]);
    wait_until(Duration::from_secs(20), "the job to start", || {
        root.marks().len() == 1
    });
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(engine.id() as i32, libc::SIGTERM) };
    let out = engine.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stays claimed"),
        "{}",
        text(&out)
    );
    assert_eq!(root.work(), ["build-1.csv"]);
    assert!(
        !root
            .path
            .join("state/.t8k-engine/work/.build-1.csv.attempts")
            .exists(),
        "a clean stop is not counted as a death"
    );
    std::fs::write(root.path.join("release"), "").unwrap();
    assert_eq!(root.run(&["run"]).status.code(), Some(0));
    assert_eq!(
        root.marks(),
        ["start build-1.csv", "start build-1.csv", "end build-1.csv"]
    );
}

#[test]
fn trigger_writes_a_valid_unique_file() {
    let root = marking_root();
    let a = root.run(&["trigger", "dedicated", "--site", "acme"]);
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    let path = String::from_utf8_lossy(&a.stdout).trim().to_string();
    assert!(
        path.starts_with(root.path.join("state/build-").to_str().unwrap())
            && path.ends_with(".csv"),
        "{path}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "type=dedicated,tenant=default,site=acme,command=build\n"
    );
    let b = root.run(&["trigger", "main"]);
    assert_ne!(
        String::from_utf8_lossy(&b.stdout),
        String::from_utf8_lossy(&a.stdout)
    );
    for bad in [
        &["trigger", "dedicated"][..],
        &["trigger", "main", "--command", "../x"],
        &["trigger", "main", "--command", "deploy"],
        &["trigger", "nope"],
    ] {
        let out = root.run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
    }
    assert_eq!(root.inbox().len(), 2);
    assert_eq!(root.run(&["run"]).status.code(), Some(0));
    assert_eq!(root.marks().len(), 2);
    assert!(
        root.marks()[0].ends_with(":dedicated:default:acme")
            && root.marks()[1].ends_with(":main:default:"),
        "{:?}",
        root.marks()
    );
}

#[test]
fn a_failing_parallel_branch_cancels_its_siblings() {
    let root = Root::new();
    let pidfile = root.path.join("sibling.pid");
    root.script(
        "main.rhai",
        &format!(
            r#"fn build(job) {{
    let out = parallel(#{{
        quick: || {{ run("mark", ["quick"]); "q" }},
        slow: || step("slow", || run("sh", ["-c", "echo $$ > {0}; sleep 0.3; echo slow done"])),
    }});
    run("mark", [`results ${{out.quick}}`]);
    parallel(#{{
        fails: || {{ step("wait for sibling", || run("sh", ["-c", "while [ ! -s {0}.2 ]; do sleep 0.02; done"])); throw "branch broke"; }},
        sleeps: || run("sh", ["-c", "echo $$ > {0}.2; exec sleep 300"]),
    }});
}}"#,
            pidfile.display()
        ),
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(root.marks(), ["quick", "results q"]);
    let log = root.log();
    assert!(
        log.contains("[slow] slow done"),
        "branch output is prefixed with its name:\n{log}"
    );
    let sleeper: i32 = std::fs::read_to_string(format!("{}.2", pidfile.display()))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the sibling branch's process to be killed",
        || !alive(sleeper),
    );
    let reason = root.reason("build-1.csv");
    assert!(
        reason.lines().next().unwrap().contains("branch broke"),
        "{reason}"
    );
    assert!(
        reason.contains("in call to parallel branch `fails`"),
        "{reason}"
    );
}

#[test]
fn run_waits_for_a_producer_that_is_still_writing() {
    let root = marking_root();
    let path = root.path.join("state/build-1.csv");
    let mut f = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut f, b"type=main,").unwrap();
    let engine = root.spawn(&["run"]);
    // The engine is blocked on the open file; finishing the line and closing it lets the job run whole.
    wait_until(
        Duration::from_secs(10),
        "the engine to wait for the writer",
        || root.log().contains("waiting for build-1.csv"),
    );
    std::io::Write::write_all(
        &mut f,
        b"command=build\ntype=multi,tenant=second,command=build\n",
    )
    .unwrap();
    drop(f);
    let out = engine.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        root.marks(),
        ["build-1.csv:1:main:default:", "build-1.csv:2:multi:second:"]
    );
}

#[test]
fn the_failing_parallel_branch_is_blamed_not_the_cancelled_one() {
    let root = Root::new();
    // The failing branch's step starts first and gets the lower step index; its sibling is cancelled.
    root.script(
        "main.rhai",
        r#"fn build(job) {
    parallel(#{
        a: || step("compile", || run("sh", ["-c", "sleep 0.2; echo 'main.go:1: oops' >&2; exit 1"])),
        b: || { sleep(0.05); step("install", || run("sleep", ["30"])) },
    });
}"#,
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    assert_eq!(root.run(&["run"]).status.code(), Some(1));
    let reason = root.reason("build-1.csv");
    assert!(
        reason
            .lines()
            .next()
            .unwrap()
            .contains("step `compile` failed")
            && reason.contains("main.go:1: oops"),
        "{reason}"
    );
    assert!(reason.contains("install [b]: cancelled"), "{reason}");
}
