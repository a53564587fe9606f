//! The operator commands: check, eval, api, scripts init, config.

use crate::common::{OutputWith, Root, text};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_passes_on_the_shipped_scripts_and_names_each_problem() {
    let root = Root::new();
    let ok = root.run(&["check"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));

    root.script(
        "main.rhai",
        "import \"lib/common\" as t8k;\nfn deploy(job) {\n    let x = [1, 2\n}\n",
    );
    root.script("multi.rhai", "fn deploy(job) { run(\"true\", []); }\n");
    root.script(
        "dedicated.rhai",
        "import \"lib/missing\" as m;\nfn build(job) { }\n",
    );
    root.script("lib/common.rhai", "fn f() { undefined_thing }\n");
    let out = root.run(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let s = stdout(&out);
    let scripts = root.path.join("scripts");
    let at = |name: &str| format!("{}:", scripts.join(name).display());
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 4, "{s}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{}3:", at("main.rhai")))
                || l.starts_with(&format!("{}4:", at("main.rhai")))),
        "{s}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&at("multi.rhai")) && l.contains("defines no `fn build(job)`")),
        "{s}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{}1:1:", at("dedicated.rhai")))
                && l.contains("lib/missing")),
        "{s}"
    );
    assert!(
        lines.iter().any(
            |l| l.starts_with(&format!("{}1:10:", at("lib/common.rhai")))
                && l.contains("undefined_thing")
        ),
        "{s}"
    );
    assert!(root.calls("systemctl").is_empty(), "check runs nothing");
}

