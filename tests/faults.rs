//! Crash points and injected faults. The engine is killed (SIGKILL from inside, via a failpoint) or made to
//! fail with ENOSPC, EACCES or EIO at every hit of every point of the claim / run / complete / set-aside
//! protocol and of the release switch, restarted, and the guarantees are checked; plus a really read-only
//! state directory and a wall clock that jumps backwards. Needs `--features failpoints` (see src/faults.rs).
//!
//! One file of about 650 lines: a binary of its own (tests/integration/main.rs says why), whose tests the
//! README's guarantees cite as `faults::NAME`; modules would rename them.

// The harness is shared with the integration tests; these use only part of it.
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;

use common::Root;

const SCRIPT: &str = r#"
fn build(job) { run("mark", [`${job.trigger}:${job.line}`]); }
fn deploy(job) { run("mark", [`${job.trigger}:${job.line}`]); }
"#;

/// The triggers every scenario starts from: two good files around one with a bad line.
const TRIGGERS: [(&str, &str); 3] = [
    (
        "build-1.csv",
        "type=main,tenant=default,command=build\ntype=main,tenant=default,command=deploy\n",
    ),
    (
        "build-2.csv",
        "type=main,tenant=default,command=build\ntype=main,tenant=default,command=nosuch\n",
    ),
    ("build-3.csv", "type=main,tenant=default,command=deploy\n"),
];

/// The jobs that must run, in this order.
const EXPECTED: [&str; 3] = ["build-1.csv:1", "build-1.csv:2", "build-3.csv:1"];

fn fresh() -> Root {
    let root = Root::new();
    root.script("main.rhai", SCRIPT);
    for (name, text) in TRIGGERS {
        root.trigger(name, text);
    }
    root
}

