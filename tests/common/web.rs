//! Helpers for driving `t8k-engine serve` over real HTTP, and a script that releases and rolls back real
//! files (`RELEASING`) for the release and rollback tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::Root;

/// The SHA-256 of a token, as `[web] tokens` holds it.
pub fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A running `serve`: killed when dropped.
pub struct Serve {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve --listen ADDR` (port 0: any) and waits for the address it prints.
pub fn serve(root: &Root, listen: &str) -> Serve {
    Serve::spawned(root.cmd(&["serve", "--listen", listen]))
}

impl Serve {
    /// Starts a prepared `serve` command and waits for the address it prints.
    pub fn spawned(mut cmd: Command) -> Serve {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("serve printed {line:?}"))
            .trim_end_matches('/')
            .replace("0.0.0.0", "127.0.0.1");
        Serve { child, base }
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// A response's status and body.
pub fn get(url: &str) -> (u16, String) {
    let mut r = agent().get(url).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

pub fn post(url: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut req = agent().post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = req.send(body).unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A build that switches in what `next-bin` and `next-dist` hold and records it as a release; a rollback
/// that puts a kept release's files back, or does nothing while `rollback-does-nothing` exists (the
/// shipped scripts' restarts and checks are tested on the fixture site, `releases::`).
pub const RELEASING: &str = r#"fn build(job) {
    let v = read_from(`${job.root}/next-version`, 0);
    step("build", || {
        run("cp", [`${job.root}/next-bin`, `${job.binary}.new`]);
        run("cp", ["-r", `${job.root}/next-dist`, `${job.frontend_src}/dist.new`]);
    });
    step("switch", || {
        switch_in(`${job.binary}.new`, job.binary);
        switch_in(`${job.frontend_src}/dist.new`, `${job.frontend_src}/dist`);
    });
    record_release(job, #{ backend: v, frontend: v, built: #{ backend: true, frontend: true } });
}
fn rollback(job, release) {
    if file_exists(`${job.root}/rollback-does-nothing`) { return; }
    step("switch", || put_back(job, release));
}
"#;

/// What the next build of `RELEASING` releases: `version` as backend and frontend.
pub fn next_release(root: &Root, version: &str) {
    std::fs::write(root.path.join("next-version"), version).unwrap();
    std::fs::write(root.path.join("next-bin"), version).unwrap();
    let dist = root.path.join("next-dist");
    let _ = std::fs::remove_dir_all(&dist);
    std::fs::create_dir_all(&dist).unwrap();
    std::fs::write(dist.join("index.html"), version).unwrap();
}

/// What serves: the backend binary and the frontend's page.
pub fn serving(root: &Root) -> (String, String) {
    let read = |p: &str| std::fs::read_to_string(root.path.join(p)).unwrap_or_default();
    (
        read("bin/tractstack-go"),
        read("src/my-tractstack/dist/index.html"),
    )
}
