//! A server full of dedicated sites for tests and the sites benchmark: one TractStack root with N sites
//! under `sites/<S>/`, each with its own clone of one `tractstack-go` remote (the faithful fixture backend,
//! built for real with `go`), its own `my-tractstack` frontend and remote (built for real with `pnpm`, served
//! by real pm2 in fork mode, as the installer runs it) and its own backend unit run by the fake systemctl;
//! astro-tractstack from the local npm registry. Everything it starts stops when it drops.
#![allow(dead_code)]

pub mod bench;
pub mod report;
pub mod yardstick;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub use super::common::site::ulid_like;
use super::common::site::{Registry, fixture, fixtures, free_port, refs};
use super::common::{Daemon, Root, commit, git, git_repo, text, wait_until};

/// GET on loopback: `Some((status, body))`, `None` when nothing answers.
pub fn get(port: u16, path: &str, headers: &str) -> Option<(u16, String)> {
    super::common::site::get_with(port, path, headers).map(|(status, _, body)| (status, body))
}

/// One dedicated site.
pub struct Site {
    /// Its id.
    pub name: String,
    /// `<root>/sites/<name>`.
    pub base: PathBuf,
    /// A working copy that pushes to its frontend's remote.
    pub frontend_upstream: PathBuf,
    /// Its backend and frontend ports.
    pub go_port: u16,
    pub astro_port: u16,
}

impl Site {
    pub fn backend_src(&self) -> PathBuf {
        self.base.join("src/tractstack-go")
    }

    pub fn frontend_src(&self) -> PathBuf {
        self.base.join("src/my-tractstack")
    }

    pub fn binary(&self) -> PathBuf {
        self.base.join("bin/tractstack-go")
    }

    pub fn unit(&self) -> String {
        format!("tractstack-go@{}", self.name)
    }

    /// The astro-tractstack version the frontend's page was built with, if `/` answers 200.
    pub fn astro_tractstack(&self) -> Option<String> {
        let (_, page) = get(self.astro_port, "/", "").filter(|(s, _)| *s == 200)?;
        let open = "id=\"astro-tractstack\">";
        let start = page.find(open)? + open.len();
        Some(page[start..start + page[start..].find("</p>")?].to_string())
    }

    /// The backend's version if it is live and its tenant ready, and the frontend page's heading.
    pub fn serving(&self) -> (Option<String>, Option<String>) {
        let ready = get(self.go_port, "/api/v1/health", "X-Tenant-ID: default\r\n")
            .is_some_and(|(s, b)| s == 200 && b.contains("\"healthy\":true"));
        let backend = get(self.go_port, "/health", "")
            .filter(|(s, _)| *s == 200 && ready)
            .and_then(|(_, b)| {
                let v: serde_json::Value = serde_json::from_str(&b).ok()?;
                Some(v["version"].as_str()?.to_string())
            });
        let page = get(self.astro_port, "/", "").filter(|(s, _)| *s == 200);
        let heading = page.and_then(|(_, p)| {
            let open = "font-bold\">";
            let start = p.find(open)? + open.len();
            Some(p[start..start + p[start..].find("</h1>")?].to_string())
        });
        (backend, heading)
    }
}

/// A TractStack root serving N dedicated sites at v1.
pub struct Server {
    pub root: Root,
    pub registry: Registry,
    pub pm2_home: PathBuf,
    /// A working copy that pushes to the backend remote every site clones.
    pub backend_upstream: PathBuf,
    pub sites: Vec<Site>,
    /// The backend's start-up warm-up (the fixture's WARMUP_MS).
    pub warmup_ms: u32,
}

pub fn require_tools() {
    for (tool, arg) in [("go", "version"), ("pnpm", "--version")] {
        let ok = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "`{tool}` is not installed: run `bash .ci/install.sh`");
    }
    // Any pm2 command starts a daemon in ~/.pm2 that nobody stops: only look for it.
    let pm2 = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|dir| dir.join("pm2").is_file());
    assert!(pm2, "`pm2` is not installed: run `bash .ci/install.sh`");
}

