//! `t8k-engine serve` driven as an operator, a CMS and a forge would: the real binary over real HTTP,
//! beside a real daemon running real jobs. Every endpoint, every refusal (no token, wrong token, a
//! non-loopback address without a token, a foreign Host name), and the git webhooks (GitHub and Forgejo
//! signatures, bad signatures, oversized bodies, unknown repositories, replayed deliveries).

use std::io::Read;
use std::time::Duration;

use crate::common::web::{
    RELEASING, Serve, agent, digest, get, json, next_release, post, serve, serving,
};
use crate::common::{Root, wait_until};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const TOKEN: &str = "tok-0f8e2c1d9b7a6e5f4c3b2a1908f7e6d5";
const AUTH: (&str, &str) = (
    "authorization",
    "Bearer tok-0f8e2c1d9b7a6e5f4c3b2a1908f7e6d5",
);

/// A script whose build has timed steps, parallel branches and a release record; `rollback` only logs.
pub const SCRIPT: &str = r#"
fn build(job) {
    step("prepare", || run("sh", ["-c", "echo preparing; sleep 0.3"]));
    parallel(#{
        backend: || step("compile", || run("sh", ["-c", "echo compiling; sleep 0.4"])),
        frontend: || step("bundle", || run("sh", ["-c", "echo bundling; sleep 0.2"])),
    });
    record_release(job, #{ backend: "b" + job.id, frontend: "f" + job.id });
}
fn slow(job) {
    step("wait", || run("sh", ["-c", "echo waiting; sleep 60"]));
}
"#;

/// `[web]` with the test's token named `ops`, and a webhook for `acme/site` main → main.
fn web_config(root: &std::path::Path) -> String {
    format!(
        "[web]\nhosts = [\"status.example.net\"]\nhook_dedup_seconds = 600\nmax_hook_bytes = 4096\n[[web.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\n[[web.hooks]]\nrepository = \"acme/site\"\nbranch = \"main\"\ntargets = [\"main\"]\nsecret_file = \"{}\"\nname = \"site\"\n",
        digest(TOKEN),
        root.join("hook.secret").display()
    )
}

fn root_with_web() -> Root {
    let root = Root::with_config("");
    let config = web_config(&root.path);
    let mut text = std::fs::read_to_string(root.path.join("config.toml")).unwrap();
    text.push_str(&config);
    std::fs::write(root.path.join("config.toml"), text).unwrap();
    write_secret(&root, "hook-secret-1");
    root.script("main.rhai", SCRIPT);
    root
}

