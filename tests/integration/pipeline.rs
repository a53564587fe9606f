//! The shipped release pipeline end to end on the faithful fixture site (tests/fixtures/site): real git
//! remotes, real `go build` of a backend that keeps tractstack-go's contracts (tenant middleware, `/health`,
//! warm-up, `sqlite_fts5`, data under GO_BACKEND_PATH), real `pnpm` against a local npm registry that
//! publishes astro-tractstack, a real Astro frontend served by real pm2 in fork mode (as the installer
//! sets it up) or cluster mode; the backend is run by the fake systemctl (systemd cannot be PID 1 here),
//! whose output the fake journalctl reads.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::common::{Root, commit, git_repo, text, wait_until};

fn require(tool: &str, arg: &str) {
    // Any pm2 command, `--version` too, starts a pm2 daemon in ~/.pm2 that nobody stops: only look for it.
    let ok = if tool == "pm2" {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|dir| dir.join(tool).is_file())
    } else {
        Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        ok,
        "`{tool}` is not installed: run `bash .ci/install.sh` before this test"
    );
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixture site's files under `tests/fixtures/site/<part>`.
fn fixture(part: &str) -> Vec<(String, String)> {
    let base = fixtures().join("site").join(part);
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

/// GET on loopback with extra headers: `Some((status, head, body))`, `None` when nothing answers.
fn get_with(port: u16, path: &str, headers: &str) -> Option<(u16, String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: Mozilla/5.0\r\n{headers}\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    Some((status, head.to_string(), body.trim().to_string()))
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    get_with(port, path, "").map(|(s, _, b)| (s, b))
}

/// The local npm registry (tests/fixtures/npm-registry.py): astro-tractstack versions are lines of
/// `<dir>/astro-tractstack.versions`; every other package comes from the real registry.
struct Registry {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Registry {
    fn start(dir: PathBuf) -> Registry {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("astro-tractstack.versions"), "2.0.0\n").unwrap();
        let mut child = Command::new("python3")
            .arg(fixtures().join("npm-registry.py"))
            .arg(&dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the npm registry");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("the registry prints its port");
        Registry {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}/"),
        }
    }

    /// Publishes a new astro-tractstack version.
    fn publish(&self, version: &str) {
        let path = self.dir.join("astro-tractstack.versions");
        let mut versions = std::fs::read_to_string(&path).unwrap();
        versions.push_str(&format!("{version}\n"));
        std::fs::write(path, versions).unwrap();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a fixture site is installed.
struct Setup {
    /// `None` for the main install, `Some(site)` for a dedicated one under `sites/<site>`.
    site: Option<&'static str>,
    /// pm2's exec mode for the frontend: "fork" (the installer's) or "cluster".
    pm2_mode: &'static str,
    /// Whether etc/t8k-ports.conf lists the site.
    ports_listed: bool,
    /// The default tenant's status in the backend's registry (config/t8k/tenants.json).
    default_status: &'static str,
    /// Tenants with a config directory and env.json besides `default`.
    tenants: &'static [&'static str],
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            site: None,
            pm2_mode: "fork",
            ports_listed: true,
            default_status: "active",
            tenants: &["blue"],
        }
    }
}

/// A TractStack install serving v1, as the installer (and one run of the concierge) leaves it.
struct Site {
    root: Root,
    registry: Registry,
    base: PathBuf,
    backend: PathBuf,
    frontend: PathBuf,
    data: PathBuf,
    unit: String,
    pm2_name: String,
    target: String,
    go_port: u16,
    astro_port: u16,
    pm2_home: PathBuf,
}

impl Site {
    fn new() -> Site {
        Site::with(Setup::default())
    }

