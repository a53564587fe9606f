//! The status page in a real headless Chromium (Debian's `chromium`, driven by playwright-core from
//! `tests/browser/`): a phone on a read-only server sees the live release and no action; a desktop on a
//! server with a token clicks Build and sees the job's steps advance on the timeline (parallel branches in
//! lanes of their own) and its log lines arrive while a real daemon runs a real job; the job page shows the
//! same timeline. It prints the page's load time and the delay from a log line written by a step to its
//! appearance in the page (figures, not assertions). `T8K_WEB_SCREENSHOT=PATH` keeps the screenshot taken
//! during the release.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{Root, wait_until};

use crate::common::web;

/// A release with timed steps: `compile` prints a line with its clock in ms every 40 ms for 3 s, beside
/// `bundle`; then the release is recorded with commits named after the job.
const SCRIPT: &str = r#"
fn build(job) {
    step("prepare", || run("sh", ["-c", "echo preparing; sleep 0.6"]));
    parallel(#{
        backend: || step("compile", || run("sh", ["-c", "i=0; while [ $i -lt 75 ]; do echo \"tick $(date +%s%3N)\"; i=$((i+1)); sleep 0.04; done"])),
        frontend: || step("bundle", || run("sh", ["-c", "echo bundling; sleep 1.5; echo bundled"])),
    });
    step("switch", || run("sh", ["-c", "sleep 0.3; echo switched"]));
    record_release(job, #{ backend: job.id, frontend: "f" + job.id });
}
"#;

