//! Rollback through the API: checked before anything is dropped, and run for real beside a daemon.

use super::*;

fn documents_at_rest(root: &Root, base: &str) -> (serde_json::Value, serde_json::Value) {
    let strip = |mut v: serde_json::Value| {
        v["generated_at"] = serde_json::Value::Null;
        v
    };
    let mut pair = (serde_json::Value::Null, serde_json::Value::Null);
    wait_until(
        Duration::from_secs(20),
        "status.json and /api/status to agree",
        || {
            let file = std::fs::read_to_string(root.path.join("log/status.json")).unwrap();
            pair = (
                strip(json(&file)),
                strip(json(&get(&format!("{base}/api/status")).1)),
            );
            pair.0 == pair.1
        },
    );
    pair
}

/// A root with the `[web]` token whose scripts release files and roll back (`RELEASING`), its daemon,
/// and `serve`.
fn releasing_root() -> (Root, crate::common::Daemon, Serve) {
    let root = root_with_web();
    root.script("main.rhai", RELEASING);
    for d in ["bin", "src/my-tractstack"] {
        std::fs::create_dir_all(root.path.join(d)).unwrap();
    }
    let daemon = root.daemon(&[]);
    let web = serve(&root, "127.0.0.1:0");
    (root, daemon, web)
}

fn release(root: &Root, base: &str, version: &str, jobs: usize) {
    next_release(root, version);
    root.trigger(&format!("build-{version}.csv"), "type=main,command=build\n");
    wait_jobs_done(base, jobs);
    assert_eq!(serving(root), (version.into(), version.into()));
}

#[test]
fn rollback_through_the_api_is_checked_before_anything_is_dropped() {
    let (root, _daemon, web) = releasing_root();
    let url = format!("{}/api/rollback", web.base);
    let (code, body) = post(&url, &[AUTH], "{\"target\":\"main\"}");
    assert_eq!(code, 404, "no release yet: {body}");
    release(&root, &web.base, "v1", 1);
    let (code, body) = post(&url, &[AUTH], "{\"target\":\"main\"}");
    assert_eq!(code, 409, "one release, nothing before it: {body}");
    release(&root, &web.base, "v2", 2);
    for (body, code, why) in [
        ("{\"target\":\"dedicated/../x\"}", 400, "not a target"),
        ("{\"target\":\"nope\"}", 400, "not a target"),
        (
            "{\"target\":\"main\",\"to\":0}",
            400,
            "not a release number",
        ),
        (
            "{\"target\":\"main\",\"to\":\"1;rm\"}",
            400,
            "not a release number",
        ),
        (
            "{\"target\":\"main\",\"to\":1.5}",
            400,
            "not a release number",
        ),
        (
            "{\"target\":\"main\",\"to\":true}",
            400,
            "not a release number",
        ),
        ("{\"target\":\"main\",\"to\":2}", 409, "live already"),
        ("{\"target\":\"main\",\"to\":9}", 404, "not kept"),
        (
            "{\"target\":\"main\",\"release\":1}",
            422,
            "an unknown field",
        ),
    ] {
        let (got, answer) = post(&url, &[AUTH], body);
        assert_eq!(got, code, "{why}: {body} -> {answer}");
        assert!(
            answer.contains(why.split(' ').next_back().unwrap()) || got == 422,
            "the reason says what is wrong: {answer}"
        );
    }
    let (code, body) = post(
        &url,
        &[("authorization", "Bearer nope")],
        "{\"target\":\"main\"}",
    );
    assert_eq!(code, 401, "{body}");
    // Scripts without `fn rollback(job, release)`: refused, naming the command.
    root.script("main.rhai", SCRIPT);
    let (code, body) = post(&url, &[AUTH], "{\"target\":\"main\"}");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("rollback"), "{body}");
    assert!(
        root.inbox().is_empty(),
        "nothing dropped for a refused rollback"
    );
    assert_eq!(
        history(&web.base)["requests"],
        serde_json::json!([]),
        "nor recorded"
    );
}

#[test]
fn rollback_through_the_api_puts_the_previous_release_back_live() {
    let (root, _daemon, web) = releasing_root();
    let base = &web.base;
    let url = format!("{base}/api/rollback");
    release(&root, base, "v1", 1);
    release(&root, base, "v2", 2);

    // Back to the previous release: the trigger names it, the engine runs it, release 1 serves again.
    let asked = std::time::Instant::now();
    let (code, body) = post(&url, &[AUTH], "{\"target\":\"main\"}");
    assert_eq!(code, 202, "{body}");
    let answer = json(&body);
    assert_eq!(
        answer["line"],
        "type=main,tenant=default,command=rollback,release=1"
    );
    assert_eq!((&answer["from"], &answer["to"]), (&2.into(), &1.into()));
    let h = wait_jobs_done(base, 3);
    println!(
        "rollback through the API, from the request to the job's end: {:?}",
        asked.elapsed()
    );
    let job = &h["jobs"][0];
    assert_eq!(
        (&job["command"], &job["result"], &job["requested_by"]),
        (&"rollback".into(), &"succeeded".into(), &"ops".into()),
        "{h}"
    );
    assert_eq!(h["requests"][0]["action"], "rollback");
    assert_eq!(serving(&root), ("v1".into(), "v1".into()));
    let releases = json(&get(&format!("{base}/api/releases?target=main")).1);
    assert_eq!(releases[0]["live"], 1, "{releases}");
    assert_eq!(releases[0]["releases"][0]["state"], "rolled_back");
    assert_eq!(releases[0]["rolled_back"][0]["facts"]["backend"], "v2");
    // log/status.json and /api/status: one document.
    let (file, api) = documents_at_rest(&root, base);
    assert_eq!(file["version"], 1);
    let main = &api["targets"][0];
    assert_eq!(
        (&main["target"], &main["live"]["id"]),
        (&"main".into(), &1.into()),
        "{api}"
    );
    assert_eq!(main["last_job"]["command"], "rollback");

    // Forward again to the rolled-back release by number (an operator undoing the rollback).
    let (code, body) = post(&url, &[AUTH], "{\"target\":\"main\",\"to\":\"2\"}");
    assert_eq!(code, 202, "{body}");
    wait_jobs_done(base, 4);
    assert_eq!(serving(&root), ("v2".into(), "v2".into()));
}