/// Runs `t8k-engine run` with `point` armed to kill the engine at its `skip + 1`-th hit; false when the
/// point was hit fewer times (the run finished).
fn run_killed_at(root: &Root, point: &str, skip: usize) -> bool {
    let out = root
        .cmd(&["run"])
        .env("FAILPOINTS", format!("{point}={skip}*off->1*return(kill)"))
        .output()
        .unwrap();
    match out.status.signal() {
        Some(libc::SIGKILL) => true,
        other => {
            assert!(
                finished(&out),
                "{point} after {skip} hits: the run neither died nor finished ({other:?}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            false
        }
    }
}

/// A whole pass ended with its summary: exit 1 when it set the bad file aside, 0 when an earlier run had.
fn finished(out: &std::process::Output) -> bool {
    matches!(out.status.code(), Some(0 | 1))
        && String::from_utf8_lossy(&out.stderr).contains("run finished: ")
}

/// Everything an engine promises after a crash and one clean restart.
fn check_invariants(root: &Root, point: &str, skip: usize) {
    let at = format!("{point} (hit {})", skip + 1);
    let out = root.run(&["run"]);
    assert!(
        finished(&out),
        "{at}: the restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let marks = root.marks();
    // Nothing lost, nothing from the bad file, order kept: the first runs are in trigger order.
    let mut first: Vec<&str> = Vec::new();
    let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &marks {
        assert!(EXPECTED.contains(&m.as_str()), "{at}: unexpected job {m}");
        if !first.contains(&m.as_str()) {
            first.push(m);
        }
        *runs.entry(m).or_default() += 1;
    }
    assert_eq!(
        first, EXPECTED,
        "{at}: jobs lost or out of order: {marks:?}"
    );
    // At least once; a second run only for the jobs of the file the crash interrupted.
    let extra: usize = runs.values().map(|n| n - 1).sum();
    assert!(
        extra <= 2 && runs.values().all(|&n| n <= 2),
        "{at}: more re-runs than one crash explains: {marks:?}"
    );
    if runs["build-3.csv:1"] > 1 {
        assert_eq!(extra, 1, "{at}: {marks:?}");
    }
    assert!(root.inbox().is_empty(), "{at}: inbox {:?}", root.inbox());
    assert!(root.work().is_empty(), "{at}: work {:?}", root.work());
    // The bad file is set aside exactly once, with its reason, under its own name.
    assert_eq!(root.failed(), ["build-2.csv"], "{at}");
    assert!(
        root.reason("build-2.csv").contains("line 2"),
        "{at}: {}",
        root.reason("build-2.csv")
    );
    // No leftovers of torn writes.
    for dir in ["state/.t8k-engine/work", "state/failed"] {
        let stray: Vec<String> = std::fs::read_dir(root.path.join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp") || n.ends_with(".attempts"))
            .collect();
        assert!(stray.is_empty(), "{at}: leftovers in {dir}: {stray:?}");
    }
    // The history still reads, and shows every job succeeding at least once (but for the record a failing
    // journal write could not keep: that job is not run again for it, it is reported instead).
    if point.starts_with("journal.append/") {
        return;
    }
    let out = root.run(&["history", "--json", "-n", "100"]);
    assert_eq!(out.status.code(), Some(0), "{at}: history failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for job in EXPECTED {
        let (trigger, line) = job.split_once(':').unwrap();
        assert!(
            v["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["trigger"] == trigger
                    && j["line"].as_u64() == line.parse().ok()
                    && j["result"] == "succeeded"),
            "{at}: history has no success for {job}: {v:#}"
        );
    }
}

/// Kills the engine at each hit of each point in turn (a fresh root each time) and checks the invariants.
fn crash_at_every_hit(points: &[&str]) {
    let mut kills = 0;
    for point in points {
        let mut skip = 0;
        loop {
            let root = fresh();
            if !run_killed_at(&root, point, skip) {
                break;
            }
            kills += 1;
            check_invariants(&root, point, skip);
            skip += 1;
        }
        assert!(
            skip > 0,
            "{point} was never hit: is the point still in the code?"
        );
    }
    eprintln!("{kills} kills at {} points", points.len());
}

#[test]
fn a_crash_at_any_step_of_claiming_and_running_loses_nothing() {
    crash_at_every_hit(&[
        "claim.rename",
        "claim.renamed",
        "attempt.write",
        "job.started",
        "job.finished",
    ]);
}

#[test]
fn a_crash_at_any_step_of_completing_or_setting_aside_loses_nothing() {
    crash_at_every_hit(&[
        "complete.remove",
        "complete.removed",
        "set_aside.reason",
        "set_aside.reason_written",
        "set_aside.renamed",
    ]);
}

#[test]
fn a_crash_inside_any_durable_write_or_journal_record_loses_nothing() {
    crash_at_every_hit(&[
        "durable.write",
        "durable.fsync",
        "durable.rename",
        "sync_dir",
        "journal.append",
        "journal.torn",
    ]);
}

/// A root whose job switches release `v2` of `rel/app` in, then verifies it (`good`) or rolls it back.
fn release_root(good: bool) -> Root {
    let root = Root::new();
    let rel = root.path.join("rel");
    std::fs::create_dir(&rel).unwrap();
    std::fs::write(rel.join("app"), "v1").unwrap();
    std::fs::write(rel.join("v2"), "v2").unwrap();
    let verify = if good {
        r#"run("mark", ["verified"]);"#
    } else {
        r#"roll_back(app); throw "verify failed";"#
    };
    root.script(
        "main.rhai",
        &format!(
            r#"fn build(job) {{
    let app = "{rel}/app";
    run("cp", ["{rel}/v2", `${{app}}.new`]);
    switch_in(`${{app}}.new`, app);
    {verify}
}}"#,
            rel = rel.display()
        ),
    );
    root.trigger("build-1.csv", "type=main,tenant=default,command=build\n");
    root
}

fn read(root: &Root, name: &str) -> String {
    std::fs::read_to_string(root.path.join("rel").join(name))
        .unwrap_or_else(|e| format!("<{name}: {e}>"))
}

fn pending_notes(root: &Root) -> usize {
    std::fs::read_dir(root.path.join("state/.t8k-engine/releases/pending"))
        .map_or(0, |rd| rd.count())
}

#[test]
fn a_crash_during_a_switch_leaves_a_whole_release_live_and_the_restart_finishes_it() {
    for point in [
        "release.rotated",
        "release.marked",
        "release.exchanged",
        "release.kept",
    ] {
        let root = release_root(true);
        assert!(run_killed_at(&root, point, 0), "{point} was never hit");
        let live = read(&root, "app");
        assert!(live == "v1" || live == "v2", "{point}: live is {live}");
        let restart = root.run(&["run"]);
        let log = String::from_utf8_lossy(&restart.stderr);
        assert_eq!(restart.status.code(), Some(0), "{point}: {log}");
        if matches!(point, "release.exchanged" | "release.kept") {
            // The engine died with v2 live but unverified: v1 came back before the job ran again.
            assert!(
                log.contains(
                    "before the release switched in was verified; the previous release is back"
                ),
                "{point}: {log}"
            );
        }
        assert_eq!(read(&root, "app"), "v2", "{point}");
        assert_eq!(
            read(&root, "app.prev"),
            "v1",
            "{point}: v1 kept for rollback"
        );
        assert_eq!(root.marks(), ["verified"], "{point}");
        assert_eq!(pending_notes(&root), 0, "{point}");
    }
}

#[test]
fn a_crash_during_a_rollback_still_leaves_the_previous_release_live() {
    for point in ["rollback.marked", "rollback.exchanged", "rollback.kept"] {
        let root = release_root(false);
        assert!(run_killed_at(&root, point, 0), "{point} was never hit");
        let live = read(&root, "app");
        assert!(live == "v1" || live == "v2", "{point}: live is {live}");
        let restart = root.run(&["run"]);
        let log = String::from_utf8_lossy(&restart.stderr);
        assert_eq!(restart.status.code(), Some(1), "{point}: {log}");
        assert!(log.contains("finished a rollback"), "{point}: {log}");
        assert_eq!(read(&root, "app"), "v1", "{point}: the good release serves");
        assert_eq!(read(&root, "app.failed"), "v2", "{point}");
        assert_eq!(root.failed(), ["build-1.csv"], "{point}");
        assert_eq!(pending_notes(&root), 0, "{point}");
    }
}

/// Makes the `skip + 1`-th hit of `point` fail with `errno`; whether it was hit, with the run's stderr.
fn run_failing_at(root: &Root, point: &str, skip: usize, errno: &str) -> (bool, String) {
    let out = root
        .cmd(&["run"])
        .env(
            "FAILPOINTS",
            format!("{point}={skip}*off->1*return({errno})"),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.code().is_some(),
        "{point}/{errno}: the engine crashed on an I/O error: {stderr}"
    );
    (stderr.contains(&format!("(injected at {point})")), stderr)
}

/// The text of an errno as the engine reports it.
fn describe(errno: &str) -> &'static str {
    match errno {
        "enospc" => "No space left on device",
        "eacces" => "Permission denied",
        _ => "Input/output error",
    }
}