fn write_secret(root: &Root, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = root.path.join("hook.secret");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn history(base: &str) -> serde_json::Value {
    json(&get(&format!("{base}/api/history?limit=50")).1)
}

fn wait_jobs_done(base: &str, n: usize) -> serde_json::Value {
    let mut h = serde_json::Value::Null;
    wait_until(
        Duration::from_secs(60),
        &format!("{n} finished job(s)"),
        || {
            h = history(base);
            h["jobs"]
                .as_array()
                .is_some_and(|j| j.iter().filter(|j| j["result"] != "running").count() >= n)
        },
    );
    h
}

#[test]
fn read_endpoints_serve_status_history_releases_jobs_logs_and_events() {
    let root = root_with_web();
    let _daemon = root.daemon(&[]);
    root.wait_watching();
    let web = serve(&root, "127.0.0.1:0");
    let base = &web.base;

    let (code, page) = get(&format!("{base}/"));
    assert_eq!(code, 200);
    assert!(page.contains("<title>t8k-engine</title>"), "{page}");
    assert_eq!(get(&format!("{base}/app.js")).0, 200);

    let status = json(&get(&format!("{base}/api/status")).1);
    assert_eq!(status["version"], 1, "{status}");
    assert_eq!(status["engine"]["state"], "idle", "{status}");
    assert!(
        status["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["target"] == "main" && t["live"].is_null())
    );

    // The events stream starts with the status, then carries a job's events and log lines.
    let mut events = agent()
        .get(&format!("{base}/api/events"))
        .call()
        .unwrap()
        .into_body()
        .into_reader();
    root.trigger("build-1.csv", "type=main,command=build\n");
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("event: job_finished") {
        let n = events.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("event: status\n"), "{seen}");
    for kind in ["job_started", "step_started", "step_finished", "log"] {
        assert!(
            seen.contains(&format!("event: {kind}\n")),
            "{kind} in {seen}"
        );
    }
    assert!(
        seen.contains("compiling"),
        "a step's output arrives as a log event: {seen}"
    );

    let h = wait_jobs_done(base, 1);
    let job = &h["jobs"][0];
    assert_eq!(job["result"], "succeeded", "{h}");
    let id = job["job_id"].as_str().unwrap().to_string();

    // The CLI's filters.
    assert_eq!(
        json(&get(&format!("{base}/api/history?failed=true")).1)["jobs"],
        serde_json::json!([])
    );
    assert_eq!(
        json(&get(&format!("{base}/api/history?target=dedicated/x")).1)["jobs"],
        serde_json::json!([])
    );
    assert_eq!(
        json(&get(&format!("{base}/api/history?target=main&limit=1")).1)["jobs"][0]["job_id"],
        id.as_str()
    );

    let one = json(&get(&format!("{base}/api/jobs/{id}")).1);
    let lanes: Vec<&str> = one["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["branch"].as_str().unwrap())
        .collect();
    assert!(
        lanes.contains(&"backend") && lanes.contains(&"frontend"),
        "{one}"
    );

    let (code, log) = get(&format!("{base}/api/jobs/{id}/log"));
    assert_eq!(code, 200);
    assert!(log.contains("[compile] [backend] compiling"), "{log}");
    let (code, body) = get(&format!("{base}/api/jobs/..%2F..%2Fetc%2Fpasswd/log"));
    assert_eq!(code, 400, "{body}");
    let (code, body) = get(&format!("{base}/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/log"));
    assert_eq!(code, 404, "{body}");

    // The releases as `t8k-engine releases --json` prints them.
    let releases = json(&get(&format!("{base}/api/releases")).1);
    let main = &releases[0];
    assert_eq!(main["install"], "main", "{releases}");
    assert_eq!(main["live"], 1);
    assert_eq!(main["releases"][0]["state"], "live");
    assert_eq!(main["releases"][0]["job_id"], id.as_str());
    assert_eq!(main["releases"][0]["backend"], format!("b{id}"));
    let cli: serde_json::Value =
        serde_json::from_slice(&root.run(&["releases", "--json"]).stdout).unwrap();
    assert_eq!(releases, cli, "the same data as the command line");
    let (code, body) = get(&format!("{base}/api/releases?target=dedicated/..%2Fx"));
    assert_eq!(code, 400, "{body}");

    let status = json(&get(&format!("{base}/api/status")).1);
    let target = status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "main")
        .unwrap();
    assert_eq!(target["live"]["id"], 1, "{status}");
    assert_eq!(target["live"]["job_id"], id.as_str(), "{status}");
    assert_eq!(target["last_job"]["result"], "succeeded");

    // A loopback server answers only to loopback names.
    let mut r = agent()
        .get(&format!("{base}/api/status"))
        .header("host", "rebound.example.com")
        .call()
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        421,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    let mut r = agent()
        .get(&format!("{base}/api/info"))
        .header("host", "Status.Example.net:443")
        .call()
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "a name of web.hosts: {}",
        r.body_mut().read_to_string().unwrap()
    );
    assert_eq!(
        get(&format!("{base}/api/fleet")).0,
        404,
        "no [fleet] section"
    );
}

#[test]
fn actions_need_a_named_token_and_are_recorded_with_who_asked() {
    // No token configured: read-only, every action refused.
    let plain = Root::new();
    let ro = serve(&plain, "127.0.0.1:0");
    assert_eq!(
        json(&get(&format!("{}/api/info", ro.base)).1)["actions"],
        false
    );
    let (code, body) = post(
        &format!("{}/api/trigger", ro.base),
        &[AUTH],
        "{\"target\":\"main\"}",
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("read-only"), "{body}");
    assert!(plain.inbox().is_empty());
    drop(ro);

    let root = root_with_web();
    let web = serve(&root, "127.0.0.1:0");
    let base = &web.base;
    assert_eq!(json(&get(&format!("{base}/api/info")).1)["actions"], true);
    let url = format!("{base}/api/trigger");
    let (code, body) = post(&url, &[], "{\"target\":\"main\"}");
    assert_eq!(code, 401, "{body}");
    let (code, body) = post(
        &url,
        &[("authorization", "Bearer not-the-token")],
        "{\"target\":\"main\"}",
    );
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("wrong token"), "{body}");
    let (code, body) = post(&url, &[("authorization", TOKEN)], "{\"target\":\"main\"}");
    assert_eq!(code, 401, "a token without `Bearer`: {body}");
    assert!(
        root.inbox().is_empty(),
        "nothing dropped without a valid token"
    );

    // Bad requests are refused with the reason, and nothing is recorded.
    let (code, body) = post(&url, &[AUTH], "{\"target\":\"dedicated/../x\"}");
    assert_eq!(code, 400, "{body}");
    let (code, body) = post(
        &url,
        &[AUTH],
        "{\"target\":\"main\",\"command\":\"deploy\"}",
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("deploy"), "{body}");
    let (code, _) = post(
        &url,
        &[AUTH],
        &format!("{{\"target\":\"{}\"}}", "x".repeat(20_000)),
    );
    assert_eq!(code, 413, "the action body is capped");
    // A body that is not the JSON asked for gets the API's JSON error with the reason, as every refusal.
    for (body, status) in [("{\"target\":", 400), ("{\"target\":5}", 422)] {
        let (code, answer) = post(&url, &[AUTH], body);
        assert_eq!(code, status, "{body}: {answer}");
        let error = json(&answer)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            error.contains("is not the JSON this endpoint takes"),
            "{answer}"
        );
    }
    let mut r = crate::common::web::agent()
        .post(&url)
        .header("authorization", AUTH.1)
        .send("{\"target\":\"main\"}")
        .unwrap();
    let answer = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 415, "{answer}");
    assert!(
        json(&answer)["error"]
            .as_str()
            .unwrap()
            .contains("application/json"),
        "{answer}"
    );

    let (code, body) = post(&url, &[AUTH], "{\"target\":\"main\",\"force\":true}");
    assert_eq!(code, 202, "{body}");
    let answer = json(&body);
    let name = answer["trigger"].as_str().unwrap();
    assert_eq!(root.inbox(), [name]);
    assert_eq!(
        std::fs::read_to_string(root.path.join("state").join(name)).unwrap(),
        "type=main,tenant=default,command=build,force=true\n"
    );

    // The daemon runs it; the history says who asked, in the API and on the command line.
    let _daemon = root.daemon(&[]);
    let h = wait_jobs_done(base, 1);
    assert_eq!(h["jobs"][0]["requested_by"], "ops", "{h}");
    assert_eq!(h["requests"][0]["by"], "ops");
    assert_eq!(h["requests"][0]["action"], "trigger");
    let out = root.run(&["history"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("asked for by ops"),
        "{}",
        crate::common::text(&out)
    );
    let journal =
        std::fs::read_to_string(root.path.join("state/.t8k-engine/history/journal.jsonl")).unwrap();
    let requests =
        std::fs::read_to_string(root.path.join("state/.t8k-engine/requests/journal.jsonl"))
            .unwrap();
    assert!(requests.contains("\"by\":\"ops\""), "{requests}");
    assert!(
        !journal.contains("\"requested\""),
        "serve never writes the engine's journal: {journal}"
    );
    assert!(
        !journal.contains(TOKEN) && !requests.contains(TOKEN),
        "the token itself is never stored"
    );
    assert!(!root.daemon_out().contains(TOKEN));
}