    fn with(setup: Setup) -> Site {
        require("go", "version");
        require("pnpm", "--version");
        require("pm2", "--version");
        let root = Root::new();
        // The real pm2, not the recording stand-in; the journal of the fake systemctl's units.
        std::fs::remove_file(root.fakes.join("bin/pm2")).unwrap();
        std::os::unix::fs::symlink(
            fixtures().join("journalctl"),
            root.fakes.join("bin/journalctl"),
        )
        .unwrap();
        let registry = Registry::start(root.path.join("registry"));
        let (go_port, astro_port) = (free_port(), free_port());
        let (base, key, unit, pm2_name, target) = match setup.site {
            None => (
                root.path.clone(),
                "main".to_string(),
                "tractstack-go".to_string(),
                "astro-main".to_string(),
                "main".to_string(),
            ),
            Some(s) => (
                root.path.join("sites").join(s),
                s.to_string(),
                format!("tractstack-go@{s}"),
                format!("astro-{s}"),
                format!("dedicated/{s}"),
            ),
        };
        let ports = if setup.ports_listed {
            format!("{key}={go_port},{astro_port}\n")
        } else {
            // Another site's line only: this one is missing.
            "other=10999,20999\n".to_string()
        };
        std::fs::write(root.path.join("etc/t8k-ports.conf"), ports).unwrap();

        // The backend's data, as the installer and the backend's first start leave it.
        let data = base.join("t8k-go-server");
        let config = data.join("config");
        for tenant in std::iter::once(&"default").chain(setup.tenants) {
            std::fs::create_dir_all(config.join(tenant)).unwrap();
            std::fs::write(config.join(tenant).join("env.json"), "{}\n").unwrap();
        }
        std::fs::create_dir_all(config.join("t8k")).unwrap();
        let listed: Vec<String> = std::iter::once(&"default")
            .chain(setup.tenants)
            .map(|t| {
                let status = if *t == "default" {
                    setup.default_status
                } else {
                    "active"
                };
                format!(
                    "\"{t}\":{{\"tenantId\":\"{t}\",\"domains\":[\"*\"],\"status\":\"{status}\"}}"
                )
            })
            .collect();
        std::fs::write(
            config.join("t8k/tenants.json"),
            format!("{{\"tenants\":{{{}}}}}\n", listed.join(",")),
        )
        .unwrap();

        let remotes = root.path.join("remotes");
        let backend = git_repo(
            &remotes.join(format!("{key}-tractstack-go.git")),
            &base.join("src/tractstack-go"),
            &refs(&fixture("backend")),
        );
        let frontend = git_repo(
            &remotes.join(format!("{key}-my-tractstack.git")),
            &base.join("src/my-tractstack"),
            &refs(&fixture("frontend")),
        );
        let backend_src = base.join("src/tractstack-go");
        let frontend_src = base.join("src/my-tractstack");
        // The installer's .env files.
        std::fs::write(
            backend_src.join(".env"),
            format!(
                "GO_BACKEND_PATH={}/\nPORT={go_port}\nGIN_MODE=release\nENABLE_MULTI_TENANT=false\n",
                data.display()
            ),
        )
        .unwrap();
        std::fs::write(
            frontend_src.join(".env"),
            format!(
                "PRIVATE_GO_BACKEND_PATH={}/\nPUBLIC_GO_BACKEND=http://127.0.0.1:{go_port}\nPUBLIC_TENANTID=default\nPUBLIC_ENABLE_MULTI_TENANT=false\n",
                data.display()
            ),
        )
        .unwrap();
        let binary = base.join("bin/tractstack-go");
        std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
        // The installer's unit: WorkingDirectory= the sources, GO_BACKEND_PATH and PORT set, run as t8k
        // (whose $HOME is the root). The ports file may not list the site, the unit still knows its port.
        std::fs::write(
            root.fakes.join("units").join(&unit),
            format!(
                "cd {} && HOME={} GO_BACKEND_PATH={}/ PORT={go_port} WARMUP_MS=${{WARMUP_MS:-1000}} exec {}\n",
                backend_src.display(),
                root.path.display(),
                data.display(),
                binary.display()
            ),
        )
        .unwrap();
        let site = Site {
            pm2_home: root.path.join("pm2"),
            root,
            registry,
            data,
            base,
            backend,
            frontend,
            unit,
            pm2_name,
            target,
            go_port,
            astro_port,
        };
        site.sh(
            &backend_src,
            "go",
            &[
                "build",
                "-tags",
                "sqlite_fts5",
                "-o",
                binary.to_str().unwrap(),
                "./cmd/tractstack-go",
            ],
        );
        site.sh(&frontend_src, "pnpm", &["install", "--frozen-lockfile"]);
        site.sh(&frontend_src, "pnpm", &["build"]);
        site.sh(&site.root.path, "systemctl", &["start", &site.unit]);
        let port = astro_port.to_string();
        site.sh_env(
            &frontend_src,
            "pm2",
            &["start", "ecosystem.config.cjs"],
            &[
                ("ASTRO_PORT", &port),
                ("ASTRO_PM2_MODE", setup.pm2_mode),
                ("ASTRO_PM2_NAME", &site.pm2_name),
            ],
        );
        if setup.default_status == "active" {
            wait_until(Duration::from_secs(30), "v1 to be served", || {
                site.serving() == (Some("v1".into()), Some("v1".into()))
            });
        } else {
            wait_until(Duration::from_secs(30), "both services to answer", || {
                get(site.go_port, "/health").is_some() && get(site.astro_port, "/").is_some()
            });
        }
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
            .env("npm_config_registry", &self.registry.url)
            .env("ASTRO_TELEMETRY_DISABLED", "1")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
    }

