//! Host functions against real things: git repositories with bare remotes, a unit of a real systemd user
//! manager (tests/common/systemd/) restarted by `restart_systemd`, the recording pm2, and a real HTTP
//! server on loopback.

use std::io::{Read, Write};
use std::net::TcpListener;

use crate::common::site::free_port;
use crate::common::systemd::Systemd;
use crate::common::{Root, commit, git, git_repo, text};

/// Serves `status` to every request on a loopback port, in a background thread.
fn http_server(status: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            );
        }
    });
    port
}

const PIPELINE: &str = r#"
import "lib/common" as t8k;
fn build(job) {
    t8k::pull(job);
    step("restart backend", || restart_systemd(job.unit));
    step("health", || http_check(`http://127.0.0.1:${job.go_port}/api/v1/health`, #{ timeout: 3 }));
    step("reload frontend", || pm2("reload", job.pm2_name));
}
"#;

#[test]
fn pull_restart_check_and_reload_for_real() {
    let Some(sd) = Systemd::boot() else {
        return;
    };
    let root = Root::new();
    sd.replace_fake_systemctl(&root);
    sd.install(
        "tractstack-go@.service",
        "[Service]\nExecStart=/bin/sleep 300\nStandardOutput=null\n",
    );
    let port = http_server(200);
    std::fs::write(
        root.path.join("etc/t8k-ports.conf"),
        format!("main={port},20000\nacme={port},20001\n"),
    )
    .unwrap();
    let remotes = root.path.join("remotes");
    let backend = git_repo(
        &remotes.join("backend.git"),
        &root.path.join("sites/acme/src/tractstack-go"),
        &[("main.go", "v1")],
    );
    let frontend = git_repo(
        &remotes.join("frontend.git"),
        &root.path.join("sites/acme/src/my-tractstack"),
        &[("index.astro", "v1")],
    );
    let new_backend = commit(&backend, &[("main.go", "v2")], "backend v2");
    let new_frontend = commit(&frontend, &[("index.astro", "v2")], "frontend v2");
    std::fs::create_dir_all(root.fakes.join("pm2")).unwrap();
    std::fs::write(root.fakes.join("pm2/astro-acme"), "stopped").unwrap();
    root.script("dedicated.rhai", PIPELINE);
    root.trigger("build-1.csv", "type=dedicated,site=acme,command=build\n");

    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), root.log());
    assert_eq!(
        git(
            &root.path.join("sites/acme/src/tractstack-go"),
            &["rev-parse", "HEAD"]
        ),
        new_backend
    );
    assert_eq!(
        git(
            &root.path.join("sites/acme/src/my-tractstack"),
            &["rev-parse", "HEAD"]
        ),
        new_frontend
    );
    assert!(
        root.log()
            .contains("$ systemctl restart tractstack-go@acme"),
        "{}",
        root.log()
    );
    // systemd started the instance, and it runs.
    assert_eq!(sd.show("tractstack-go@acme", "ActiveState"), "active");
    let pid: u32 = sd.show("tractstack-go@acme", "MainPID").parse().unwrap();
    assert!(sd.alive(pid), "the unit's main process runs");
    assert!(root.calls("pm2").contains(&"reload astro-acme".to_string()));
    assert_eq!(
        std::fs::read_to_string(root.fakes.join("pm2/astro-acme"))
            .unwrap()
            .trim(),
        "online"
    );
    assert!(root.log().contains(&format!(
        "http_check http://127.0.0.1:{port}/api/v1/health: status 200"
    )));
}

#[test]
fn a_dirty_frontend_is_not_pulled() {
    let root = Root::new();
    let remotes = root.path.join("remotes");
    let backend = git_repo(
        &remotes.join("b.git"),
        &root.path.join("src/tractstack-go"),
        &[("a", "1")],
    );
    let frontend = git_repo(
        &remotes.join("f.git"),
        &root.path.join("src/my-tractstack"),
        &[("a", "1")],
    );
    commit(&backend, &[("a", "2")], "b2");
    commit(&frontend, &[("a", "2")], "f2");
    let before = git(&root.path.join("src/my-tractstack"), &["rev-parse", "HEAD"]);
    // An edit to a tracked file makes the tree dirty; untracked build output would not.
    std::fs::write(root.path.join("src/my-tractstack/a"), "operator's edit").unwrap();
    root.script(
        "main.rhai",
        "import \"lib/common\" as t8k;\nfn build(job) { t8k::pull(job); }\n",
    );
    root.trigger("build-1.csv", "type=main,command=build\n");
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        git(&root.path.join("src/my-tractstack"), &["rev-parse", "HEAD"]),
        before,
        "frontend untouched"
    );
    assert_eq!(
        std::fs::read_to_string(root.path.join("src/tractstack-go/a")).unwrap(),
        "2",
        "backend pulled"
    );
    assert!(
        root.log()
            .contains("has local changes: not pulling the frontend")
    );
}

#[test]
fn service_failures_fail_the_job_with_what_was_seen() {
    let Some(sd) = Systemd::boot() else {
        return;
    };
    let root = Root::new();
    sd.replace_fake_systemctl(&root);
    let down = free_port();
    let erroring = http_server(503);
    std::fs::write(
        root.path.join("etc/t8k-ports.conf"),
        format!("main={down},{erroring}\n"),
    )
    .unwrap();
    std::fs::create_dir_all(root.fakes.join("pm2")).unwrap();
    std::fs::write(root.fakes.join("pm2/astro-main"), "crashing").unwrap();
    root.script(
        "main.rhai",
        r#"
fn build(job) { step("health", || http_check(`http://127.0.0.1:${job.go_port}/`, #{ timeout: 1 })); }
fn status(job) { step("frontend health", || http_check(`http://127.0.0.1:${job.astro_port}/`, #{ timeout: 1, expect: [200, 204] })); }
fn unit(job) { restart_systemd("tractstack-go@missing"); }
fn crash(job) { pm2("reload", job.pm2_name); }
fn bad_unit(job) { restart_systemd("x;reboot"); }
fn lenient(job) {
    let r = http_check(`http://127.0.0.1:${job.go_port}/`, #{ timeout: 0.3, allow_fail: true });
    run("mark", [`ok=${r.ok} status=${r.status}`]);
}
"#,
    );
    for (i, cmd) in ["build", "status", "unit", "crash", "bad_unit", "lenient"]
        .iter()
        .enumerate()
    {
        root.trigger(
            &format!("build-{i}.csv"),
            &format!("type=main,command={cmd}\n"),
        );
    }
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let first = |n: &str| root.reason(n).lines().next().unwrap().to_string();
    let r = first("build-0.csv");
    assert!(
        r.contains("step `health` failed")
            && r.contains(&format!(
                "http_check http://127.0.0.1:{down}/: no 2xx status within 1s"
            )),
        "{r}"
    );
    let r = first("build-1.csv");
    assert!(
        r.contains("no status [200, 204]") && r.contains("status 503"),
        "{r}"
    );
    let r = first("build-2.csv");
    assert!(
        r.contains(
            "`systemctl restart tractstack-go@missing` exited with code 5: Failed to restart tractstack-go@missing.service: Unit tractstack-go@missing.service not found."
        ),
        "{r}"
    );
    let r = first("build-3.csv");
    assert!(
        r.contains("pm2 process astro-main is errored after `pm2 reload`"),
        "{r}"
    );
    assert!(first("build-4.csv").contains("`x;reboot` is not a valid unit name"));
    assert_eq!(root.marks(), ["ok=false status=0"]);
    assert!(
        !root.log().contains("$ systemctl restart x"),
        "{}",
        root.log()
    );
}
