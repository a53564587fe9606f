//! The shipped release pipeline end to end: real git remotes, real `go build`, real `pnpm install` and
//! `pnpm build` of a node-adapter-style frontend, served by real pm2; the backend is run by the fake
//! systemctl (systemd cannot be PID 1 here).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Root, commit, git_repo, text, wait_until};

fn require(tool: &str, arg: &str) {
    let ok = Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`{tool}` is not installed: run `bash .ci/install.sh` before this test"
    );
}

/// The fixture site's files under `tests/fixtures/site/<part>`.
fn fixture(part: &str) -> Vec<(String, String)> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/site")
        .join(part);
    let mut files = Vec::new();
    let mut dirs = vec![base.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path
                    .strip_prefix(&base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    files
}

fn refs(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET on loopback: `Some((status, body))`, `None` when nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, raw.split("\r\n\r\n").nth(1)?.trim().to_string()))
}

/// A TractStack install serving v1, as an operator would have it before the first trigger.
struct Site {
    root: Root,
    backend: PathBuf,
    frontend: PathBuf,
    go_port: u16,
    astro_port: u16,
    pm2_home: PathBuf,
}

impl Site {
    fn new() -> Site {
        require("go", "version");
        require("pnpm", "--version");
        require("pm2", "--version");
        let root = Root::new();
        // The real pm2, not the recording stand-in.
        std::fs::remove_file(root.fakes.join("bin/pm2")).unwrap();
        let (go_port, astro_port) = (free_port(), free_port());
        std::fs::write(
            root.path.join("etc/t8k-ports.conf"),
            format!("main={go_port},{astro_port}\n"),
        )
        .unwrap();
        for tenant in ["default", "blue"] {
            std::fs::create_dir_all(root.path.join("t8k-go-server/config").join(tenant)).unwrap();
        }
        let remotes = root.path.join("remotes");
        let backend = git_repo(
            &remotes.join("tractstack-go.git"),
            &root.path.join("src/tractstack-go"),
            &refs(&fixture("backend")),
        );
        let frontend = git_repo(
            &remotes.join("my-tractstack.git"),
            &root.path.join("src/my-tractstack"),
            &refs(&fixture("frontend")),
        );
        let binary = root.path.join("bin/tractstack-go");
        std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
        std::fs::write(
            root.fakes.join("units/tractstack-go"),
            format!("PORT={go_port} exec {}\n", binary.display()),
        )
        .unwrap();
        let site = Site {
            pm2_home: root.path.join("pm2"),
            root,
            backend,
            frontend,
            go_port,
            astro_port,
        };
        let src = |p: &str| site.root.path.join("src").join(p);
        site.sh(
            &src("tractstack-go"),
            "go",
            &[
                "build",
                "-o",
                binary.to_str().unwrap(),
                "./cmd/tractstack-go",
            ],
        );
        site.sh(
            &src("my-tractstack"),
            "pnpm",
            &["install", "--frozen-lockfile"],
        );
        site.sh(&src("my-tractstack"), "pnpm", &["build"]);
        site.sh(&site.root.path, "systemctl", &["start", "tractstack-go"]);
        let port = astro_port.to_string();
        site.sh_env(
            &src("my-tractstack"),
            "pm2",
            &["start", "ecosystem.config.cjs"],
            &[("ASTRO_PORT", &port)],
        );
        wait_until(Duration::from_secs(20), "v1 to be served", || {
            site.serving() == (Some("v1".into()), Some("v1".into()))
        });
        site
    }

    fn sh(&self, dir: &Path, program: &str, args: &[&str]) {
        self.sh_env(dir, program, args, &[]);
    }

