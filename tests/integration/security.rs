//! Security properties through the real binary: credentials never reach a log, the journal, a reason or
//! a hook; the host API refuses units and processes that are not TractStack's, and what it does run
//! through sudo matches the shipped sudoers rule; the start-up permission checks warn and refuse.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::systemd::Systemd;
use crate::common::{Root, git, text, wait_until};

/// Answers every request on a loopback port with status 500, in a background thread.
fn failing_http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 500 X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    port
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every file under `dir`, with its text.
fn files_under(dir: &Path) -> Vec<(String, String)> {
    walk(dir)
        .into_iter()
        .map(|p| {
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
            (p.display().to_string(), text)
        })
        .collect()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

const GIT_PASSWORD: &str = "GitPassw0rd-s3cret";
const PRINTED_TOKEN: &str = "ghp_PrintedT0kenValue0123456789";
const QUERY_TOKEN: &str = "QueryT0ken-in-output";
const HOOK_TOKEN: &str = "HookT0ken-in-http-post";
const HOOK_PATH: &str = "HookPathSecret";

#[test]
fn credentials_in_urls_reach_no_log_journal_reason_status_or_hook() {
    let root = Root::new();
    let port = failing_http_server();
    // A real repository whose remote carries a user and password; fetching it fails (nothing listens on
    // port 1), as a deploy does when the remote is down.
    let repo = root.path.join("src/tractstack-go");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    let remote = format!("http://deploy:{GIT_PASSWORD}@127.0.0.1:1/tractstack-go.git");
    git(&repo, &["remote", "add", "origin", &remote]);
    root.script(
        "main.rhai",
        &format!(
            r#"
fn build(job) {{
    step("announce", || run("sh", ["-c", "echo cloning https://x-access-token:{PRINTED_TOKEN}@github.com/org/repo.git; echo 'notify https://hooks.example/n?channel=ops&token={QUERY_TOKEN}' >&2"]));
    step("remotes", || run("git", ["remote", "-v"], #{{ cwd: job.backend_src }}));
    let url = run("git", ["remote", "get-url", "origin"], #{{ cwd: job.backend_src, quiet: true }}).stdout;
    url.trim();
    log(`deploying from ${{url}}`);
    record_release(job, #{{ remote: url }});
    try {{
        http_post("http://127.0.0.1:{port}/hook/{HOOK_PATH}?token={HOOK_TOKEN}", "deploying");
    }} catch (e) {{
        warn(`notification failed: ${{e}}`);
    }}
    step("fetch", || run("sh", ["-c", "git fetch -q origin || {{ echo \"cannot fetch $(git remote get-url origin)\" >&2; exit 1; }}"], #{{ cwd: job.backend_src }}));
}}

fn on_failure(job, failure) {{
    run("mark", [`message=${{failure.message}}`]);
    run("mark", [`reason=${{failure.reason}}`]);
    for line in failure.tail {{ run("mark", [`tail=${{line}}`]); }}
}}
"#
        ),
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    let run = root.run(&["run"]);
    assert_eq!(run.status.code(), Some(1), "{}\n{}", text(&run), root.log());

    let history = root.run(&["history", "--json"]);
    assert_eq!(history.status.code(), Some(0), "{}", text(&history));
    let history = String::from_utf8_lossy(&history.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(&history).unwrap();
    let job_id = v["jobs"][0]["job_id"].as_str().unwrap().to_string();
    assert_eq!(v["jobs"][0]["failed_step"], "fetch", "{history}");
    let logs = root.run(&["logs", &job_id]);
    assert_eq!(logs.status.code(), Some(0), "{}", text(&logs));
    let status = root.run(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));

    let mut places: Vec<(String, String)> = vec![
        ("build.log".into(), root.log()),
        ("`run` output".into(), text(&run)),
        ("`logs` output".into(), text(&logs)),
        ("`history --json`".into(), history.clone()),
        ("`status --json`".into(), text(&status)),
        ("reason file".into(), root.reason("build-1.csv")),
        (
            "on_failure's view of the failure".into(),
            root.marks().join("\n"),
        ),
    ];
    places.extend(files_under(&root.path.join("log/jobs")));
    places.extend(files_under(&root.path.join("state/.t8k-engine")));
    assert!(
        places
            .iter()
            .any(|(p, _)| p.ends_with(&format!("{job_id}.log"))),
        "the job has its own log"
    );
    let secrets = [
        GIT_PASSWORD,
        &PRINTED_TOKEN["ghp_".len()..],
        QUERY_TOKEN,
        HOOK_TOKEN,
        HOOK_PATH,
    ];
    for (place, content) in &places {
        for secret in secrets {
            assert!(
                !content.contains(secret),
                "{secret} leaked into {place}:\n{content}"
            );
        }
    }

    // The secrets were there to leak: each place shows the URLs with their credentials masked.
    let log = root.log();
    for masked in [
        "origin\thttp://***@127.0.0.1:1/tractstack-go.git (fetch)",
        "cloning https://***@github.com/org/repo.git",
        "n?channel=ops&token=***",
        "deploying from http://***@127.0.0.1:1/tractstack-go.git",
        &format!(
            "notification failed: http_post http://127.0.0.1:{port}/…: the server answered status 500"
        ),
    ] {
        assert!(log.contains(masked), "build.log lacks {masked:?}:\n{log}");
    }
    let job_log = text(&logs);
    assert!(
        job_log.contains("cannot fetch http://***@127.0.0.1:1/tractstack-go.git"),
        "{job_log}"
    );
    let reason = root.reason("build-1.csv");
    assert!(
        reason.contains("cannot fetch http://***@127.0.0.1:1/tractstack-go.git"),
        "{reason}"
    );
    assert!(
        history.contains("cannot fetch http://***@127.0.0.1"),
        "{history}"
    );
    let marks = root.marks();
    assert!(
        marks
            .iter()
            .any(|m| m.starts_with("reason=") && m.contains("***@127.0.0.1:1")),
        "{marks:?}"
    );
    assert!(
        marks
            .iter()
            .any(|m| m == "tail=cannot fetch http://***@127.0.0.1:1/tractstack-go.git"),
        "{marks:?}"
    );
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains("\"remote\": \"http://***@127.0.0.1:1/tractstack-go.git\""),
        "the live release record is shown redacted: {status}"
    );
}

/// The Cmnd_Alias regular expressions of the shipped sudoers rule, one per allowed verb (restart).
fn sudoers_patterns() -> Vec<String> {
    let rule = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sudoers.d/t8k-engine"),
    )
    .unwrap();
    let patterns: Vec<String> = rule
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("/usr/bin/systemctl ")?;
            let end = rest.rfind('$')?;
            Some(rest[..=end].to_string())
        })
        .collect();
    assert_eq!(
        patterns.len(),
        1,
        "restart only (is-active needs no sudo): {rule}"
    );
    patterns
}

/// Whether the sudoers rule allows `systemctl ARGS`: its patterns are POSIX extended regular
/// expressions, which is what `grep -E` matches too.
fn sudo_allows(patterns: &[String], args: &str) -> bool {
    patterns.iter().any(|p| {
        let mut grep = Command::new("grep")
            .args(["-Eq", "--", p])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("grep");
        grep.stdin
            .take()
            .unwrap()
            .write_all(format!("{args}\n").as_bytes())
            .unwrap();
        grep.wait().unwrap().success()
    })
}

#[test]
fn the_host_api_restarts_only_tractstack_units_through_exactly_the_sudo_rule() {
    let Some(sd) = Systemd::boot() else {
        return;
    };
    let root = Root::with_config("sudo_systemctl = true\n");
    // A real unit, restarted by the real systemctl that sudo runs.
    sd.replace_fake_systemctl(&root);
    sd.install(
        "tractstack-go.service",
        "[Service]\nExecStart=/bin/sleep 300\nStandardOutput=null\n",
    );
    sd.ok(&["start", "tractstack-go"]);
    let invocation = sd.show("tractstack-go", "InvocationID");
    // A sudo that records what it is asked and runs it (the real one would check the rule and ask for no password).
    let sudo = root.fakes.join("bin/sudo");
    std::fs::write(
        &sudo,
        "#!/bin/sh\necho \"$*\" >> \"$FAKE_DIR/sudo.calls\"\n[ \"$1\" = -n ] || { echo 'fake sudo: -n missing' >&2; exit 1; }\nshift\nexec \"$@\"\n",
    )
    .unwrap();
    chmod(&sudo, 0o755);
    std::fs::create_dir_all(root.fakes.join("pm2")).unwrap();
    std::fs::write(root.fakes.join("pm2/astro-main"), "online").unwrap();
    std::fs::write(root.fakes.join("pm2/pm2-logrotate"), "online").unwrap();
    root.script(
        "main.rhai",
        r#"
fn build(job) {
    restart_systemd(job.unit);
    pm2("reload", job.pm2_name);
    run("mark", ["restarted"]);
}
fn other_unit(job) { restart_systemd("sshd"); }
fn suffixed(job) { restart_systemd("tractstack-go.service"); }
fn two_units(job) { restart_systemd("tractstack-go@acme sshd"); }
fn other_process(job) { pm2("stop", "pm2-logrotate"); }
fn other_verb(job) { pm2("delete", "astro-main"); }
"#,
    );
    let refused = [
        (
            "other_unit",
            "restart_systemd(): `sshd` is not a TractStack unit",
        ),
        (
            "suffixed",
            "`tractstack-go.service` is not a TractStack unit",
        ),
        ("two_units", "is not a valid unit name"),
        (
            "other_process",
            "pm2(): `pm2-logrotate` is not a TractStack process",
        ),
        ("other_verb", "pm2(): unknown action `delete`"),
    ];
    root.trigger("build-0.csv", "type=main,command=build\n");
    for (i, (command, _)) in refused.iter().enumerate() {
        root.trigger(
            &format!("build-{}.csv", i + 1),
            &format!("type=main,command={command}\n"),
        );
    }
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", text(&out), root.log());
    assert_eq!(root.marks(), ["restarted"], "{}", root.log());
    for (i, (command, needle)) in refused.iter().enumerate() {
        let reason = root.reason(&format!("build-{}.csv", i + 1));
        assert!(reason.contains(needle), "{command}: {reason}");
    }
    let sudo_calls = root.calls("sudo");
    assert_eq!(
        sudo_calls,
        ["-n systemctl restart tractstack-go"],
        "the engine went through sudo only to restart the allowed unit (is-active needs no sudo)"
    );
    assert_ne!(
        sd.show("tractstack-go", "InvocationID"),
        invocation,
        "systemd restarted the unit"
    );
    assert_eq!(sd.show("tractstack-go", "ActiveState"), "active");
    assert!(
        !root
            .calls("pm2")
            .iter()
            .any(|c| c.contains("logrotate") || c.starts_with("delete")),
        "{:?}",
        root.calls("pm2")
    );
    assert_eq!(
        std::fs::read_to_string(root.fakes.join("pm2/pm2-logrotate")).unwrap(),
        "online"
    );

    // What the engine ran through sudo is allowed by the shipped rule, and what it refused is not.
    let patterns = sudoers_patterns();
    for call in &sudo_calls {
        let args = call.strip_prefix("-n systemctl ").unwrap();
        assert!(sudo_allows(&patterns, args), "the rule must allow `{args}`");
    }
    for args in ["restart tractstack-go@acme", "restart tractstack-go@a_b-1"] {
        assert!(sudo_allows(&patterns, args), "the rule must allow `{args}`");
    }
    for args in [
        "restart sshd",
        "restart tractstack-go@acme sshd",
        "restart tractstack-go.service",
        "restart tractstack-go@-x",
        "restart tractstack-go@a/../b",
        "stop tractstack-go",
        "edit tractstack-go",
        "restart tractstack-go --no-block",
        "xrestart tractstack-go",
    ] {
        assert!(
            !sudo_allows(&patterns, args),
            "the rule must refuse `{args}`"
        );
    }
}

/// Gives the root the modes a careful install has, whatever the umask of the test run.
fn careful_modes(root: &Root) {
    for dir in ["state", "scripts", "scripts/lib"] {
        chmod(&root.path.join(dir), 0o755);
    }
    chmod(&root.path.join("config.toml"), 0o644);
    for p in walk(&root.path.join("scripts")) {
        chmod(&p, 0o644);
    }
}

/// A root installed with careful permissions, a marking main script and one trigger waiting.
fn careful_root() -> Root {
    let root = Root::new();
    root.script("main.rhai", "fn build(job) { run(\"mark\", [\"ran\"]); }\n");
    root.script("lib/common.rhai", "fn helper() { 1 }\n");
    careful_modes(&root);
    root.trigger("build-1.csv", "type=main,command=build\n");
    root
}

#[test]
fn a_careful_install_starts_without_a_permission_warning() {
    let root = careful_root();
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(root.marks(), ["ran"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for word in ["writable", "owned by", "refusing"] {
        assert!(!stderr.contains(word), "{}", text(&out));
    }
}

#[test]
fn a_world_writable_inbox_is_reported_once_with_its_mode_and_fix() {
    for (mode, says) in [
        (
            0o777,
            "is world-writable without the sticky bit (mode 0777): any local user can start builds and rename or delete",
        ),
        (
            0o1777,
            "is world-writable (mode 1777): any local user can start builds",
        ),
    ] {
        let root = careful_root();
        let state = root.path.join("state");
        chmod(&state, mode);
        let out = root.run(&["run"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(root.marks(), ["ran"], "a warning does not stop the engine");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = format!("state directory {} {says}", state.display());
        assert_eq!(stderr.matches(&line).count(), 1, "{mode:o}: {}", text(&out));
        assert!(
            stderr.contains(&format!("fix: `chmod o-w {}`", state.display())),
            "{}",
            text(&out)
        );
        assert!(
            root.log().contains(&line),
            "also in build.log: {}",
            root.log()
        );
    }
}

#[test]
fn group_writable_or_foreign_scripts_are_reported_and_still_run() {
    let root = careful_root();
    let main = root.path.join("scripts/main.rhai");
    let common = root.path.join("scripts/lib/common.rhai");
    chmod(&main, 0o664);
    // uid 65534 is `nobody` on Debian and most other systems: a non-root user that is not the engine's.
    std::os::unix::fs::chown(&common, Some(65534), None).unwrap();
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(root.marks(), ["ran"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "script {} is writable by its group",
            main.display()
        )) && stderr.contains("(mode 0664)")
            && stderr.contains(&format!("fix: `chmod g-w {}`", main.display())),
        "{}",
        text(&out)
    );
    assert!(
        stderr.contains(&format!("script {} is owned by ", common.display()))
            && stderr.contains("not by the engine's user root"),
        "{}",
        text(&out)
    );
}

#[test]
fn world_writable_scripts_or_config_stop_the_engine_before_any_trigger_runs() {
    let cases = [
        ("script", "scripts/main.rhai"),
        ("scripts directory", "scripts/lib"),
        ("config file", "config.toml"),
    ];
    for (what, rel) in cases {
        let root = careful_root();
        let path = root.path.join(rel);
        let mode = if path.is_dir() { 0o777 } else { 0o666 };
        chmod(&path, mode);
        let out = root.run(&["run"]);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "{what} {} is writable by every local user (mode {mode:04o})",
                path.display()
            )) && stderr.contains(&format!("fix: `chmod o-w {}`", path.display()))
                && stderr.contains("error: refusing to start"),
            "{what}: {}",
            text(&out)
        );
        assert!(root.marks().is_empty(), "{what}: no job ran");
        assert_eq!(root.inbox(), ["build-1.csv"], "{what}: the trigger waits");
    }
}

#[test]
fn watch_checks_permissions_on_start_too() {
    let root = careful_root();
    let state = root.path.join("state");
    chmod(&state, 0o777);
    let daemon = root.daemon(&[]);
    root.wait_watching();
    wait_until(Duration::from_secs(20), "the trigger to run", || {
        root.marks() == ["ran"]
    });
    let out = root.daemon_out();
    let line = format!("state directory {} is world-writable", state.display());
    assert_eq!(out.matches(&line).count(), 1, "{out}");
    // Another trigger does not repeat the warning: it is given once, on start.
    root.trigger("build-2.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(20), "the second trigger to run", || {
        root.marks().len() == 2
    });
    assert_eq!(root.daemon_out().matches(&line).count(), 1);
    assert_eq!(crate::common::stop(daemon, libc::SIGTERM), Some(0));

    chmod(&root.path.join("scripts/main.rhai"), 0o666);
    let mut refused = root.daemon(&[]);
    wait_until(Duration::from_secs(20), "watch to refuse", || {
        matches!(refused.try_wait(), Ok(Some(_)))
    });
    assert_eq!(refused.wait().unwrap().code(), Some(2));
    assert!(root.daemon_out().contains("error: refusing to start"));
}