    fn frontend_src(&self) -> PathBuf {
        self.base.join("src/my-tractstack")
    }

    /// The frontend's page, if `/` answers 200.
    fn page(&self) -> Option<String> {
        get(self.astro_port, "/")
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b)
    }

    /// The text of the page element `<tag ...>` whose opening ends with `open`.
    fn page_part(&self, open: &str, close: &str) -> Option<String> {
        let page = self.page()?;
        let start = page.find(open)? + open.len();
        Some(page[start..start + page[start..].find(close)?].to_string())
    }

    /// What both services serve: the backend's version if it is live and its tenant ready, and the
    /// frontend page's heading.
    fn serving(&self) -> (Option<String>, Option<String>) {
        let ready = get_with(self.go_port, "/api/v1/health", "X-Tenant-ID: default\r\n")
            .is_some_and(|(s, _, b)| s == 200 && b.contains("\"healthy\":true"));
        let backend = get(self.go_port, "/health")
            .filter(|(s, _)| *s == 200 && ready)
            .and_then(|(_, b)| {
                let v: serde_json::Value = serde_json::from_str(&b).ok()?;
                Some(v["version"].as_str()?.to_string())
            });
        (backend, self.page_part("font-bold\">", "</h1>"))
    }

    /// The Tailwind whitelist the backend reads for a tenant, from its own data directory.
    fn served_whitelist(&self, tenant: &str) -> Vec<String> {
        let (status, _, body) = get_with(
            self.go_port,
            "/api/v1/fixture/whitelist",
            &format!("X-Tenant-ID: {tenant}\r\n"),
        )
        .expect("the backend answers");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["safelist"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    }

    fn engine(&self, args: &[&str]) -> Command {
        let mut c = self.root.cmd(args);
        c.env("PM2_HOME", &self.pm2_home)
            .env("npm_config_registry", &self.registry.url)
            .env("ASTRO_TELEMETRY_DISABLED", "1");
        c
    }

    fn trigger(&self, line: &str) -> Output {
        self.root
            .trigger(&format!("build-{}.csv", ulid_like()), &format!("{line}\n"));
        self.engine(&["run"]).output().unwrap()
    }

    /// Triggers a build of this site; returns the run and the part of the build log it wrote.
    fn build(&self, extra: &str) -> (Output, String) {
        let before = self.root.log().len();
        let line = match self.target.strip_prefix("dedicated/") {
            Some(s) => format!("type=dedicated,site={s},command=build{extra}"),
            None => format!("type=main,command=build{extra}"),
        };
        let out = self.trigger(&line);
        let log = self.root.log()[before..].to_string();
        (out, log)
    }

    fn record(&self) -> serde_json::Value {
        let name = self.target.replace('/', "_");
        let path = self
            .root
            .path
            .join("state/.t8k-engine/releases")
            .join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no release record {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    /// Writes the operator's copy of lib/common.rhai: the built-in one with `from` replaced by `to`.
    fn edit_common(&self, from: &str, to: &str) {
        let builtin = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/common.rhai"),
        )
        .unwrap();
        assert!(builtin.contains(from), "lib/common.rhai has no `{from}`");
        self.root
            .script("lib/common.rhai", &builtin.replace(from, to));
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
            .args(["stop", &self.unit])
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

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
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
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    assert_eq!(site.serving(), (Some("v2".into()), Some("v2".into())));
    // Built as t8k-concierge.sh builds: with full-text search.
    assert!(log.contains("$ go build -tags sqlite_fts5 -o"), "{log}");
    // Liveness first, then the tenant's readiness with its header.
    let live = log
        .find(&format!(
            "http_check http://127.0.0.1:{}/health: status 200",
            site.go_port
        ))
        .expect("liveness checked");
    let ready = log
        .find(&format!(
            "http_check http://127.0.0.1:{}/api/v1/health: status 200",
            site.go_port
        ))
        .expect("readiness checked");
    assert!(live < ready, "{log}");
    // The backend's monitors log alerts with severity=fatal at every start: not a failed release.
    assert!(
        !log.contains("no journal to read"),
        "the journal is read: {log}"
    );
    let journal = std::fs::read_to_string(site.root.fakes.join("run/tractstack-go.log")).unwrap();
    assert!(journal.contains("severity=fatal"), "{journal}");
    // In fork mode, as the installer runs it, the log says what a reload costs.
    assert!(
        log.contains("pm2 runs astro-main in fork mode")
            && log.contains("frontend is down until Node listens again"),
        "{log}"
    );

    // One scan, written into each tenant the backend knows and nowhere else; the backend reads it.
    assert_eq!(log.matches("step `whitelist` started").count(), 1, "{log}");
    for tenant in ["default", "blue"] {
        let classes = site.served_whitelist(tenant);
        assert!(
            classes.contains(&"font-bold".to_string())
                && classes.contains(&"bg-red-500".to_string()),
            "{tenant}: {classes:?}"
        );
    }
    assert!(
        !site.data.join("config/t8k/tailwindWhitelist.json").exists(),
        "config/t8k is the tenant registry, not a tenant"
    );
    assert!(
        site.root.path.join("bin/tractstack-go.prev").is_file(),
        "the previous binary is kept"
    );
    assert!(
        site.frontend_src()
            .join("dist.prev/server/entry.mjs")
            .is_file(),
        "the previous dist is kept"
    );

    let record = site.record();
    assert_eq!(
        record["built"],
        serde_json::json!({"backend": true, "frontend": true})
    );
    assert_eq!(
        record["env"].as_str(),
        Some(sha256(&site.frontend_src().join(".env")).as_str())
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
    let (f0, _) = span("install frontend");
    let (_, f2) = span("build frontend");
    assert!(
        b0 < f2 && f0 < b1,
        "the builds overlap: backend {b0}..{b1}, frontend {f0}..{f2}"
    );
}

#[test]
fn an_unchanged_retrigger_builds_nothing_but_still_checks_health() {
    let site = Site::new();
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(log.contains("nothing changed"), "{log}");
    assert!(
        log.contains("step `update astro-tractstack` done"),
        "astro-tractstack is updated on every build, as the concierge did: {log}"
    );
    assert!(
        !log.contains("step `build backend` started")
            && !log.contains("step `build frontend` started"),
        "{log}"
    );
    assert!(
        log.contains("step `check backend` done") && log.contains("step `check frontend` done"),
        "{log}"
    );

    let (out, log) = site.build(",force=true");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        log.contains("step `build backend` started")
            && log.contains("step `build frontend` started"),
        "force rebuilds: {log}"
    );
}

#[test]
fn a_backend_that_needs_setup_is_a_warning_not_a_rollback() {
    // A fresh install: the default tenant is inactive, the backend answers {"needsSetup":true} and the
    // frontend's `/` redirects to /storykeep/init.
    let site = Site::with(Setup {
        default_status: "inactive",
        ..Setup::default()
    });
    let (status, head, _) = get_with(site.astro_port, "/", "").unwrap();
    assert!(status == 302 && head.contains("/storykeep/init"), "{head}");
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "v2\n")],
        "backend v2",
    );
    commit(&site.frontend, &[("version.txt", "v2\n")], "frontend v2");
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    assert!(
        log.contains("tenant default is not set up yet (needsSetup)"),
        "{log}"
    );
    assert!(log.contains("(redirect to /storykeep/init)"), "{log}");
    assert!(!log.contains("rolling back"), "{log}");
    assert_eq!(site.record()["built"]["backend"], true);
    // Once set up, the same build serves.
    std::fs::write(
        site.data.join("config/t8k/tenants.json"),
        "{\"tenants\":{\"default\":{\"status\":\"active\"}}}\n",
    )
    .unwrap();
    assert_eq!(site.serving(), (Some("v2".into()), Some("v2".into())));
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
fn a_backend_that_fails_its_health_check_or_logs_a_fatal_error_is_rolled_back() {
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
            && first.contains("status 503"),
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

    // Healthy, but its journal says it is dying.
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "fatal-v3\n")],
        "backend that logs a fatal error",
    );
    let (out, _) = site.build("");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = site.root.reason(&site.root.failed()[1]);
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains("rolled back: the journal of tractstack-go since the restart says:")
            && first.contains("level=FATAL msg=\"database connection lost\""),
        "{reason}"
    );
    assert_eq!(site.serving(), (Some("v1".into()), Some("v1".into())));
}

