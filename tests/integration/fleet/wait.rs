//! `t8k-engine trigger … --fleet --wait`: publishes the job, follows it on its host's records in the events
//! stream and exits with its result: 0 when its job succeeded, 1 when it failed or was set aside by the
//! host's engine or by its bridge. A user who may not read the events stream is told before anything is
//! queued.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Daemon, wait_until};
use crate::fleet_harness::{Host, Server, with_nats};

/// Marks each job, and fails the jobs of tenant `bad` at a step.
const SCRIPT: &str = r#"
fn build(job) {
    step("compile", || run("mark", [`start ${job.trigger} ${job.site}`]));
    if job.tenant == "bad" { step("check", || throw "health check saw status 500"); }
}
"#;

/// A `trigger … --fleet --wait` running, its output going to files.
struct Waiting {
    child: Daemon,
    out: PathBuf,
    err: PathBuf,
}

/// `t8k-engine trigger dedicated --site SITE --tenant TENANT --command COMMAND --fleet --wait` on the
/// machine `machine` (`operator`, whose user is admin, or `producer`), started.
fn start_wait(server: &Server, machine: &str, tenant: &str, command: &str) -> Waiting {
    start_wait_with(server, machine, tenant, command, &[])
}

/// `start_wait` with more arguments.
fn start_wait_with(
    server: &Server,
    machine: &str,
    tenant: &str,
    command: &str,
    more: &[&str],
) -> Waiting {
    let name = ulid::Ulid::new();
    let (out, err) = (
        server.path.join(format!("{name}.out")),
        server.path.join(format!("{name}.err")),
    );
    let child = Command::new(env!("CARGO_BIN_EXE_t8k-engine"))
        .args(["trigger", "dedicated", "--site", "s1", "--tenant", tenant])
        .args(["--command", command, "--fleet", "--wait"])
        .args(more)
        .env(
            "T8K_ENGINE_CONFIG",
            server.path.join(format!("{machine}.toml")),
        )
        .env_remove("T8K_ROOT")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    Waiting {
        child: Daemon(child),
        out,
        err,
    }
}

impl Waiting {
    /// Waits (with a deadline) for it to end: its exit code, stdout and stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let mut code = None;
        wait_until(
            Duration::from_secs(60),
            "trigger --wait to end",
            || match self.child.0.try_wait() {
                Ok(Some(status)) => {
                    code = status.code();
                    true
                }
                _ => false,
            },
        );
        let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        (code, read(&self.out), read(&self.err))
    }
}

/// Jobs waiting in the work-queue stream.
fn queued(server: &Server) -> u64 {
    with_nats(server, "admin", async |_, js| {
        let mut jobs = js.get_stream("T8K_JOBS").await.unwrap();
        jobs.info().await.unwrap().state.messages
    })
}

#[test]
fn trigger_fleet_wait_follows_the_job_on_its_host_and_exits_with_its_result() {
    let server = Server::start(&["h1", "h2"]);
    server.init(&["h1", "h2"], 2, 5);
    server.site("s1", "h1");
    let mut h = Host::new(&server, "h1", "");
    h.root.script("dedicated.rhai", SCRIPT);
    h.start_daemon(&[]);
    h.start_bridge(&[]);

    let (code, out, err) = start_wait(&server, "operator", "good", "build").finish();
    assert_eq!(code, Some(0), "{out}{err}");
    for needle in [
        "queued for host h1",
        "started on h1: dedicated/s1 build",
        "  step compile",
        "succeeded in",
    ] {
        assert!(out.contains(needle), "no {needle:?} in: {out}{err}");
    }
    assert_eq!(h.marks().len(), 1, "it ended after its job ran");

    let (code, out, err) = start_wait(&server, "operator", "bad", "build").finish();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("failed in") && out.contains("health check saw status 500"),
        "{out}{err}"
    );

    // A command the host's script lacks: its engine sets the trigger aside before any job starts.
    let (code, out, err) = start_wait(&server, "operator", "good", "nosuch").finish();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("was set aside on host h1 as failed/") && out.contains("nosuch"),
        "{out}{err}"
    );

    // A job its host's bridge sets aside: the site moved while the job waited for a stopped bridge.
    h.stop_bridge();
    let waiting = start_wait(&server, "operator", "moved", "build");
    wait_until(Duration::from_secs(30), "the job to be queued", || {
        queued(&server) == 1
    });
    server.site("s1", "h2");
    h.start_bridge(&[]);
    let (code, out, err) = waiting.finish();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("was set aside by the bridge of host h1")
            && out.contains("site `s1` is now served by host `h2`"),
        "{out}{err}"
    );
    assert_eq!(h.marks().len(), 2, "neither set-aside job ran");

    // A producer without the viewer role is told so before anything is queued.
    server.site("s1", "h1");
    let (code, out, err) = start_wait(&server, "producer", "good", "build").finish();
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("nothing was queued") && err.contains("the viewer role as well"),
        "{out}{err}"
    );
    assert_eq!(queued(&server), 0, "nothing was queued");
}

#[test]
fn trigger_fleet_wait_timeout_gives_up_following_and_leaves_the_job_queued() {
    let server = Server::start(&["h1"]);
    server.init(&["h1"], 2, 5);
    server.site("s1", "h1");
    let mut h = Host::new(&server, "h1", "");
    h.root.script("dedicated.rhai", SCRIPT);
    h.start_daemon(&[]);

    // The host's bridge is down: the job waits in the stream and the follower gives up after 2 s.
    let (code, out, err) =
        start_wait_with(&server, "operator", "good", "build", &["--timeout", "2s"]).finish();
    assert_eq!(code, Some(124), "{out}{err}");
    assert!(out.contains("queued for host h1"), "{out}{err}");
    assert!(
        err.contains("--timeout 2s ran out before job ")
            && err.contains("Nothing was cancelled")
            && err.contains("fleet history --host h1"),
        "{out}{err}"
    );
    assert_eq!(queued(&server), 1, "the job stays queued");

    // Once the bridge is back the job runs, once.
    h.start_bridge(&[]);
    wait_until(Duration::from_secs(30), "the queued job to run", || {
        h.marks().len() == 1
    });
}
