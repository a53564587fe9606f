//! `t8k-engine history` over real runs, and the generated completions and man page.

use std::time::Duration;

use crate::common::{OutputWith, Root, text, wait_until};

#[test]
fn history_shows_results_steps_and_reruns_newest_first() {
    let root = Root::new();
    let release = root.path.join("release");
    root.script(
        "main.rhai",
        &format!(
            r#"
fn build(job) {{ step("compile", || run("true", [])); }}
fn broken(job) {{ step("compile", || run("sh", ["-c", "echo 'main.go:1: oops' >&2; exit 2"])); }}
fn unhealthy(job) {{ step("check", || throw "rolled back: health check saw status 500"); }}
fn slow(job) {{ step("wait", || run("sh", ["-c", "while [ ! -f {0} ]; do sleep 0.05; done"])); }}
"#,
            release.display()
        ),
    );
    root.script("multi.rhai", "fn build(job) { run(\"true\", []); }\n");
    root.trigger("build-1.csv", "type=main,command=build\n");
    root.trigger("build-2.csv", "type=main,command=broken\n");
    root.trigger(
        "build-3.csv",
        "type=main,command=unhealthy\ntype=multi,tenant=t,command=build\n",
    );
    assert_eq!(root.run(&["run"]).status.code(), Some(1));

    // A job interrupted by kill -9, then run again.
    root.trigger("build-4.csv", "type=main,command=slow\n");
    let mut engine = root.spawn(&["run"]);
    wait_until(Duration::from_secs(20), "the slow job to start", || {
        root.log().contains("step `wait` started")
    });
    engine.kill().unwrap();
    engine.wait().unwrap();
    std::fs::write(&release, "").unwrap();
    assert_eq!(root.run(&["run"]).status.code(), Some(0));

    let out = root.run(&["history", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    let summary: Vec<(&str, &str)> = jobs
        .iter()
        .map(|j| {
            (
                j["trigger"].as_str().unwrap(),
                j["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("build-4.csv", "succeeded"),
            ("build-4.csv", "interrupted_rerun"),
            ("build-3.csv", "rolled_back"),
            ("build-2.csv", "failed"),
            ("build-1.csv", "succeeded"),
        ],
        "newest first; the multi job after the rollback never ran"
    );
    assert_eq!(jobs[0]["attempt"], 2);
    assert_eq!(jobs[3]["failed_step"], "compile");
    assert!(
        jobs[3]["reason"]
            .as_str()
            .unwrap()
            .contains("main.go:1: oops"),
        "{}",
        jobs[3]
    );
    let step = &jobs[4]["steps"][0];
    assert_eq!(
        (step["name"].as_str(), step["ok"].as_bool()),
        (Some("compile"), Some(true))
    );
    assert!(
        step["wall_ms"].is_u64() && step["max_rss_kib"].as_u64().unwrap() > 0,
        "{step}"
    );

    let text_out = String::from_utf8_lossy(&root.run(&["history", "--failed"]).stdout).into_owned();
    assert!(
        text_out.contains("failed at step `compile`")
            && text_out.contains("rolled back (step `check`)"),
        "{text_out}"
    );
    assert!(
        text_out.contains("interrupted, re-run") && !text_out.contains("succeeded"),
        "{text_out}"
    );
    let one =
        String::from_utf8_lossy(&root.run(&["history", "-n", "1", "--target", "main"]).stdout)
            .into_owned();
    assert_eq!(
        one.lines().filter(|l| !l.starts_with(' ')).count(),
        1,
        "{one}"
    );
    assert!(one.contains("build-4.csv:1 (attempt 2)"), "{one}");
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let root = Root::new();
    let bash = root.run(&["completions", "bash"]);
    assert_eq!(bash.status.code(), Some(0));
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(
        script.contains("complete -F _t8k__engine")
            && script.contains("history")
            && script.contains("--no-wait"),
        "{script}"
    );
    let man = root.run(&["man"]);
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH t8k-engine"),
        "{page}"
    );
    assert!(page.contains("watch"), "every subcommand is listed");
    assert_eq!(root.run(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn status_shows_the_engine_the_running_step_the_queue_and_the_releases() {
    let root = Root::new();
    let release = root.path.join("release");
    root.script(
        "main.rhai",
        &format!(
            r#"fn build(job) {{
    step("block", || run("sh", ["-c", "while [ ! -f {0} ]; do sleep 0.05; done"]));
    record_release(job, #{{ backend: "abc1234567890", frontend: "def4567890123" }});
}}
fn broken(job) {{ step("compile", || run("false", [])); }}
"#,
            release.display()
        ),
    );
    root.script("multi.rhai", "fn build(job) { }\n");
    root.trigger("build-0.csv", "type=main,command=broken\n");
    root.trigger("build-1.csv", "type=main,command=build\n");
    let mut daemon = root.daemon(&[]);
    wait_until(Duration::from_secs(20), "the blocking step", || {
        root.log().contains("step `block` started")
    });
    root.trigger("build-2.csv", "type=main,bogus=1\n");
    let mut writer = std::fs::File::create(root.path.join("state/build-3.csv")).unwrap();
    std::io::Write::write_all(&mut writer, b"type=main,").unwrap();
    root.trigger("build-4.csv", "type=multi,tenant=t,command=build\n");

    let out = root.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        s.contains(&format!("engine: running (pid {}", daemon.id())),
        "{s}"
    );
    assert!(
        s.contains("running: main build (build-1.csv:1)") && s.contains("  step: block, "),
        "{s}"
    );
    assert!(
        s.contains("build-2.csv: invalid, will be set aside: line 1: unknown key `bogus`"),
        "{s}"
    );
    assert!(s.contains("build-3.csv: being written"), "{s}");
    assert!(
        s.contains("build-4.csv: ready\n    type=multi,tenant=t,command=build"),
        "{s}"
    );
    assert!(
        s.contains("build-0.csv: build-0.csv line 1 (main broken): step `compile` failed"),
        "{s}"
    );

    let json: serde_json::Value =
        serde_json::from_slice(&root.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json["running"]["step"][0], "block");
    assert_eq!(json["queue"].as_array().unwrap().len(), 3);
    assert_eq!(json["targets"][0]["target"], "main");
    assert!(
        json["targets"][0]["last_failure"][2]
            .as_str()
            .unwrap()
            .contains("step `compile` failed"),
        "{json}"
    );

    drop(writer);
    std::fs::remove_file(root.path.join("state/build-2.csv")).unwrap();
    std::fs::remove_file(root.path.join("state/build-3.csv")).unwrap();
    std::fs::write(&release, "").unwrap();
    wait_until(Duration::from_secs(20), "the queue to drain", || {
        root.inbox().is_empty() && root.log().contains("build-4.csv: all 1 job(s) succeeded")
    });
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    root.trigger("build-5.csv", "type=main,command=build\n");
    let s = String::from_utf8_lossy(&root.run(&["status"]).stdout).into_owned();
    assert!(
        s.contains("engine: not running") && s.contains("idle: no engine is running"),
        "{s}"
    );
    assert!(
        s.contains("main: live backend abc1234567 frontend def4567890, released "),
        "{s}"
    );
    std::fs::create_dir_all(root.path.join("sites/acme")).unwrap();
    std::fs::create_dir_all(root.path.join("t8k-go-server/config/blue")).unwrap();
    let s = String::from_utf8_lossy(&root.run(&["status"]).stdout).into_owned();
    // A multi target shares the main install's files, so its live release is main's.
    assert!(
        s.contains("dedicated/acme: no release recorded")
            && s.contains("multi/blue: live backend abc1234567")
            && s.contains(", release 1 of main"),
        "{s}"
    );
}

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

/// Collects the bodies POSTed to a loopback server, answering 200.
fn webhook() -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read headers, then as much body as Content-Length says.
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let text = String::from_utf8_lossy(&buf).into_owned();
            let head_end = text.find("\r\n\r\n").map_or(text.len(), |i| i + 4);
            let len = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let _ = tx.send(String::from_utf8_lossy(&buf[head_end.min(buf.len())..]).into_owned());
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, rx)
}

#[test]
fn notification_hooks_post_to_a_webhook_and_metrics_parse() {
    let (url, posted) = webhook();
    let down = format!(
        "http://127.0.0.1:{}/hook",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let root = Root::new();
    root.script(
        "main.rhai",
        &format!(
            r#"
fn build(job) {{ step("compile", || run("true", [])); }}
fn broken(job) {{ step("compile", || run("sh", ["-c", "echo 'main.go:1: oops' >&2; exit 1"])); }}
fn on_failure(job, failure) {{ http_post("{url}", #{{ trigger: failure.trigger, step: failure.step, tail: failure.tail }}); }}
fn on_success(job, release) {{ http_post("{url}", `ok ${{job.trigger}}`); }}
fn on_recovery(job) {{ http_post("{url}", "recovered"); }}
"#
        ),
    );
    root.script("multi.rhai", &format!("fn build(job) {{ }}\nfn on_success(job, release) {{ http_post(\"{down}\", \"nobody listens\"); }}\n"));
    root.trigger("build-1.csv", "type=main,command=broken\n");
    root.trigger("build-2.csv", "type=main,command=build\n");
    root.trigger("build-3.csv", "type=multi,tenant=t,command=build\n");
    let out = root.run(&["run"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "only build-1 fails: {}",
        text(&out)
    );
    let got: Vec<String> = posted.try_iter().collect();
    assert_eq!(got.len(), 3, "{got:?}");
    let failure: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(
        (failure["trigger"].as_str(), failure["step"].as_str()),
        (Some("build-1.csv"), Some("compile"))
    );
    assert!(
        failure["tail"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "main.go:1: oops"),
        "{failure}"
    );
    assert_eq!(got[1], "ok build-2.csv");
    assert_eq!(got[2], "recovered", "the first success after a failure");
    assert!(
        root.log()
            .contains("notification hook on_success of multi.rhai failed"),
        "{}",
        root.log()
    );
    assert!(
        root.failed() == ["build-1.csv"],
        "a failing notification never fails the job"
    );

    let prom = root.path.join("log/t8k-engine.prom");
    let parsed = std::process::Command::new("python3")
        .args(["-c", "import sys, json\nfrom prometheus_client.parser import text_string_to_metric_families as p\nprint(json.dumps({s.name + json.dumps(s.labels, sort_keys=True): s.value for f in p(open(sys.argv[1]).read()) for s in f.samples}))"])
        .arg(&prom)
        .output()
        .expect("python3 with prometheus_client (.ci/install.sh installs it)");
    assert!(
        parsed.status.success(),
        "the metrics file parses: {}",
        text(&parsed)
    );
    let m: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    assert_eq!(
        m[r#"t8k_jobs_total{"result": "failed", "type": "main"}"#], 1.0,
        "{m}"
    );
    assert_eq!(
        m[r#"t8k_jobs_total{"result": "succeeded", "type": "main"}"#], 1.0,
        "{m}"
    );
    assert_eq!(m[r#"t8k_set_aside_triggers{}"#], 1.0, "{m}");
    assert_eq!(m[r#"t8k_queue_depth{}"#], 0.0, "{m}");
    assert!(
        m[r#"t8k_last_success_timestamp_seconds{"target": "main"}"#]
            .as_f64()
            .unwrap()
            > 1.7e9,
        "{m}"
    );
    assert!(
        m[r#"t8k_step_duration_seconds{"step": "compile", "target": "main"}"#].is_f64(),
        "{m}"
    );
}

#[test]
fn history_records_triggers_superseded_by_coalescing() {
    let root = Root::new();
    let release = root.path.join("release");
    root.script(
        "main.rhai",
        &format!("fn build(job) {{ }}\nfn hold(job) {{ run(\"sh\", [\"-c\", \"while [ ! -f {} ]; do sleep 0.05; done\"]); }}\n", release.display()),
    );
    let _daemon = root.daemon(&[]);
    root.wait_watching();
    root.trigger("build-1.csv", "type=main,command=hold\n");
    wait_until(Duration::from_secs(20), "the holding job", || {
        root.work() == ["build-1.csv"]
    });
    root.trigger("build-2.csv", "type=main,command=build\n");
    root.trigger("build-3.csv", "type=main,command=build\n");
    std::fs::write(&release, "").unwrap();
    wait_until(Duration::from_secs(20), "the queue to drain", || {
        root.inbox().is_empty() && root.work().is_empty()
    });
    let json: serde_json::Value =
        serde_json::from_slice(&root.run(&["history", "--json"]).stdout).unwrap();
    let superseded = json["superseded"].as_array().unwrap();
    assert_eq!(superseded.len(), 1, "{json}");
    assert_eq!(
        (
            superseded[0]["trigger"].as_str(),
            superseded[0]["by"].as_str()
        ),
        (Some("build-2.csv"), Some("build-3.csv"))
    );
    let triggers: Vec<&str> = json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(
        triggers,
        ["build-3.csv", "build-1.csv"],
        "the superseded trigger ran no job"
    );
    let text_out = String::from_utf8_lossy(&root.run(&["history"]).stdout).into_owned();
    assert!(
        text_out.contains("superseded: build-2.csv by build-3.csv"),
        "{text_out}"
    );
}

#[test]
fn the_journal_survives_kill_9_while_the_engine_writes_it() {
    let root = Root::new();
    root.script(
        "multi.rhai",
        "fn build(job) { step(\"a\", || 1); step(\"b\", || 2); }\n",
    );
    for i in 0..150 {
        root.trigger(
            &format!("build-{i:03}.csv"),
            &format!("type=multi,tenant=t{i},command=build\n"),
        );
    }
    let mut daemon = root.daemon(&[]);
    // Kill it in the middle of the stream of journal writes.
    wait_until(Duration::from_secs(30), "some jobs to be journaled", || {
        std::fs::read_to_string(root.path.join("state/.t8k-engine/history/journal.jsonl"))
            .is_ok_and(|j| j.lines().count() > 60)
    });
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let out = root.run(&["history", "--json", "-n", "1000"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!before["jobs"].as_array().unwrap().is_empty());

    let _daemon = root.daemon(&[]);
    wait_until(Duration::from_secs(60), "every trigger to be done", || {
        root.inbox().is_empty() && root.work().is_empty()
    });
    let after: serde_json::Value =
        serde_json::from_slice(&root.run(&["history", "--json", "-n", "1000"]).stdout).unwrap();
    let jobs = after["jobs"].as_array().unwrap();
    let succeeded: std::collections::BTreeSet<&str> = jobs
        .iter()
        .filter(|j| j["result"] == "succeeded")
        .map(|j| j["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(
        succeeded.len(),
        150,
        "every trigger has a successful job in the history"
    );
    assert!(
        jobs.iter()
            .all(|j| j["result"] == "succeeded" || j["result"] == "interrupted_rerun"),
        "{after}"
    );
    assert!(root.failed().is_empty());
}

/// A journal written by t8k-engine 0.1.0 (before `JobResult` and the history types moved) and what that
/// engine's `history` printed from it, checked in: every later engine must read it the same way.
#[test]
fn a_journal_written_by_an_earlier_engine_reads_the_same() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal");
    let root = Root::new();
    let history = root.path.join("state/.t8k-engine/history");
    std::fs::create_dir_all(&history).unwrap();
    std::fs::copy(fixture.join("journal.jsonl"), history.join("journal.jsonl")).unwrap();
    let expect = |name: &str| std::fs::read_to_string(fixture.join(name)).unwrap();
    let out = root.run(&["history", "-n", "100", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: serde_json::Value = serde_json::from_str(&expect("history.json")).unwrap();
    assert_eq!(got, want);
    for (args, file) in [
        (&["history", "-n", "100"][..], "history.txt"),
        (
            &["history", "-n", "100", "--failed"][..],
            "history-failed.txt",
        ),
    ] {
        let out = root.run(args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expect(file),
            "{args:?}"
        );
    }
}

/// Scripts say they rolled back by throwing `#{ rolled_back: true, reason }`; the reason reads as the old
/// `rolled back: …` string did, and a step's failure inside still names the step.
#[test]
fn a_thrown_rollback_map_is_recorded_as_rolled_back() {
    let root = Root::new();
    root.script(
        "main.rhai",
        r#"
fn build(job) { step("check", || throw #{ rolled_back: true, reason: "health check saw status 500" }); }
fn plain(job) { throw #{ code: 500 }; }
"#,
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    root.trigger("build-2.csv", "type=main,command=plain\n");
    assert_eq!(root.run(&["run"]).status.code(), Some(1));
    let out = root.run(&["history", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(
        (jobs[1]["result"].as_str(), jobs[1]["failed_step"].as_str()),
        (Some("rolled_back"), Some("check")),
        "{}",
        jobs[1]
    );
    let reason = jobs[1]["reason"].as_str().unwrap();
    assert!(
        reason.contains(": rolled back: health check saw status 500; fix the cause"),
        "{reason}"
    );
    assert_eq!(
        jobs[0]["result"], "failed",
        "a map without rolled_back is a failure"
    );
    assert!(
        root.reason("build-1.csv")
            .contains("rolled back: health check saw status 500"),
        "{}",
        root.reason("build-1.csv")
    );
}