fn browser_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Why the browser cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    if !Path::new("/usr/bin/chromium").is_file() {
        return Some("/usr/bin/chromium is missing".into());
    }
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        return Some("tests/browser/node_modules is missing".into());
    }
    Command::new("node")
        .arg("--version")
        .output()
        .err()
        .map(|e| format!("node: {e}"))
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn the_page_shows_releases_live_steps_and_logs_and_offers_no_action_without_a_token() {
    if let Some(why) = unavailable() {
        assert!(
            std::env::var_os("CI").is_none() && std::env::var_os("T8K_REQUIRE_BROWSER").is_none(),
            "CI must run the browser test: {why}; run bash .ci/install.sh"
        );
        eprintln!("skipped: {why} (bash .ci/install.sh installs it)");
        return;
    }
    let root = Root::with_config("");
    let mut config = std::fs::read_to_string(root.path.join("config.toml")).unwrap();
    let read_only = root.path.join("read-only.toml");
    std::fs::write(&read_only, &config).unwrap();
    config.push_str(&format!(
        "[web]\n[[web.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\n",
        web::digest(TOKEN)
    ));
    std::fs::write(root.path.join("config.toml"), config).unwrap();
    root.script("main.rhai", SCRIPT);
    let _daemon = root.daemon(&[]);
    // A first release, so that the page has a live one to show.
    root.trigger("build-1.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(60), "the first release", || {
        root.path
            .join("state/.t8k-engine/releases/main.json")
            .exists()
            && root.inbox().is_empty()
            && root.work().is_empty()
    });
    let first: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.path.join("state/.t8k-engine/releases/main.json")).unwrap(),
    )
    .unwrap();
    let first_id = first["job_id"].as_str().unwrap().to_string();

    let rw = web::serve(&root, "127.0.0.1:0");
    let mut ro_cmd = root.cmd(&["serve", "--listen", "127.0.0.1:0"]);
    ro_cmd.env("T8K_ENGINE_CONFIG", &read_only);
    let ro = web::Serve::spawned(ro_cmd);

    let shots = tempfile::tempdir().unwrap();
    let screenshot = std::env::var("T8K_WEB_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| shots.path().join("page.png"));
    let phone = shots.path().join("phone.png");
    let args = serde_json::json!({
        "ro": format!("{}/", ro.base),
        "rw": format!("{}/", rw.base),
        "token": TOKEN,
        "screenshot": screenshot,
        "phoneShot": phone,
    });
    let out = Command::new("node")
        .arg(browser_dir().join("page.mjs"))
        .arg(args.to_string())
        .current_dir(browser_dir())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {}", crate::common::text(&out)));
    let report = serde_json::to_string_pretty(&seen).unwrap();
    assert!(
        seen["error"].is_null(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(seen["console_errors"], serde_json::json!([]), "{report}");

    // The read-only page on a phone: the live release, no action, no sideways scrolling.
    let short_first: String = first_id.chars().take(10).collect();
    assert!(
        seen["ro_live"].as_str().unwrap().contains(&short_first),
        "{report}"
    );
    assert!(
        seen["ro_releases"].as_str().unwrap().contains("#1 live"),
        "the kept releases: {report}"
    );
    assert_eq!(seen["ro_buttons"], 0, "{report}");
    assert_eq!(seen["ro_target_buttons"], 0, "{report}");
    assert_eq!(seen["ro_cancel_visible"], false, "{report}");
    assert!(seen["ro_width"].as_u64().unwrap() <= 390, "{report}");

    // The release as it ran: each step seen running, then done; the branches in lanes side by side.
    let states: Vec<(String, String)> = seen["steps_seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().into(),
                s["ok"].as_str().unwrap().into(),
            )
        })
        .collect();
    // The last step's end comes with the job's (the job page below shows it done).
    assert!(
        states.contains(&("switch".into(), "running".into())),
        "{states:?}"
    );
    for step in ["prepare", "compile", "bundle"] {
        let running = states
            .iter()
            .position(|(s, ok)| s == step && ok == "running");
        let done = states.iter().position(|(s, ok)| s == step && ok == "true");
        assert!(
            running.is_some() && done.is_some() && running < done,
            "{step} seen running, then done: {states:?}"
        );
    }
    let lanes = seen["lanes_while_running"]
        .as_array()
        .expect("lanes during the release");
    for lane in ["main", "backend", "frontend"] {
        assert!(lanes.iter().any(|l| l == lane), "lane {lane}: {report}");
    }
    assert_eq!(seen["screenshot_taken"], true, "{report}");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000);
    let delays: Vec<i64> = seen["delays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_i64().unwrap())
        .collect();
    assert!(
        delays.len() >= 60,
        "the log lines arrived while the job ran: {report}"
    );

    // After it: the new release is live, the history says who asked, the job page has the same timeline.
    let job_id = seen["job_id"].as_str().unwrap();
    let short_new: String = job_id.chars().take(10).collect();
    assert!(
        seen["rw_live"].as_str().unwrap().contains(&short_new),
        "{report}"
    );
    assert!(
        seen["history_row"].as_str().unwrap().contains("by ops"),
        "{report}"
    );
    assert_eq!(
        seen["rw_release_buttons"],
        serde_json::json!(["Roll back to #1"]),
        "with a token, each release that can be put back offers it: {report}"
    );
    let job_page = seen["job_page"].as_array().unwrap();
    assert_eq!(job_page.len(), 4, "{report}");
    assert!(job_page.iter().all(|b| b[1] == "true"), "{report}");
    assert!(
        job_page.iter().any(|b| b[2] == "backend") && job_page.iter().any(|b| b[2] == "frontend")
    );
    assert_eq!(seen["job_log_has_ticks"], true);

    let mut sorted = delays.clone();
    sorted.sort();
    println!(
        "figures: page load (navigation to the live release shown, read-only phone page) {} ms (DOMContentLoaded {:.0} ms); log line to page: median {} ms, p99 {} ms, max {} ms over {} lines",
        seen["load_ms"],
        seen["navigation"]["dom_content_loaded_ms"]
            .as_f64()
            .unwrap_or(0.0),
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.last().unwrap(),
        sorted.len()
    );
}

const TOKEN: &str = "page-token-5b1c0e7a";
