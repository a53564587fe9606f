//! Fleet test harness: a real `nats-server` (Debian's, installed by `.ci/install.sh`) on a loopback port with
//! a temporary store and the accounts/permissions `t8k-engine fleet server-config` writes, plus engine roots
//! each with its real daemon (`watch`) and bridge (`fleet`). Every process is killed when its guard drops.

pub mod bench;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::common::site::free_port;
use super::common::{Daemon, Root, wait_until};
use t8k_engine::fleet::server_conf::{self, Role, User};

/// The script every fleet host runs: marks a job's start and end with its trigger name and host.
pub const SCRIPT: &str = r#"
fn build(job) {
    run("mark", [`start ${job.trigger} ${job.site}`]);
    let pause = env("JOB_PAUSE");
    if type_of(pause) == "string" { sleep(parse_float(pause)); }
    run("mark", [`end ${job.trigger} ${job.site}`]);
}
"#;

/// A nats-server process with its store and users.
pub struct Server {
    _dir: tempfile::TempDir,
    /// The directory holding the config, store, log and password files.
    pub path: PathBuf,
    /// The client port.
    pub port: u16,
    /// The server process, `None` while it is stopped.
    pub(crate) child: Option<Child>,
    /// The users and their roles.
    pub users: Vec<User>,
}

impl Server {
    /// Starts a server with an admin, a producer, a viewer and one user per host.
    pub fn start(hosts: &[&str]) -> Server {
        Self::start_with(hosts, &[])
    }