    fn sh_env(&self, dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) {
        let path = format!(
            "{}:{}",
            self.root.fakes.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(program)
            .args(args)
            .current_dir(dir)
            .env("PATH", path)
            .env("FAKE_DIR", &self.root.fakes)
            .env("PM2_HOME", &self.pm2_home)
            .env("ASTRO_TELEMETRY_DISABLED", "1")
            .env("ASTRO_TELEMETRY_DISABLED", "1")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
    }

    /// What both services answer: the backend's health body and the frontend's page text, if 200.
    fn serving(&self) -> (Option<String>, Option<String>) {
        let ok = |r: Option<(u16, String)>| r.filter(|(s, _)| *s == 200).map(|(_, b)| b);
        // The version is the text of the page's heading.
        let heading = |page: String| {
            let start = page.find("font-bold\">")? + "font-bold\">".len();
            Some(page[start..start + page[start..].find("</h1>")?].to_string())
        };
        let page = ok(get(self.astro_port, "/")).and_then(heading);
        (ok(get(self.go_port, "/api/v1/health")), page)
    }

    fn trigger(&self, line: &str) -> Output {
        self.root
            .trigger(&format!("build-{}.csv", ulid_like()), &format!("{line}\n"));
        self.root
            .cmd(&["run"])
            .env("PM2_HOME", &self.pm2_home)
            .env("ASTRO_TELEMETRY_DISABLED", "1")
            .output()
            .unwrap()
    }

    fn record(&self) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.root.path.join("state/.t8k-engine/releases/main.json"))
                .unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = Command::new("pm2")
            .arg("kill")
            .env("PM2_HOME", &self.pm2_home)
            .env("ASTRO_TELEMETRY_DISABLED", "1")
            .output();
        let _ = Command::new(self.root.fakes.join("bin/systemctl"))
            .args(["stop", "tractstack-go"])
            .env("FAKE_DIR", &self.root.fakes)
            .output();
    }
}

/// Increasing names, so triggers run in the order a test drops them.
fn ulid_like() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string()
}

#[test]
fn new_commits_of_both_are_built_in_parallel_switched_and_served() {
    let site = Site::new();
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "v2\n")],
        "backend v2",
    );
    commit(&site.frontend, &[("version.txt", "v2\n")], "frontend v2");
    let out = site.trigger("type=main,command=build");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        site.root.log()
    );
    assert_eq!(site.serving(), (Some("v2".into()), Some("v2".into())));
    let whitelist = std::fs::read_to_string(
        site.root
            .path
            .join("t8k-go-server/config/blue/tailwindWhitelist.json"),
    )
    .unwrap();
    assert!(
        whitelist.contains("\"font-bold\"") && whitelist.contains("\"bg-red-500\""),
        "{whitelist}"
    );
    assert!(
        site.root.path.join("bin/tractstack-go.prev").is_file(),
        "the previous binary is kept"
    );
    assert!(
        site.root
            .path
            .join("src/my-tractstack/dist.prev/server/entry.mjs")
            .is_file(),
        "the previous dist is kept"
    );

    let record = site.record();
    assert_eq!(
        record["built"],
        serde_json::json!({"backend": true, "frontend": true})
    );
    let steps = record["steps"].as_array().unwrap();
    let span = |name: &str| {
        let s = steps
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no step {name} in {steps:?}"));
        let start = s["start_ms"].as_u64().unwrap();
        (start, start + s["wall_ms"].as_u64().unwrap())
    };
    let (b0, b1) = span("build backend");
    let (f0, f1) = span("install frontend");
    let (_, f2) = span("build frontend");
    assert!(
        b0 < f2.max(f1) && f0 < b1,
        "the builds overlap: backend {b0}..{b1}, frontend {f0}..{f2}"
    );
}

#[test]
fn an_unchanged_retrigger_builds_nothing_but_still_checks_health() {
    let site = Site::new();
    assert_eq!(
        site.trigger("type=main,command=build").status.code(),
        Some(0),
        "{}",
        site.root.log()
    );
    let before = site.root.log().len();
    let out = site.trigger("type=main,command=build");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = &site.root.log()[before..];
    assert!(log.contains("nothing changed"), "{log}");
    assert!(
        !log.contains("step `build backend` started")
            && !log.contains("step `build frontend` started"),
        "{log}"
    );
    assert!(
        log.contains("step `check backend` done") && log.contains("step `check frontend` done"),
        "{log}"
    );

    let before = site.root.log().len();
    assert_eq!(
        site.trigger("type=main,command=build,force=true")
            .status
            .code(),
        Some(0)
    );
    let log = &site.root.log()[before..];
    assert!(
        log.contains("step `build backend` started")
            && log.contains("step `build frontend` started"),
        "force rebuilds: {log}"
    );
}

#[test]
fn a_compile_error_changes_nothing_live() {
    let site = Site::new();
    commit(
        &site.backend,
        &[(
            "cmd/tractstack-go/broken.go",
            "package main\n\nfunc init() { undefinedThing() }\n",
        )],
        "broken",
    );
    commit(&site.frontend, &[("version.txt", "v2\n")], "frontend v2");
    let live = std::fs::read(site.root.path.join("bin/tractstack-go")).unwrap();
    let out = site.trigger("type=main,command=build");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failed = site.root.failed();
    let reason = site.root.reason(&failed[0]);
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains("step `build backend` failed")
            && first.contains("undefined: undefinedThing"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read(site.root.path.join("bin/tractstack-go")).unwrap(),
        live
    );
    assert_eq!(
        site.serving(),
        (Some("v1".into()), Some("v1".into())),
        "nothing was switched or restarted"
    );
    assert!(
        !site
            .root
            .calls("systemctl")
            .iter()
            .any(|c| c.starts_with("restart"))
    );
}

