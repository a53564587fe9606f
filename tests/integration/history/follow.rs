//! Following a job from the command line: `trigger --wait` (with and without `--timeout`), `cancel` and
//! `logs -f`, each over real runs of the daemon.

use std::time::Duration;

use crate::common::{OutputWith, Root, text, wait_until};

#[test]
fn cancel_stops_the_running_job_and_sets_its_trigger_aside() {
    let root = Root::new();
    let pids = root.path.join("pids");
    root.script(
        "main.rhai",
        &format!(
            r#"fn build(job) {{ step("forever", || run("sh", ["-c", "echo $$ >> {}; while :; do sleep 0.05; done"])); }}
fn quick(job) {{ run("mark", ["after the cancel"]); }}
"#,
            pids.display()
        ),
    );
    let daemon = root.daemon(&[]);
    root.wait_watching();
    assert!(String::from_utf8_lossy(&root.run(&["cancel"]).stdout).contains("running no job"));
    root.trigger("build-1.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(20), "the step to start", || {
        std::fs::read_to_string(&pids).is_ok_and(|s| !s.is_empty())
    });
    let step: i32 = std::fs::read_to_string(&pids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = root.run(&["cancel"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cancelled: its processes are stopped"),
        "{}",
        text(&out)
    );
    assert!(!crate::common::alive(step), "the step's process is gone");
    // `cancel` returns once the processes are stopped; the daemon sets the trigger aside right after.
    wait_until(
        Duration::from_secs(20),
        "the trigger to be set aside",
        || root.failed() == ["build-1.csv"],
    );
    assert!(
        root.reason("build-1.csv")
            .starts_with("build-1.csv line 1: cancelled (cancelled by `t8k-engine cancel`)")
    );
    // The daemon goes on with the next trigger.
    let next = root
        .cmd(&["trigger", "main", "--command", "quick", "--wait"])
        .output()
        .unwrap();
    assert_eq!(next.status.code(), Some(0), "{}", text(&next));
    assert_eq!(root.marks(), ["after the cancel"]);
    drop(daemon);
}

#[test]
fn trigger_wait_follows_the_job_and_exits_with_its_result() {
    let root = Root::new();
    root.script(
        "main.rhai",
        "fn build(job) { step(\"compile\", || run(\"true\", [])); }\nfn broken(job) { step(\"compile\", || run(\"sh\", [\"-c\", \"echo 'main.go:1: oops' >&2; exit 1\"])); }\n",
    );
    let _daemon = root.daemon(&[]);
    root.wait_watching();
    let ok = root.run(&["trigger", "main", "--wait"]);
    let s = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(
        s.contains(" started: main build")
            && s.contains("  step compile")
            && s.contains(" succeeded in "),
        "{s}"
    );

    // On a terminal the job is a spinner that ends in a tick.
    let bin = env!("CARGO_BIN_EXE_t8k-engine");
    let tty = root.cmd(&[]).env("TERM", "xterm").output_with_program(
        "script",
        &["-qec", &format!("{bin} trigger main --wait"), "/dev/null"],
    );
    let screen = String::from_utf8_lossy(&tty.stdout).into_owned();
    assert_eq!(tty.status.code(), Some(0), "{screen}");
    assert!(
        screen.contains("✓ main build") && screen.contains(" succeeded in "),
        "{screen}"
    );

    let bad = root.run(&["trigger", "main", "--command", "broken", "--wait"]);
    let s = String::from_utf8_lossy(&bad.stdout).into_owned();
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        s.contains(" failed in ") && s.contains("main.go:1: oops"),
        "{s}"
    );

    // retry takes a job id from history as well as a file name.
    let history: serde_json::Value =
        serde_json::from_slice(&root.run(&["history", "--json", "--failed"]).stdout).unwrap();
    let job_id = history["jobs"][0]["job_id"].as_str().unwrap().to_string();
    let retried = root.run(&["retry", &job_id]);
    assert_eq!(retried.status.code(), Some(0), "{}", text(&retried));
    wait_until(
        Duration::from_secs(20),
        "the retried trigger to fail again",
        || root.failed().len() == 1 && root.inbox().is_empty() && root.work().is_empty(),
    );
}

