//! The faithful fixture site (tests/fixtures/site) installed under a temporary root, as TractStack's
//! installer leaves one: real git remotes, the fixture backend built by real `go` and run as the
//! installer's systemd unit (`unit.rs`) by a real systemd user manager booted for the site
//! (tests/common/systemd/), a real Astro frontend built by real `pnpm` and served by real pm2,
//! astro-tractstack from a local npm registry. Used by the pipeline and release tests.
//!
//! No journald runs in the manager's namespace: the unit writes its output to a file, which
//! tests/fixtures/journalctl (a stand-in for journald, not for systemd) reads for the scripts' log check.

mod unit;

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::systemd::Systemd;
use super::{Root, git_repo, text, wait_until};

pub fn require(tool: &str, arg: &str) {
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

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixture site's files under `tests/fixtures/site/<part>`.
pub fn fixture(part: &str) -> Vec<(String, String)> {
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

pub fn refs(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect()
}

/// A loopback port free when asked (another process may take it before it is used).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET on loopback with extra headers: `Some((status, head, body))`, `None` when nothing answers.
pub fn get_with(port: u16, path: &str, headers: &str) -> Option<(u16, String, String)> {
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

pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    get_with(port, path, "").map(|(s, _, b)| (s, b))
}

/// The local npm registry (tests/fixtures/npm-registry.py): astro-tractstack versions are lines of
/// `<dir>/astro-tractstack.versions`; every other package comes from the real registry.
pub struct Registry {
    pub child: Child,
    pub dir: PathBuf,
    pub url: String,
}

impl Registry {
    pub fn start(dir: PathBuf) -> Registry {
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

    /// How many requests for astro-tractstack's metadata came from a client whose user agent starts with
    /// `agent` (`npm/`: `pnpm view`, which runs npm; `pnpm/`: `pnpm up`, `pnpm install`).
    pub fn asked_by(&self, agent: &str) -> usize {
        std::fs::read_to_string(self.dir.join("requests.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.split_once('\t')
                    .is_some_and(|(ua, path)| ua.starts_with(agent) && path == "/astro-tractstack")
            })
            .count()
    }

    /// Publishes a new astro-tractstack version.
    pub fn publish(&self, version: &str) {
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
pub struct Setup {
    /// `None` for the main install, `Some(site)` for a dedicated one under `sites/<site>`.
    pub site: Option<&'static str>,
    /// pm2's exec mode for the frontend: "fork" (the installer's) or "cluster".
    pub pm2_mode: &'static str,
    /// Whether etc/t8k-ports.conf lists the site.
    pub ports_listed: bool,
    /// The default tenant's status in the backend's registry (config/t8k/tenants.json).
    pub default_status: &'static str,
    /// Tenants with a config directory and env.json besides `default`.
    pub tenants: &'static [&'static str],
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

/// A TractStack install serving v1, as the installer (and one run of the concierge) leaves it, with its
/// backend a unit of a real systemd user manager of its own.
pub struct Site {
    /// Dropped first of the fields: the namespace, and the backend in it, die before the root goes.
    pub sd: Systemd,
    pub root: Root,
    pub registry: Registry,
    pub base: PathBuf,
    /// Working copies that push to the site's remotes.
    pub backend: PathBuf,
    pub frontend: PathBuf,
    pub data: PathBuf,
    /// The backend's unit, as the engine names it (`tractstack-go`, `tractstack-go@SITE`).
    pub unit: String,
    pub pm2_name: String,
    pub target: String,
    pub go_port: u16,
    pub astro_port: u16,
    pub pm2_home: PathBuf,
}

/// Where a site lives and what it is called, from its setup.
struct Names {
    base: PathBuf,
    /// Its key in etc/t8k-ports.conf and in the remotes' names.
    key: String,
    unit: String,
    pm2_name: String,
    target: String,
}

impl Names {
    fn of(root: &Root, site: Option<&str>) -> Names {
        match site {
            None => Names {
                base: root.path.clone(),
                key: "main".into(),
                unit: "tractstack-go".into(),
                pm2_name: "astro-main".into(),
                target: "main".into(),
            },
            Some(s) => Names {
                base: root.path.join("sites").join(s),
                key: s.into(),
                unit: format!("tractstack-go@{s}"),
                pm2_name: format!("astro-{s}"),
                target: format!("dedicated/{s}"),
            },
        }
    }
}

impl Site {
    /// The main install; `None` (after saying why) where a real systemd cannot run.
    pub fn new() -> Option<Site> {
        Site::with(Setup::default())
    }

    pub fn with(setup: Setup) -> Option<Site> {
        require("go", "version");
        require("pnpm", "--version");
        require("pm2", "--version");
        let booted = Instant::now();
        let sd = Systemd::boot()?;
        eprintln!("systemd user manager booted in {:?}", booted.elapsed());
        let root = Root::new();
        // The real pm2 and the real systemctl of the site's manager, not the fakes; the stand-in for
        // journald, which reads what the units write.
        std::fs::remove_file(root.fakes.join("bin/pm2")).unwrap();
        sd.replace_fake_systemctl(&root);
        std::os::unix::fs::symlink(
            fixtures().join("journalctl"),
            root.fakes.join("bin/journalctl"),
        )
        .unwrap();
        std::fs::create_dir_all(root.fakes.join("journal")).unwrap();
        let registry = Registry::start(root.path.join("registry"));
        let (go_port, astro_port) = (free_port(), free_port());
        let names = Names::of(&root, setup.site);
        let ports = if setup.ports_listed {
            format!("{}={go_port},{astro_port}\n", names.key)
        } else {
            // Another site's line only: this one is missing.
            "other=10999,20999\n".to_string()
        };
        std::fs::write(root.path.join("etc/t8k-ports.conf"), ports).unwrap();
        let data = names.base.join("t8k-go-server");
        write_backend_data(&data, &setup);
        let remotes = root.path.join("remotes");
        let backend = git_repo(
            &remotes.join(format!("{}-tractstack-go.git", names.key)),
            &names.base.join("src/tractstack-go"),
            &refs(&fixture("backend")),
        );
        let frontend = git_repo(
            &remotes.join(format!("{}-my-tractstack.git", names.key)),
            &names.base.join("src/my-tractstack"),
            &refs(&fixture("frontend")),
        );
        write_env_files(&names.base, &data, go_port);
        let (file, text) = unit::backend(&root, setup.site, go_port);
        sd.install(&file, &text);
        let site = Site {
            sd,
            pm2_home: root.path.join("pm2"),
            root,
            registry,
            data,
            base: names.base,
            backend,
            frontend,
            unit: names.unit,
            pm2_name: names.pm2_name,
            target: names.target,
            go_port,
            astro_port,
        };
        site.install(&setup);
        Some(site)
    }

    /// Builds v1 and starts both services, as the installer does.
    fn install(&self, setup: &Setup) {
        let backend_src = self.base.join("src/tractstack-go");
        let binary = self.base.join("bin/tractstack-go");
        std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
        self.sh(
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
        let frontend_src = self.frontend_src();
        self.sh(&frontend_src, "pnpm", &["install", "--frozen-lockfile"]);
        self.sh(&frontend_src, "pnpm", &["build"]);
        self.sd.ok(&["start", &self.unit]);
        // systemd loads the unit as written: it names any line it ignores, with the file's path.
        let ignored: Vec<String> = self
            .sd
            .manager_log()
            .lines()
            .filter(|l| l.contains("/systemd/user/tractstack-go"))
            .map(str::to_string)
            .collect();
        assert!(ignored.is_empty(), "systemd ignored lines: {ignored:?}");
        let port = self.astro_port.to_string();
        self.sh_env(
            &frontend_src,
            "pm2",
            &["start", "ecosystem.config.cjs"],
            &[
                ("ASTRO_PORT", &port),
                ("ASTRO_PM2_MODE", setup.pm2_mode),
                ("ASTRO_PM2_NAME", &self.pm2_name),
            ],
        );
        if setup.default_status == "active" {
            wait_until(Duration::from_secs(30), "v1 to be served", || {
                self.serving() == (Some("v1".into()), Some("v1".into()))
            });
        } else {
            wait_until(Duration::from_secs(30), "both services to answer", || {
                get(self.go_port, "/health").is_some() && get(self.astro_port, "/").is_some()
            });
        }
    }

    /// What systemd says of the backend's unit (`systemctl show -p PROP`).
    pub fn unit_says(&self, prop: &str) -> String {
        self.sd.show(&self.unit, prop)
    }

    /// Checks that the engine's `restart_systemd` had systemd restart the backend's unit once, into the
    /// release it switched in: a new invocation of the unit (`before` was the last one's id), started by the
    /// engine's `systemctl restart`, not by `Restart=` after a crash, whose main process runs the file now at
    /// `bin/tractstack-go`. Prints how long the restart step took.
    pub fn restarted_by_systemd(&self, before: &str, log: &str) {
        assert!(
            log.contains(&format!("$ systemctl restart {}", self.unit)),
            "{log}"
        );
        assert_ne!(self.unit_says("InvocationID"), before, "a new invocation");
        assert_eq!(self.unit_says("ActiveState"), "active");
        assert_eq!(self.unit_says("NRestarts"), "0", "no restart after a crash");
        let pid: u32 = self.unit_says("MainPID").parse().unwrap();
        let exe = std::fs::read_link(self.sd.inside(&format!("/proc/{pid}/exe"))).unwrap();
        assert_eq!(exe, self.base.join("bin/tractstack-go"));
        let steps = self.record()["steps"].clone();
        let restart = steps
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "restart backend")
            .unwrap_or_else(|| panic!("no restart step in {steps}"));
        eprintln!(
            "restart_systemd under a real systemd: {} ms ({})",
            restart["wall_ms"], self.unit
        );
    }

    /// The backend unit's output so far, as its journal would hold it.
    pub fn journal(&self) -> String {
        std::fs::read_to_string(
            self.root
                .fakes
                .join("journal")
                .join(format!("{}.log", self.unit)),
        )
        .unwrap_or_default()
    }

    pub fn sh(&self, dir: &Path, program: &str, args: &[&str]) {
        self.sh_env(dir, program, args, &[]);
    }

    pub fn sh_env(&self, dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) {
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

    pub fn frontend_src(&self) -> PathBuf {
        self.base.join("src/my-tractstack")
    }

    /// The frontend's page, if `/` answers 200.
    pub fn page(&self) -> Option<String> {
        get(self.astro_port, "/")
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b)
    }

    /// The text of the page element `<tag ...>` whose opening ends with `open`.
    pub fn page_part(&self, open: &str, close: &str) -> Option<String> {
        let page = self.page()?;
        let start = page.find(open)? + open.len();
        Some(page[start..start + page[start..].find(close)?].to_string())
    }

    /// What both services serve: the backend's version if it is live and its tenant ready, and the
    /// frontend page's heading.
    pub fn serving(&self) -> (Option<String>, Option<String>) {
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
    pub fn served_whitelist(&self, tenant: &str) -> Vec<String> {
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

    /// The engine, whose plain `systemctl` is the site's manager's (`replace_fake_systemctl`).
    pub fn engine(&self, args: &[&str]) -> Command {
        let mut c = self.root.cmd(args);
        c.env("PM2_HOME", &self.pm2_home)
            .env("npm_config_registry", &self.registry.url)
            .env("ASTRO_TELEMETRY_DISABLED", "1");
        c
    }

    pub fn trigger(&self, line: &str) -> Output {
        self.root
            .trigger(&format!("build-{}.csv", ulid_like()), &format!("{line}\n"));
        self.engine(&["run"]).output().unwrap()
    }

    /// Triggers a build of this site; returns the run and the part of the build log it wrote.
    pub fn build(&self, extra: &str) -> (Output, String) {
        let before = self.root.log().len();
        let line = match self.target.strip_prefix("dedicated/") {
            Some(s) => format!("type=dedicated,site={s},command=build{extra}"),
            None => format!("type=main,command=build{extra}"),
        };
        let out = self.trigger(&line);
        let log = self.root.log()[before..].to_string();
        (out, log)
    }

    pub fn record(&self) -> serde_json::Value {
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
    pub fn edit_common(&self, from: &str, to: &str) {
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
        // The backend dies with the manager's namespace, when `sd` is dropped.
    }
}

/// Increasing names, so triggers run in the order a test drops them.
pub fn ulid_like() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string()
}

pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The backend's data, as the installer and the backend's first start leave it.
fn write_backend_data(data: &Path, setup: &Setup) {
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
            format!("\"{t}\":{{\"tenantId\":\"{t}\",\"domains\":[\"*\"],\"status\":\"{status}\"}}")
        })
        .collect();
    std::fs::write(
        config.join("t8k/tenants.json"),
        format!("{{\"tenants\":{{{}}}}}\n", listed.join(",")),
    )
    .unwrap();
}

/// The installer's .env files of the backend and the frontend.
fn write_env_files(base: &Path, data: &Path, go_port: u16) {
    std::fs::write(
        base.join("src/tractstack-go/.env"),
        format!(
            "GO_BACKEND_PATH={}/\nPORT={go_port}\nGIN_MODE=release\nENABLE_MULTI_TENANT=false\n",
            data.display()
        ),
    )
    .unwrap();
    std::fs::write(
        base.join("src/my-tractstack/.env"),
        format!(
            "PRIVATE_GO_BACKEND_PATH={}/\nPUBLIC_GO_BACKEND=http://127.0.0.1:{go_port}\nPUBLIC_TENANTID=default\nPUBLIC_ENABLE_MULTI_TENANT=false\n",
            data.display()
        ),
    )
    .unwrap();
}