#[test]
fn eval_runs_snippets_with_a_job_and_the_type_script() {
    let root = Root::new();
    let out = root.run(&["eval", "40 + 2"]);
    assert_eq!(
        (out.status.code(), stdout(&out).trim()),
        (Some(0), "42"),
        "{}",
        text(&out)
    );

    root.script(
        "dedicated.rhai",
        "fn build(job) { }\nfn where_(job) { `${job.unit} ${job.pm2_name} ${job.base}` }\n",
    );
    let out = root.run(&["eval", "--job", "type=dedicated,site=acme", "where_(job)"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!(
            "tractstack-go@acme astro-acme {}",
            root.path.join("sites/acme").display()
        )
    );

    let out = root.run(&[
        "eval",
        "--job",
        "type=main",
        "[job.type, job.site, job.go_port, job.astro_port]",
    ]);
    assert_eq!(
        stdout(&out).trim(),
        "[\"main\", \"\", 10000, 20000]",
        "{}",
        text(&out)
    );

    let snippet = root.path.join("snippet.rhai");
    std::fs::write(&snippet, "run(\"mark\", [\"from a file\"]);\n").unwrap();
    let out = root.run(&["eval", "-f", snippet.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(root.marks(), ["from a file"]);

    let bad = root.run(&["eval", "--job", "type=dedicated", "1"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("needs a `site`"));
}

#[test]
fn the_sandbox_refuses_escapes_and_typos() {
    let root = Root::new();
    let cases = [
        ("eval(\"1\")", "eval"),
        (
            "import \"/etc/passwd\" as p; 1",
            "imports are relative names",
        ),
        ("import \"../x\" as p; 1", "imports are relative names"),
        (
            "run(\"true\", [], #{ timout: 3 })",
            "unknown option `timout`",
        ),
        ("run(\"true\", [1])", "argument 1 must be a string"),
        ("nope + 1", "Undefined variable: nope"),
        ("pm2(\"delete\", \"astro-main\")", "unknown action `delete`"),
        (
            "http_check(\"file:///etc/passwd\")",
            "not an http:// or https:// URL",
        ),
        ("let a = []; loop { a.push(1) }", "Size of array"),
        (
            "tailwind_whitelist(\"/nonexistent/dist\", \"/tmp/x.json\")",
            "/nonexistent/dist",
        ),
        (
            "tailwind_whitelist(\"/tmp\", \"/tmp/x.json\", #{ extras: [] })",
            "unknown option `extras`",
        ),
    ];
    for (snippet, needle) in cases {
        let out = root.run(&["eval", snippet]);
        assert_eq!(out.status.code(), Some(1), "{snippet}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{snippet}: expected `{needle}` in {}",
            text(&out)
        );
    }
    let out = root.run(&["eval", "--job", "type=main", "job.tenant = \"x\""]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "job is read-only: {}",
        text(&out)
    );
}

#[test]
fn steps_run_at_low_priority_unless_asked_otherwise() {
    let root = Root::new();
    let probe = r#"run("sh", ["-c", "echo nice=$(cut -d' ' -f19 /proc/$$/stat); ionice -p $$"]"#;
    let low = root.run(&["eval", &format!("{probe}).stdout")]);
    assert_eq!(low.status.code(), Some(0), "{}", text(&low));
    assert!(
        stdout(&low).contains("nice=10") && stdout(&low).contains("best-effort: prio 7"),
        "{}",
        text(&low)
    );
    let normal = root.run(&[
        "eval",
        &format!("{probe}, #{{ priority: \"normal\" }}).stdout"),
    ]);
    assert!(
        stdout(&normal).contains("nice=0") && !stdout(&normal).contains("prio 7"),
        "{}",
        text(&normal)
    );
    // Without systemd as PID 1 here, configured limits leave the command as it is.
    std::fs::write(
        root.path.join("config.toml"),
        format!(
            "root = {:?}\nbuild_limits = [\"MemoryMax=1G\"]\n",
            root.path.display().to_string()
        ),
    )
    .unwrap();
    let limited = root.run(&["eval", r#"run("true", []).code"#]);
    assert_eq!(stdout(&limited).trim(), "0", "{}", text(&limited));
}

#[test]
fn api_lists_every_host_function_and_job_field() {
    let root = Root::new();
    let out = root.run(&["api"]);
    assert_eq!(out.status.code(), Some(0));
    let s = stdout(&out);
    for needle in [
        "run(cmd, args)",
        "restart_systemd(unit)",
        "pm2(action, name)",
        "http_check(url)",
        "parallel(#{",
        "step(name",
        "job.pm2_name",
        "job.go_port",
    ] {
        assert!(s.contains(needle), "{needle} missing from:\n{s}");
    }
}

#[test]
fn scripts_init_writes_editable_copies_that_take_effect() {
    let root = Root::new();
    let out = root.run(&["scripts", "init"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let main = root.path.join("scripts/main.rhai");
    assert!(main.is_file() && root.path.join("scripts/lib/common.rhai").is_file());
    std::fs::write(&main, "fn build(job) { run(\"mark\", [\"edited\"]); }\n").unwrap();
    let again = root.run(&["scripts", "init"]);
    assert!(stdout(&again).contains("kept"), "{}", text(&again));
    root.trigger("build-1.csv", "type=main,command=build\n");
    assert_eq!(root.run(&["run"]).status.code(), Some(0));
    assert_eq!(root.marks(), ["edited"]);
}

#[test]
fn config_shows_the_effective_settings_and_rejects_typos() {
    let root = Root::new();
    let out = root.run(&["config"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = stdout(&out);
    assert!(
        s.contains(&format!(
            "state_dir = \"{}\"",
            root.path.join("state").display()
        )),
        "{s}"
    );
    assert!(s.contains("kill_grace = 1"), "{s}");

    let other = root.path.join("elsewhere");
    let out = root
        .cmd(&["config"])
        .env("T8K_ROOT", &other)
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains(&format!("root = \"{}\"", other.display())),
        "T8K_ROOT overrides the file"
    );
    let out = root
        .cmd(&["--root", "/srv/x", "config"])
        .env("T8K_ROOT", &other)
        .output()
        .unwrap();
    assert!(stdout(&out).contains("root = \"/srv/x\""), "--root wins");

    std::fs::write(
        root.path.join("config.toml"),
        "kill_grace = 1\njob_timout = 3\n",
    )
    .unwrap();
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("job_timout"));
}

#[test]
fn a_terminal_gets_live_step_progress_and_a_pipe_gets_plain_lines() {
    let root = Root::new();
    root.script(
        "main.rhai",
        "fn build(job) {\n    step(\"compile\", || run(\"sh\", [\"-c\", \"echo line one; echo line two\"]));\n    step(\"link\", || run(\"sh\", [\"-c\", \"echo linking; exit 3\"]));\n}\n",
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    // script(1) gives the engine a pseudo-terminal, as an operator's shell would.
    let bin = env!("CARGO_BIN_EXE_t8k-engine");
    let out = root
        .cmd(&[])
        .env("TERM", "xterm")
        .output_with_program("script", &["-qec", &format!("{bin} run"), "/dev/null"]);
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{screen}");
    assert!(
        screen.contains("✓ compile") && screen.contains("✗ link"),
        "a tick or a cross per step: {screen}"
    );
    assert!(
        screen.contains("line two"),
        "the current output line is shown: {screen}"
    );
    assert!(
        screen.contains("run finished: 0 job(s) succeeded, 1 failed"),
        "a summary at the end: {screen}"
    );

    root.run(&["retry", "build-1.csv"]);
    let plain = root.run(&["run"]);
    let lines = String::from_utf8_lossy(&plain.stderr).into_owned();
    assert!(
        lines.contains("step `compile` done") && !lines.contains('✓'),
        "no terminal, no spinners: {lines}"
    );
}

#[test]
fn a_printing_command_whose_reader_went_away_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let root = Root::new();
    for args in [&["config"][..], &["api"], &["history"], &["status"]] {
        let mut child = root
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the command prints (it has not even loaded its config yet).
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}