#[test]
fn trigger_wait_timeout_stops_following_and_leaves_the_job_to_run() {
    let root = Root::new();
    let gate = root.path.join("gate");
    root.script(
        "main.rhai",
        &format!(
            "fn build(job) {{ step(\"compile\", || run(\"sh\", [\"-c\", \"until [ -e {0} ]; do sleep 0.05; done; rm {0}; mark built\"])); }}\n",
            gate.display()
        ),
    );
    // Usage: --timeout needs --wait, and a positive duration.
    for args in [
        &["trigger", "main", "--timeout", "5s"][..],
        &["trigger", "main", "--wait", "--timeout", "0"],
        &["trigger", "main", "--wait", "--timeout", "soon"],
        &["rollback", "main", "--no-wait", "--timeout", "5s"],
    ] {
        let out = root.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    assert!(root.inbox().is_empty(), "a refused command drops nothing");

    // No engine runs: the follower gives up after the timeout, the trigger stays in the inbox.
    let out = root.run(&["trigger", "main", "--wait", "--timeout", "1s"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(124), "{}", text(&out));
    assert!(
        err.contains("--timeout 1s ran out:")
            && err.contains("is still waiting in the inbox and no engine is running to pick it up")
            && err.contains("Nothing was cancelled"),
        "{err}"
    );
    assert_eq!(root.inbox().len(), 1, "the trigger waits, not lost");

    // The engine runs it once the gate opens (each job closes it behind itself).
    let _daemon = root.daemon(&[]);
    root.wait_watching();
    std::fs::write(&gate, "").unwrap();
    wait_until(Duration::from_secs(20), "the first job to run", || {
        root.marks() == ["built"] && root.inbox().is_empty() && root.work().is_empty()
    });
    // A follower that gives up mid-job says which job runs, and the job goes on.
    let out = root.run(&["trigger", "main", "--wait", "--timeout", "1.5s"]);
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(out.status.code(), Some(124), "{}", text(&out));
    assert!(stdout.contains(" started: main build"), "{stdout}");
    assert!(
        err.contains("--timeout 1.5s ran out: job ") && err.contains(" is running"),
        "{err}"
    );
    std::fs::write(&gate, "").unwrap();
    wait_until(Duration::from_secs(20), "the second job to run", || {
        root.marks().len() == 2 && root.work().is_empty()
    });
    let history: serde_json::Value =
        serde_json::from_slice(&root.run(&["history", "--json"]).stdout).unwrap();
    assert_eq!(history["jobs"][0]["result"], "succeeded", "{history}");
}

#[test]
fn logs_show_a_jobs_output_by_step_and_follow_a_running_job() {
    let root = Root::with_config("job_log_max_bytes = 2000\nkeep_job_logs = 3\n");
    let release = root.path.join("release");
    root.script(
        "main.rhai",
        &format!(
            r#"fn build(job) {{
    step("compile", || run("sh", ["-c", "echo compiling one; echo compiling two"]));
    step("wait", || run("sh", ["-c", "echo waiting; while [ ! -f {0} ]; do sleep 0.05; done; echo released"]));
}}
fn chatty(job) {{ run("seq", ["1", "5000"]); }}
"#,
            release.display()
        ),
    );
    let _daemon = root.daemon(&[]);
    root.wait_watching();
    root.trigger("build-1.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(20), "the wait step", || {
        root.log().contains("step `wait` started")
    });
    let history: serde_json::Value =
        serde_json::from_slice(&root.run(&["history", "--json"]).stdout).unwrap();
    let id = history["jobs"][0]["job_id"].as_str().unwrap().to_string();

    let mut follower = root
        .cmd(&["logs", &id, "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("[wait] waiting")) {
        seen.push(
            rx.recv_timeout(Duration::from_secs(10))
                .expect("the running job's lines while it runs"),
        );
    }
    std::fs::write(&release, "").unwrap();
    assert!(
        follower.wait().unwrap().success(),
        "--follow ends with the job"
    );
    // The follower has exited; its last lines may still be in the pipe: read to the end.
    seen.extend(rx.iter());
    let all = seen.join("\n");
    assert!(
        all.contains("[compile] compiling one") && all.contains("[compile] compiling two"),
        "{all}"
    );
    assert!(
        all.contains("[wait] released"),
        "the last lines arrive before --follow exits: {all}"
    );

    // A chatty job's log is cut at job_log_max_bytes; only the newest keep_job_logs logs stay.
    for _ in 0..3 {
        let out = root.run(&["trigger", "main", "--command", "chatty", "--wait"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let dir = root.path.join("log/jobs");
    let mut logs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    logs.sort();
    assert_eq!(logs.len(), 3, "{logs:?}");
    let last = std::fs::read_to_string(logs.last().unwrap()).unwrap();
    assert!(
        last.len() <= 2000 && last.contains("log cut at 2000 bytes"),
        "{} bytes",
        last.len()
    );
    assert!(
        !dir.join(format!("{id}.log")).exists(),
        "the oldest log was pruned"
    );

    assert_eq!(
        root.run(&["logs", "../../etc/passwd"]).status.code(),
        Some(2)
    );
    assert_eq!(
        root.run(&["logs", "01ARZ3NDEKTSV4RRFFQ69G5FAV"])
            .status
            .code(),
        Some(2)
    );
}