#[test]
fn the_default_build_tags_are_the_concierges_and_stay_configurable() {
    let site = Site::new();
    // An operator who drops the flags gets a backend without full-text search, which reports itself
    // unhealthy: the release is rolled back.
    site.edit_common(
        "export const GO_BUILD_FLAGS = [\"-tags\", \"sqlite_fts5\"];",
        "export const GO_BUILD_FLAGS = [];",
    );
    commit(
        &site.backend,
        &[("cmd/tractstack-go/version.txt", "v2\n")],
        "backend v2",
    );
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("$ go build -o"), "{log}");
    let reason = site.root.reason(&site.root.failed()[0]);
    assert!(
        reason.lines().next().unwrap().contains("status 503"),
        "{reason}"
    );
    assert_eq!(site.serving().0, Some("v1".into()));
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
        "serves but logs a fatal error",
    );
    let out = site.trigger("type=main,command=build");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let reason = site.root.reason(&site.root.failed()[0]);
    let first = reason.lines().next().unwrap();
    assert!(
        first.contains("rolled back: pm2's error log of astro-main since the restart says: {\"level\":\"fatal\"")
            && first.contains("cannot reach the database"),
        "{reason}"
    );
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
    let mut engine = site.engine(&["run"]).spawn().unwrap();
    wait_until(
        Duration::from_secs(60),
        "the frontend build to start",
        || site.root.log().contains("step `build frontend` started"),
    );
    engine.kill().unwrap();
    engine.wait().unwrap();
    assert_eq!(site.serving(), (Some("v1".into()), Some("v1".into())));
    assert!(site.frontend_src().join("dist/server/entry.mjs").is_file());
    assert!(
        !site.frontend_src().join("dist.prev").exists(),
        "nothing was switched"
    );
    // The next run stops the orphaned build before it builds again; make that one quick.
    commit(&site.frontend, &[("version.txt", "v3\n")], "fast again");
    let out = site.engine(&["run"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        site.root.log()
    );
    assert_eq!(site.serving().1, Some("v3".into()));
}