#[test]
fn an_io_error_at_any_step_is_reported_and_loses_nothing() {
    let mut faults = 0;
    for point in [
        "claim.rename",
        "complete.remove",
        "durable.write",
        "durable.fsync",
        "durable.rename",
        "sync_dir",
        "journal.append",
    ] {
        for errno in ["enospc", "eacces", "eio"] {
            let mut skip = 0;
            loop {
                let root = fresh();
                let (hit, stderr) = run_failing_at(&root, point, skip, errno);
                if !hit {
                    assert!(finished_text(&stderr), "{point}/{errno}: {stderr}");
                    break;
                }
                faults += 1;
                // Reported: the error, and the file or directory it happened to.
                let line = stderr
                    .lines()
                    .find(|l| l.contains(&format!("(injected at {point})")))
                    .unwrap();
                assert!(
                    line.contains(describe(errno)) && line.contains(&*root.path.to_string_lossy()),
                    "{point}/{errno}: the report names neither the error nor the path: {line}"
                );
                if point == "journal.append" {
                    assert!(line.contains("in the history"), "{line}");
                }
                check_invariants(&root, &format!("{point}/{errno}"), skip);
                skip += 1;
            }
            assert!(skip > 0, "{point} was never hit");
        }
    }
    eprintln!("{faults} injected faults");
}

fn finished_text(stderr: &str) -> bool {
    stderr.contains("run finished: ")
}

