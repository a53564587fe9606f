//! `t8k-engine history` and `status` over real runs, notification hooks and metrics, the journal's
//! durability, and the generated completions and man page; following a job (`trigger --wait`, `cancel`,
//! `logs -f`) is in `follow`.

mod follow;

use std::time::Duration;

use crate::common::{Root, text, wait_until};

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