#[test]
fn a_new_astro_tractstack_is_installed_built_and_served_unless_pinned() {
    // In cluster mode, as the README recommends: no fork-mode warning.
    let site = Site::with(Setup {
        pm2_mode: "cluster",
        ..Setup::default()
    });
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("pm2 runs astro-main in cluster mode"), "{log}");
    assert!(!log.contains("fork mode"), "{log}");
    assert_eq!(
        site.page_part("id=\"astro-tractstack\">", "</p>"),
        Some("2.0.0".into())
    );

    site.registry.publish("2.0.1");
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    assert!(log.contains("package.json changed"), "{log}");
    assert!(log.contains("step `install frontend` done"), "{log}");
    assert_eq!(
        site.page_part("id=\"astro-tractstack\">", "</p>"),
        Some("2.0.1".into())
    );
    let package = std::fs::read_to_string(site.frontend_src().join("package.json")).unwrap();
    assert!(
        package.contains("\"astro-tractstack\": \"^2.0.1\""),
        "{package}"
    );
    let record = site.record();
    assert_eq!(
        record["lockfile"].as_str(),
        Some(sha256(&site.frontend_src().join("pnpm-lock.yaml")).as_str())
    );
    assert_eq!(
        record["package_json"].as_str(),
        Some(sha256(&site.frontend_src().join("package.json")).as_str())
    );

    // Nothing new: the update changes nothing and nothing is built.
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("nothing changed"), "{log}");

    // Pinned: a new release is not taken.
    site.edit_common(
        "export const ASTRO_TRACTSTACK = \"latest\";",
        "export const ASTRO_TRACTSTACK = \"pinned\";",
    );
    site.registry.publish("2.0.2");
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(!log.contains("update astro-tractstack"), "{log}");
    assert!(log.contains("nothing changed"), "{log}");
    assert_eq!(
        site.page_part("id=\"astro-tractstack\">", "</p>"),
        Some("2.0.1".into())
    );
}