#[test]
fn cancel_through_the_api_stops_the_running_job_and_names_who_asked() {
    let root = root_with_web();
    let web = serve(&root, "127.0.0.1:0");
    let base = &web.base;
    let url = format!("{base}/api/cancel");
    let (code, body) = post(&url, &[AUTH], "{}");
    assert_eq!(code, 409, "no engine: {body}");
    let _daemon = root.daemon(&[]);
    root.wait_watching();
    let (code, body) = post(&url, &[AUTH], "{}");
    assert_eq!(code, 409, "no job: {body}");
    root.trigger("build-1.csv", "type=main,command=slow\n");
    let mut running = String::new();
    wait_until(Duration::from_secs(30), "the slow job's step", || {
        let s = json(&get(&format!("{base}/api/status")).1);
        running = s["running"]["job_id"].as_str().unwrap_or("").to_string();
        s["running"]["step"]["name"] == "wait"
    });
    let (code, body) = post(&url, &[AUTH], "{\"job_id\":\"01ARZ3NDEKTSV4RRFFQ69G5FAV\"}");
    assert_eq!(code, 409, "another job than the running one: {body}");
    let (code, body) = post(&url, &[("authorization", "Bearer nope")], "{}");
    assert_eq!(code, 401, "{body}");
    let (code, body) = post(&url, &[AUTH], &format!("{{\"job_id\":\"{running}\"}}"));
    assert_eq!(code, 202, "{body}");
    let h = wait_jobs_done(base, 1);
    let job = &h["jobs"][0];
    assert_ne!(job["result"], "succeeded", "{h}");
    assert_eq!(job["cancelled_by"], "ops", "{h}");
    wait_until(
        Duration::from_secs(20),
        "the cancelled trigger set aside",
        || root.failed() == ["build-1.csv"],
    );
}

/// `log/status.json` and `GET /api/status` once nothing changes, without the time each was made.

#[test]
fn a_non_loopback_address_without_a_token_is_refused_and_bad_addresses_are_named() {
    let root = Root::new();
    let out = root.run(&["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2), "{}", crate::common::text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without a token"),
        "{}",
        crate::common::text(&out)
    );
    let out = root.run(&["serve", "--listen", "localhost"]);
    assert_eq!(out.status.code(), Some(2), "{}", crate::common::text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("IP:PORT"),
        "{}",
        crate::common::text(&out)
    );
    // With a token it listens (and answers any host name there).
    let root = root_with_web();
    let web = serve(&root, "0.0.0.0:0");
    let mut r = agent()
        .get(&format!("{}/api/info", web.base))
        .header("host", "status.example.com")
        .call()
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    // A secret others can read is refused at start.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.path.join("hook.secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = root.run(&["serve"]);
    assert_eq!(out.status.code(), Some(2), "{}", crate::common::text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{}",
        crate::common::text(&out)
    );
}

#[test]
fn the_web_unit_passes_systemd_analyze_verify() {
    if let Err(problems) =
        crate::common::systemd::units::verify_shipped_unit("t8k-engine-web.service")
    {
        panic!("{problems}");
    }
}

mod hooks;
mod rollback;