    /// Starts a server; `producer_hosts` also get the producer role (their bridges forward an outbox).
    pub fn start_with(hosts: &[&str], producer_hosts: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap();
        let mut users = vec![
            user("admin", vec![Role::Admin]),
            user("producer", vec![Role::Producer]),
            user("viewer", vec![Role::Viewer]),
        ];
        for h in hosts {
            let mut roles = vec![Role::Host(h.to_string())];
            if producer_hosts.contains(h) {
                roles.push(Role::Producer);
            }
            users.push(user(h, roles));
        }
        for u in &users {
            let file = path.join(format!("{}.password", u.name));
            std::fs::write(&file, format!("{}\n", u.password)).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let port = free_port();
        let conf = server_conf::render(&server_conf::Plan {
            listen: format!("127.0.0.1:{port}"),
            store_dir: path.join("store"),
            users: users.clone(),
            tls: None,
        });
        std::fs::write(path.join("nats-server.conf"), conf).unwrap();
        // An operator's machine (as admin) and a producer's: configs pointing at the server.
        for (machine, user) in [("operator", "admin"), ("producer", "producer")] {
            std::fs::create_dir_all(path.join(machine)).unwrap();
            std::fs::write(
                path.join(format!("{machine}.toml")),
                format!(
                    "root = {:?}\n[fleet]\nurl = \"nats://127.0.0.1:{port}\"\nuser = \"{user}\"\npassword_file = {:?}\n",
                    path.join(machine).display().to_string(),
                    path.join(format!("{user}.password")).display().to_string()
                ),
            )
            .unwrap();
        }
        let mut server = Server {
            _dir: dir,
            path,
            port,
            child: None,
            users,
        };
        server.run();
        server
    }

    /// Starts the server process on the same port and store.
    pub(crate) fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join("server.log"))
            .unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(self.path.join("nats-server.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nats-server is installed (.ci/install.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(20), "nats-server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        wait_until(Duration::from_secs(20), "JetStream to be ready", || {
            self.log().matches("Server is ready").count() > self.starts()
        });
    }

    fn starts(&self) -> usize {
        // How many times it was ready before this start (the log is appended across restarts).
        self.log()
            .matches("Starting nats-server")
            .count()
            .saturating_sub(1)
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path.join("server.log")).unwrap_or_default()
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A user's password file.
    pub fn password_file(&self, user: &str) -> PathBuf {
        self.path.join(format!("{user}.password"))
    }

    /// A user's password.
    pub fn password(&self, user: &str) -> String {
        self.users
            .iter()
            .find(|u| u.name == user)
            .unwrap()
            .password
            .clone()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `t8k-engine ARGS` on the operator's machine (the admin user unless ARGS says otherwise).
    pub fn operator(&self, args: &[&str]) -> Output {
        self.on("operator", args)
    }

    /// `t8k-engine ARGS` on a producer's machine (user `producer`).
    pub fn producer(&self, args: &[&str]) -> Output {
        self.on("producer", args)
    }

    fn on(&self, machine: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_t8k-engine"))
            .args(args)
            .env(
                "T8K_ENGINE_CONFIG",
                self.path.join(format!("{machine}.toml")),
            )
            .env_remove("T8K_ROOT")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `fleet init` for these hosts with short test timings, asserting success.
    pub fn init(&self, hosts: &[&str], ack_wait: u64, max_deliver: u64) {
        let mut args = vec!["fleet".to_string(), "init".into()];
        for h in hosts {
            args.extend(["--host".to_string(), h.to_string()]);
        }
        args.extend([
            "--ack-wait".into(),
            ack_wait.to_string(),
            "--max-deliver".into(),
            max_deliver.to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.operator(&args);
        assert!(
            out.status.success(),
            "fleet init: {}",
            super::common::text(&out)
        );
    }

    /// `fleet sites set SITE HOST`, asserting success.
    pub fn site(&self, site: &str, host: &str) {
        let out = self.operator(&["fleet", "sites", "set", site, host]);
        assert!(
            out.status.success(),
            "sites set: {}",
            super::common::text(&out)
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn user(name: &str, roles: Vec<Role>) -> User {
    User {
        name: name.to_string(),
        password: server_conf::password().unwrap(),
        roles,
    }
}

/// One host: an engine root with its daemon and bridge.
pub struct Host {
    /// The host's name in the fleet.
    pub name: String,
    /// Its engine root.
    pub root: Root,
    /// Its daemon.
    pub daemon: Option<Daemon>,
    /// Its bridge.
    pub bridge: Option<Daemon>,
}

impl Host {
    /// A root configured for the fleet as `name`, its script installed; nothing started yet.
    pub fn new(server: &Server, name: &str, extra: &str) -> Host {
        Self::with_fleet(server, name, extra, "")
    }

    /// A root whose `[fleet]` section also gets `fleet_extra`.
    pub fn with_fleet(server: &Server, name: &str, extra: &str, fleet_extra: &str) -> Host {
        // Reports every second unless told otherwise, so tests see status changes quickly.
        let interval = if fleet_extra.contains("status_interval") {
            ""
        } else {
            "status_interval = 1\n"
        };
        let root = Root::with_config(&format!(
            "coalesce = false\n{extra}\n[fleet]\nurl = \"{}\"\nhost = \"{name}\"\npassword_file = {:?}\n{interval}{fleet_extra}\n",
            server.url(),
            server.password_file(name).display().to_string()
        ));
        root.script("dedicated.rhai", SCRIPT);
        root.script("main.rhai", SCRIPT);
        Host {
            name: name.to_string(),
            root,
            daemon: None,
            bridge: None,
        }
    }

    /// Starts the daemon (`watch`) with `envs`.
    pub fn start_daemon(&mut self, envs: &[(&str, &str)]) {
        assert!(self.daemon.is_none());
        self.daemon = Some(self.root.daemon(envs));
    }

    /// Starts the bridge (`fleet`) with `envs` (e.g. FAILPOINTS), its output appended to `bridge.out`.
    pub fn start_bridge(&mut self, envs: &[(&str, &str)]) {
        assert!(self.bridge.is_none());
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path.join("bridge.out"))
            .unwrap();
        let mut cmd = self.root.cmd(&["fleet"]);
        cmd.stdout(out.try_clone().unwrap()).stderr(out);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        self.bridge = Some(Daemon(cmd.spawn().expect("spawn t8k-engine fleet")));
    }

    /// The bridge's output so far.
    pub fn bridge_out(&self) -> String {
        std::fs::read_to_string(self.root.path.join("bridge.out")).unwrap_or_default()
    }

    /// Whether the bridge process is still alive (a failpoint may have killed it).
    pub fn bridge_alive(&mut self) -> bool {
        match &mut self.bridge {
            Some(b) => matches!(b.0.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// kill -9 of the bridge (None when it was not running).
    pub fn kill_bridge(&mut self) -> bool {
        kill9(self.bridge.take())
    }

    /// kill -9 of the daemon.
    pub fn kill_daemon(&mut self) -> bool {
        kill9(self.daemon.take())
    }

    /// Stops the bridge cleanly (SIGTERM) and returns its exit code.
    pub fn stop_bridge(&mut self) -> Option<i32> {
        self.bridge
            .take()
            .and_then(|b| super::common::stop(b, libc::SIGTERM))
    }

    /// The `start`/`end` marks: (what, trigger name).
    pub fn marks(&self) -> Vec<(String, String)> {
        self.root
            .marks()
            .into_iter()
            .filter_map(|l| {
                let mut parts = l.split(' ');
                Some((parts.next()?.to_string(), parts.next()?.to_string()))
            })
            .collect()
    }

    /// Every journal record (raw JSON lines that parse as objects), oldest first.
    pub fn journal_lines(&self) -> Vec<String> {
        let journal = t8k_engine::history::Journal::new(
            &self.root.path.join("state/.t8k-engine/history"),
            2,
            8 << 20,
        );
        journal
            .files()
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|text| {
                text.lines()
                    .filter(|l| {
                        matches!(
                            serde_json::from_str::<serde_json::Value>(l),
                            Ok(serde_json::Value::Object(_))
                        )
                    })
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn kill9(child: Option<Daemon>) -> bool {
    match child {
        Some(mut c) => {
            let alive = matches!(c.0.try_wait(), Ok(None));
            let _ = c.0.kill();
            let _ = c.0.wait();
            alive
        }
        None => false,
    }
}

/// The job id in a fleet trigger name.
pub fn job_id(trigger: &str) -> Option<String> {
    t8k_engine::fleet::names::job_id_of(trigger).map(|u| u.to_string())
}

/// Each job id's start and end counts on a host, in the order of first start.
pub fn runs(marks: &[(String, String)]) -> (Vec<String>, BTreeMap<String, (usize, usize)>) {
    let mut order = Vec::new();
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (what, trigger) in marks {
        let Some(id) = job_id(trigger) else { continue };
        let c = counts.entry(id.clone()).or_default();
        if what == "start" {
            if c.0 == 0 {
                order.push(id.clone());
            }
            c.0 += 1;
        } else {
            c.1 += 1;
        }
    }
    (order, counts)
}

/// Connects to the server as `user` inside a runtime and runs `f` (for the tests that talk NATS directly).
pub fn with_nats<T>(
    server: &Server,
    user: &str,
    f: impl AsyncFnOnce(async_nats::Client, async_nats::jetstream::Context) -> T,
) -> T {
    let runtime = t8k_engine::fleet::connect::runtime().unwrap();
    let password = server.password(user);
    let url = server.url();
    runtime.block_on(async move {
        let client = async_nats::ConnectOptions::new()
            .user_and_password(user.to_string(), password)
            .custom_inbox_prefix(format!("_INBOX.{user}"))
            .request_timeout(Some(Duration::from_secs(3)))
            .connect(url)
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client.clone());
        f(client, js).await
    })
}

/// Publishes jobs through the library's producer as `producer`: (job id, host, stream seq, duplicate).
pub fn publish(server: &Server, jobs: &[(String, ulid::Ulid)]) -> Vec<(String, String, u64, bool)> {
    with_nats(server, "producer", async |_, js| {
        let mut out = Vec::new();
        for (line, id) in jobs {
            let spec = t8k_engine::trigger::parse_line(line, 1).unwrap();
            let host = t8k_engine::fleet::producer::route(&js, &spec, None)
                .await
                .unwrap();
            let q = t8k_engine::fleet::producer::publish(
                &js,
                &host,
                &spec,
                id,
                Duration::from_secs(30),
            )
            .await
            .unwrap();
            out.push((q.id, q.host, q.seq, q.duplicate));
        }
        out
    })
}