#[test]
fn local_edits_and_env_changes_are_built_and_recorded() {
    let site = Site::new();
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    let clean = site.record()["local_changes"].clone();

    // An operator edits a tracked file in place, as the concierge's "skip the pull on a dirty tree" allows.
    std::fs::write(site.frontend_src().join("version.txt"), "v1-edited\n").unwrap();
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    assert!(
        log.contains("(local edits (1 file(s): version.txt))"),
        "{log}"
    );
    assert!(!log.contains("step `build backend` started"), "{log}");
    assert_eq!(site.serving().1, Some("v1-edited".into()));
    let edited = site.record()["local_changes"].clone();
    assert!(edited.is_string() && edited != clean, "{edited} vs {clean}");

    // The same edits again: nothing to build.
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("nothing changed"), "{log}");

    // A PUBLIC_* variable in .env, which Astro inlines at build time.
    let env = site.frontend_src().join(".env");
    let mut text_env = std::fs::read_to_string(&env).unwrap();
    text_env.push_str("PUBLIC_TAGLINE=fresh words\n");
    std::fs::write(&env, text_env).unwrap();
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains(".env changed"), "{log}");
    assert_eq!(
        site.page_part("id=\"tagline\">", "</p>"),
        Some("fresh words".into())
    );
    assert_eq!(site.record()["env"].as_str(), Some(sha256(&env).as_str()));
}

#[test]
fn a_dedicated_site_missing_from_the_ports_file_is_checked_as_its_tenant_where_its_backend_reads() {
    let site = Site::with(Setup {
        site: Some("acme"),
        ports_listed: false,
        tenants: &[],
        ..Setup::default()
    });
    // A leftover directory that is no tenant (no env.json).
    std::fs::create_dir_all(site.data.join("config/old-backup")).unwrap();
    commit(&site.frontend, &[("version.txt", "v2\n")], "frontend v2");
    let (out, log) = site.build("");
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", text(&out));
    assert!(
        log.contains(&format!(
            "backend {} from PORT in {}/.env",
            site.go_port,
            site.base.join("src/tractstack-go").display()
        )) && log.contains(&format!(
            "frontend {} from PORT in pm2's environment of astro-acme",
            site.astro_port
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "the backend reads {} (GO_BACKEND_PATH in",
            site.data.display()
        )),
        "{log}"
    );
    assert_eq!(site.serving(), (Some("v1".into()), Some("v2".into())));
    let classes = site.served_whitelist("default");
    assert!(classes.contains(&"font-bold".to_string()), "{classes:?}");
    assert!(!site.data.join("config/t8k/tailwindWhitelist.json").exists());
    assert!(
        !site
            .data
            .join("config/old-backup/tailwindWhitelist.json")
            .exists()
    );
    assert!(
        !site.root.path.join("t8k-go-server").exists(),
        "nothing is written into the main install's data"
    );
}