impl Server {
    /// `names` sites at v1, all on one backend commit; `config` is added to the engine's config file.
    pub fn new(names: &[&str], config: &str, warmup_ms: u32) -> Server {
        require_tools();
        let root = Root::with_config(config);
        std::fs::remove_file(root.fakes.join("bin/pm2")).unwrap();
        std::os::unix::fs::symlink(
            fixtures().join("journalctl"),
            root.fakes.join("bin/journalctl"),
        )
        .unwrap();
        let registry = Registry::start(root.path.join("registry"));
        let remotes = root.path.join("remotes");
        // The backend repository as upstream keeps it, with its .gitignore (.env is the installer's).
        let mut backend_files = fixture("backend");
        backend_files.push((".gitignore".into(), ".env\n./tractstack-go\n".into()));
        let backend_remote = remotes.join("tractstack-go.git");
        let first = root
            .path
            .join("sites")
            .join(names[0])
            .join("src/tractstack-go");
        let backend_upstream = git_repo(&backend_remote, &first, &refs(&backend_files));
        let frontend_files = fixture("frontend");
        let mut sites = Vec::new();
        let mut ports = String::new();
        for name in names {
            let base = root.path.join("sites").join(name);
            let backend_src = base.join("src/tractstack-go");
            if !backend_src.exists() {
                git(
                    &root.path,
                    &[
                        "clone",
                        "-q",
                        backend_remote.to_str().unwrap(),
                        backend_src.to_str().unwrap(),
                    ],
                );
            }
            let frontend_upstream = git_repo(
                &remotes.join(format!("{name}-my-tractstack.git")),
                &base.join("src/my-tractstack"),
                &refs(&frontend_files),
            );
            let site = Site {
                name: name.to_string(),
                base,
                frontend_upstream,
                go_port: free_port(),
                astro_port: free_port(),
            };
            ports.push_str(&format!("{name}={},{}\n", site.go_port, site.astro_port));
            sites.push(site);
        }
        std::fs::write(root.path.join("etc/t8k-ports.conf"), ports).unwrap();
        let server = Server {
            pm2_home: root.path.join("pm2"),
            root,
            registry,
            backend_upstream,
            sites,
            warmup_ms,
        };
        for site in &server.sites {
            server.install(site);
        }
        for site in &server.sites {
            wait_until(Duration::from_secs(60), "every site to serve v1", || {
                site.serving() == (Some("v1".into()), Some("v1".into()))
            });
        }
        server
    }

    /// What the installer and one run of the concierge leave: data, .env files, the unit, v1 built and
    /// running.
    fn install(&self, site: &Site) {
        let data = site.base.join("t8k-go-server");
        std::fs::create_dir_all(data.join("config/default")).unwrap();
        std::fs::write(data.join("config/default/env.json"), "{}\n").unwrap();
        std::fs::create_dir_all(data.join("config/t8k")).unwrap();
        std::fs::write(
            data.join("config/t8k/tenants.json"),
            "{\"tenants\":{\"default\":{\"tenantId\":\"default\",\"domains\":[\"*\"],\"status\":\"active\"}}}\n",
        )
        .unwrap();
        std::fs::write(
            site.backend_src().join(".env"),
            format!(
                "GO_BACKEND_PATH={}/\nPORT={}\nGIN_MODE=release\nENABLE_MULTI_TENANT=false\n",
                data.display(),
                site.go_port
            ),
        )
        .unwrap();
        std::fs::write(
            site.frontend_src().join(".env"),
            format!(
                "PRIVATE_GO_BACKEND_PATH={}/\nPUBLIC_GO_BACKEND=http://127.0.0.1:{}\nPUBLIC_TENANTID=default\nPUBLIC_ENABLE_MULTI_TENANT=false\n",
                data.display(),
                site.go_port
            ),
        )
        .unwrap();
        std::fs::create_dir_all(site.base.join("bin")).unwrap();
        std::fs::write(
            self.root.fakes.join("units").join(site.unit()),
            format!(
                "cd {} && HOME={} GO_BACKEND_PATH={}/ PORT={} WARMUP_MS=${{WARMUP_MS:-1000}} exec {}\n",
                site.backend_src().display(),
                self.root.path.display(),
                data.display(),
                site.go_port,
                site.binary().display()
            ),
        )
        .unwrap();
        let binary = site.binary();
        self.sh(
            &site.backend_src(),
            "go",
            &[
                "build",
                "-tags",
                "sqlite_fts5",
                "-o",
                binary.to_str().unwrap(),
                "./cmd/tractstack-go",
            ],
            &[],
        );
        self.sh(
            &site.frontend_src(),
            "pnpm",
            &["install", "--frozen-lockfile"],
            &[],
        );
        self.sh(&site.frontend_src(), "pnpm", &["build"], &[]);
        self.sh(&self.root.path, "systemctl", &["start", &site.unit()], &[]);
        let port = site.astro_port.to_string();
        let name = format!("astro-{}", site.name);
        self.sh(
            &site.frontend_src(),
            "pm2",
            &["start", "ecosystem.config.cjs"],
            &[
                ("ASTRO_PORT", &port),
                ("ASTRO_PM2_MODE", "fork"),
                ("ASTRO_PM2_NAME", &name),
            ],
        );
    }