#[test]
fn a_backend_that_fails_its_health_check_is_rolled_back() {
    let site = Site::new();
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "broken-v2\n")],
        "unhealthy backend",
    );
    let out = site.trigger("type=main,command=build");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = site.root.reason(&site.root.failed()[0]);
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains("rolled back:")
            && first.contains("/api/v1/health")
            && first.contains("status 500"),
        "{reason}"
    );
    assert_eq!(
        site.serving(),
        (Some("v1".into()), Some("v1".into())),
        "the old release serves again"
    );
    assert!(
        site.root.path.join("bin/tractstack-go.failed").is_file(),
        "the failed build is kept for inspection"
    );
}

#[test]
fn a_frontend_that_fails_its_health_check_is_rolled_back() {
    let site = Site::new();
    commit(
        &site.frontend,
        &[("version.txt", "broken-v2\n")],
        "unhealthy frontend",
    );
    let out = site.trigger("type=main,command=build");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = site.root.reason(&site.root.failed()[0]);
    assert!(
        reason.lines().next().unwrap().contains("rolled back:"),
        "{reason}"
    );
    assert_eq!(site.serving(), (Some("v1".into()), Some("v1".into())));
}

#[test]
fn a_frontend_that_logs_a_fatal_error_is_rolled_back() {
    let site = Site::new();
    commit(
        &site.frontend,
        &[("version.txt", "fatal-v2\n")],
        "serves but logs FATAL",
    );
    let out = site.trigger("type=main,command=build");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = site.root.reason(&site.root.failed()[0]);
    let first = reason.lines().next().unwrap();
    assert!(first.contains("rolled back: pm2's error log of astro-main since the restart says: FATAL: cannot reach the database"), "{reason}");
    assert_eq!(site.serving(), (Some("v1".into()), Some("v1".into())));
}

#[test]
fn a_rollback_that_fails_too_says_so_loudly() {
    let site = Site::new();
    // The unit itself is broken now: whatever release it starts dies at once, the old one too.
    std::fs::write(site.root.fakes.join("units/tractstack-go"), "exit 1\n").unwrap();
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "v2\n")],
        "backend v2",
    );
    let out = site.trigger("type=main,command=build");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = site.root.reason(&site.root.failed()[0]);
    let first = reason.lines().next().unwrap();
    assert!(first.contains("ROLLBACK FAILED after"), "{reason}");
    assert!(
        first.contains("check tractstack-go and astro-main now"),
        "{reason}"
    );
    let restarts = site
        .root
        .calls("systemctl")
        .iter()
        .filter(|c| c.starts_with("restart"))
        .count();
    assert_eq!(restarts, 2, "the new release, then the rolled-back one");
}

#[test]
fn a_kill_during_the_build_leaves_the_live_release_untouched() {
    let site = Site::new();
    commit(
        &site.frontend,
        &[("version.txt", "slow-v2\n")],
        "slow build",
    );
    site.root
        .trigger("build-1.csv", "type=main,command=build\n");
    let mut engine = site
        .root
        .cmd(&["run"])
        .env("PM2_HOME", &site.pm2_home)
        .env("ASTRO_TELEMETRY_DISABLED", "1")
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the frontend build to start",
        || site.root.log().contains("step `build frontend` started"),
    );
    engine.kill().unwrap();
    engine.wait().unwrap();
    assert_eq!(site.serving(), (Some("v1".into()), Some("v1".into())));
    assert!(
        site.root
            .path
            .join("src/my-tractstack/dist/server/entry.mjs")
            .is_file()
    );
    assert!(
        !site.root.path.join("src/my-tractstack/dist.prev").exists(),
        "nothing was switched"
    );
    // The next run stops the orphaned build before it builds again; make that one quick.
    commit(&site.frontend, &[("version.txt", "v3\n")], "fast again");
    let out = site
        .root
        .cmd(&["run"])
        .env("PM2_HOME", &site.pm2_home)
        .env("ASTRO_TELEMETRY_DISABLED", "1")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        site.root.log()
    );
    assert_eq!(site.serving().1, Some("v3".into()));
}