/// Seconds since midnight of a build.log line's RFC 3339 timestamp.
fn logged_at(line: &str) -> f64 {
    let time = line.split_whitespace().next().unwrap();
    let hms = &time[11..time.len() - 1];
    let mut parts = hms.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

#[test]
fn the_daemon_retries_a_claimed_trigger_after_an_io_error_later_and_in_order() {
    let root = Root::new();
    root.script("main.rhai", SCRIPT);
    root.trigger("build-1.csv", "type=main,tenant=default,command=build\n");
    root.trigger("build-2.csv", "type=main,tenant=default,command=deploy\n");
    let _daemon = common::Daemon(
        root.cmd(&["watch"])
            .env("FAILPOINTS", "complete.remove=1*return(eio)")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::wait_until(
        std::time::Duration::from_secs(30),
        "both triggers to finish",
        || root.marks().len() == 3 && root.work().is_empty() && root.inbox().is_empty(),
    );
    // build-1's job ran, removing it failed, it ran again; build-2 waited for it.
    assert_eq!(
        root.marks(),
        ["build-1.csv:1", "build-1.csv:1", "build-2.csv:1"]
    );
    let log = root.log();
    let failure = log
        .lines()
        .find(|l| l.contains("runs again in 5s, before any later trigger"))
        .unwrap_or_else(|| panic!("no retry report: {log}"));
    assert!(failure.contains("Input/output error"), "{failure}");
    let rerun = log
        .lines()
        .find(|l| l.contains("build-1.csv line 1, attempt 2"))
        .unwrap_or_else(|| panic!("no second attempt: {log}"));
    let waited = logged_at(rerun) - logged_at(failure);
    assert!(
        waited >= 4.5,
        "retried after {waited:.2}s: the daemon must back off"
    );
}

#[test]
fn a_persistent_io_error_makes_the_daemon_back_off_not_spin() {
    let root = Root::new();
    root.script("main.rhai", SCRIPT);
    let _daemon = common::Daemon(
        root.cmd(&["watch"])
            .env("FAILPOINTS", "claim.rename=return(enospc)")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let reports = || -> Vec<String> {
        root.log()
            .lines()
            .filter(|l| l.contains("No space left on device"))
            .map(str::to_string)
            .collect()
    };
    common::wait_until(
        std::time::Duration::from_secs(20),
        "the daemon to start",
        || root.log().contains("watching"),
    );
    root.trigger("build-1.csv", "type=main,tenant=default,command=build\n");
    common::wait_until(
        std::time::Duration::from_secs(30),
        "two reports of the failing claim",
        || reports().len() >= 2,
    );
    let r = reports();
    assert!(r[0].contains("trying again in 5s"), "{}", r[0]);
    let gap = logged_at(&r[1]) - logged_at(&r[0]);
    assert!(gap >= 4.5, "the claim was retried after {gap:.2}s");
    assert_eq!(root.inbox(), ["build-1.csv"], "the trigger is kept");
    assert!(root.marks().is_empty());
}

/// The engine run as `nobody` (root ignores file modes) on a root it owns.
fn as_nobody(root: &Root, args: &[&str]) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let status = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&root.path)
        .status()
        .unwrap();
    assert!(status.success());
    let mut cmd = root.cmd(args);
    cmd.uid(65534).gid(65534).env("HOME", &root.path);
    cmd
}

fn chmod(path: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("chmod")
        .args(args)
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_read_only_state_directory_is_reported_and_the_trigger_kept() {
    let root = Root::new();
    root.script("main.rhai", SCRIPT);
    let first = as_nobody(&root, &["run"]).output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    root.trigger("build-1.csv", "type=main,tenant=default,command=build\n");
    let state = root.path.join("state");
    chmod(&state, &["-R", "a-w"]);
    let out = as_nobody(&root, &["run"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("Permission denied")
            && stderr.contains(&*state.to_string_lossy())
            && stderr.contains("must be writable by the engine's user"),
        "the report names neither the error nor the directory: {stderr}"
    );
    assert_eq!(root.inbox(), ["build-1.csv"]);
    assert!(root.marks().is_empty());
    chmod(&state, &["-R", "u+w"]);
    let out = as_nobody(&root, &["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(root.marks(), ["build-1.csv:1"]);
}

#[test]
fn a_read_only_inbox_holds_the_daemon_back_until_it_is_writable_again() {
    let root = Root::new();
    root.script("main.rhai", SCRIPT);
    let state = root.path.join("state");
    let _daemon = common::Daemon(
        as_nobody(&root, &["watch"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::wait_until(
        std::time::Duration::from_secs(20),
        "the daemon to start",
        || root.log().contains("watching"),
    );
    // Root writes the trigger; the engine's user may no longer rename it out of the inbox.
    chmod(&state, &["a-w"]);
    root.trigger("build-1.csv", "type=main,tenant=default,command=build\n");
    common::wait_until(
        std::time::Duration::from_secs(20),
        "the failed claim to be reported",
        || root.log().contains("Permission denied"),
    );
    let report = root
        .log()
        .lines()
        .find(|l| l.contains("Permission denied"))
        .unwrap()
        .to_string();
    assert!(
        report.contains("cannot claim") && report.contains("trying again in 5s"),
        "{report}"
    );
    assert_eq!(root.inbox(), ["build-1.csv"], "the trigger is kept");
    chmod(&state, &["u+w"]);
    common::wait_until(
        std::time::Duration::from_secs(20),
        "the trigger to run once the inbox is writable",
        || root.marks() == ["build-1.csv:1"],
    );
}

/// libfaketime, from Debian's `faketime` (installed by .ci/install.sh).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

#[test]
fn a_wall_clock_jumping_backwards_delays_nothing_and_keeps_history_in_order() {
    assert!(
        std::path::Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: run bash .ci/install.sh"
    );
    // The settle check is the one that reads the wall clock (file ages); the lease check does not.
    let root = Root::with_config("writer_check = \"settle\"\nsettle_ms = 500\n");
    root.script("main.rhai", SCRIPT);
    let clock = root.path.join("clock");
    std::fs::write(&clock, "+0\n").unwrap();
    let _daemon = common::Daemon(
        root.cmd(&["watch"])
            .env("LD_PRELOAD", FAKETIME)
            .env("FAKETIME_TIMESTAMP_FILE", &clock)
            .env("FAKETIME_NO_CACHE", "1")
            // A real clock jump moves the wall clock only; timeouts run on the monotonic one.
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    root.trigger("build-1.csv", "type=main,tenant=default,command=build\n");
    common::wait_until(
        std::time::Duration::from_secs(20),
        "the first trigger",
        || root.marks().len() == 1,
    );
    // The engine's clock goes back an hour: the next trigger's mtime (the kernel's real time) lies an
    // hour in its future.
    std::fs::write(&clock, "-1h\n").unwrap();
    root.trigger("build-2.csv", "type=main,tenant=default,command=deploy\n");
    common::wait_until(
        std::time::Duration::from_secs(20),
        "the trigger written before the jump to run (not wait an hour or go stale)",
        || root.marks().len() == 2,
    );
    assert_eq!(root.marks(), ["build-1.csv:1", "build-2.csv:1"]);
    assert!(root.failed().is_empty(), "{:?}", root.failed());
    let out = root.run(&["history", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let order: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["build-2.csv", "build-1.csv"],
        "newest first by the journal's order, not by the (jumped) timestamps"
    );
}

#[test]
fn a_crash_during_retry_leaves_the_trigger_in_the_inbox_and_its_name_free() {
    let root = fresh();
    assert!(finished(&root.run(&["run"])));
    assert_eq!(root.failed(), ["build-2.csv"]);
    let out = root
        .cmd(&["retry", "build-2.csv"])
        .env("FAILPOINTS", "retry.renamed=return(kill)")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    // Killed between moving it back and removing its reason: the trigger is in the inbox, the reason stray.
    assert_eq!(root.inbox(), ["build-2.csv"]);
    assert!(root.failed().is_empty());
    // Still bad, it is set aside again under its own name, the stray reason replaced.
    assert!(finished(&root.run(&["run"])));
    assert_eq!(root.failed(), ["build-2.csv"]);
    assert!(root.reason("build-2.csv").contains("retry build-2.csv"));
}

#[test]
fn trigger_wait_sees_a_job_that_ends_before_it_first_looks() {
    let root = Root::new();
    root.script("main.rhai", SCRIPT);
    let _daemon = root.daemon(&[]);
    root.wait_watching();
    // The daemon runs the whole job while `trigger --wait` sleeps between dropping and following.
    let mut child = root
        .cmd(&["trigger", "main", "--wait"])
        .env("FAILPOINTS", "trigger.dropped=sleep(1500)")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("trigger --wait never saw the job that ran while it slept");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(root.marks().len(), 1, "{}", common::text(&out));
}