    /// The environment every process of this server gets.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PM2_HOME".into(), self.pm2_home.display().to_string()),
            ("npm_config_registry".into(), self.registry.url.clone()),
            ("ASTRO_TELEMETRY_DISABLED".into(), "1".into()),
            ("WARMUP_MS".into(), self.warmup_ms.to_string()),
        ]
    }

    pub fn sh(&self, dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
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
            .envs(self.env())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The engine with this server's environment.
    pub fn engine(&self, args: &[&str]) -> Command {
        let mut c = self.root.cmd(args);
        c.envs(self.env());
        c
    }

    /// `trigger dedicated --all-sites`, then `run`; returns the run and the part of the build log it wrote.
    pub fn all_sites(&self) -> (Output, String) {
        let out = self
            .engine(&["trigger", "dedicated", "--all-sites"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        self.run()
    }

    /// `t8k-engine watch` with this server's environment (its output in `<root>/daemon.out`), watching.
    pub fn daemon(&self) -> Daemon {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let daemon = self.root.daemon(&env);
        self.root.wait_watching();
        daemon
    }

    /// A trigger for one site, then `run`.
    pub fn one(&self, site: &str, extra: &str) -> (Output, String) {
        self.root.trigger(
            &format!("build-{}.csv", ulid_like()),
            &format!("type=dedicated,site={site},command=build{extra}\n"),
        );
        self.run()
    }

    fn run(&self) -> (Output, String) {
        let before = self.root.log().len();
        let out = self.engine(&["run"]).output().unwrap();
        let log = self.root.log()[before..].to_string();
        (out, log)
    }

    pub fn site(&self, name: &str) -> &Site {
        self.sites.iter().find(|s| s.name == name).unwrap()
    }

    /// `status --json`.
    pub fn status(&self) -> serde_json::Value {
        let out = self.engine(&["status", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `history --json`, newest first.
    pub fn history(&self, n: usize) -> Vec<serde_json::Value> {
        let out = self
            .engine(&["history", "--json", "-n", &n.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        all["jobs"].as_array().cloned().unwrap_or_default()
    }

    /// The release record of a site.
    pub fn record(&self, site: &str) -> serde_json::Value {
        let path = self
            .root
            .path
            .join(format!("state/.t8k-engine/releases/dedicated_{site}.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// A new backend commit every site's clone will pull.
    pub fn push_backend(&self, version: &str) -> String {
        commit(
            &self.backend_upstream,
            &[("cmd/tractstack-go/version.txt", &format!("{version}\n"))],
            &format!("backend {version}"),
        )
    }

    /// A new commit of one site's frontend.
    pub fn push_frontend(&self, site: &str, version: &str) -> String {
        commit(
            &self.site(site).frontend_upstream,
            &[("version.txt", &format!("{version}\n"))],
            &format!("frontend {version}"),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("pm2")
            .arg("kill")
            .env("PM2_HOME", &self.pm2_home)
            .output();
        for site in &self.sites {
            let _ = Command::new(self.root.fakes.join("bin/systemctl"))
                .args(["stop", &site.unit()])
                .env("FAKE_DIR", &self.root.fakes)
                .output();
        }
    }
}

/// Steps of the jobs in a `history --json` list, as (job's target, step).
pub fn steps(jobs: &[serde_json::Value]) -> Vec<(String, serde_json::Value)> {
    jobs.iter()
        .flat_map(|j| {
            let target = j["target"].as_str().unwrap_or("").to_string();
            j["steps"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |s| (target.clone(), s))
        })
        .collect()
}
