//! What people really drop into a TractStack inbox, through the real binary: the documented trigger
//! template filled for main, `date -Iseconds` names, `*.csv` files under the wrong name (as the newest
//! TractStack docs write them), and a `force=true` that a newer identical trigger supersedes.

use std::time::Duration;

use crate::common::{Root, stop, text, wait_until};

const MARKING: &str = r#"
fn build(job) { run("mark", [`${job.trigger}:${job.line}:${job.type}:${job.tenant}:${job.site}:${job.force}`]); }
"#;

fn marking_root(config: &str) -> Root {
    let root = Root::with_config(config);
    for t in ["main", "multi", "dedicated"] {
        root.script(&format!("{t}.rhai"), MARKING);
    }
    root
}

#[test]
fn the_documented_template_filled_for_main_runs_with_a_note() {
    let root = marking_root("");
    // README of tractstack-go: `type=TYPE,tenant=TENANT,site=SITE,command=build`, tenant optional,
    // site only for dedicated.
    root.trigger(
        "build-1.csv",
        "type=main,tenant=default,site=,command=build\n",
    );
    root.trigger(
        "build-2.csv",
        "type=multi,tenant=blue,site=,command=build\n",
    );
    root.trigger(
        "build-3.csv",
        "type=dedicated,tenant=,site=acme,command=build\n",
    );
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        root.marks(),
        [
            "build-1.csv:1:main:default::false",
            "build-2.csv:1:multi:blue::false",
            "build-3.csv:1:dedicated:default:acme:false",
        ]
    );
    let log = root.log();
    assert!(
        log.contains("build-1.csv line 1: empty `site=` ignored (only type=dedicated uses a site)"),
        "{log}"
    );
    assert!(
        log.contains("build-3.csv line 1: empty `tenant=` read as tenant=default"),
        "{log}"
    );
    assert!(root.failed().is_empty());
}

#[test]
fn values_stay_strict_and_an_unknown_key_names_the_valid_ones() {
    let root = marking_root("");
    let cases = [
        (
            "build-1.csv",
            "type=main,tenant=default,site=,command=build,ts=2026\n",
            "unknown key `ts` (expected one of: type, tenant, site, command, force, release)",
        ),
        (
            "build-2.csv",
            "type=dedicated,site=,command=build\n",
            "type=dedicated needs a `site`, and `site=` is empty",
        ),
        (
            "build-3.csv",
            "type=main,site=main,command=build\n",
            "`site` is only valid with type=dedicated",
        ),
        (
            "build-4.csv",
            "type=main,tenant=a.b,command=build\n",
            "only letters, digits, `_` and `-` are allowed",
        ),
        (
            "build-5.csv",
            "type=main,command=\n",
            "empty value for `command`",
        ),
    ];
    for (name, content, _) in &cases {
        root.trigger(name, content);
    }
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(root.marks().is_empty(), "{:?}", root.marks());
    for (name, _, needle) in &cases {
        let reason = root.reason(name);
        assert!(
            reason.lines().next().unwrap().contains(needle),
            "{name}: {reason}"
        );
    }
}

#[test]
fn names_written_with_date_iseconds_run_and_unsafe_ones_are_still_set_aside() {
    let root = marking_root("");
    // `echo ... > build-$(date -Iseconds).csv`
    let iso = "build-2026-01-01T10:00:00+00:00.csv";
    root.trigger(iso, "type=main,command=build\n");
    root.trigger(
        "build-2026-01-01T10:00:01+01:00.csv",
        "type=multi,tenant=t,command=build\n",
    );
    root.trigger("build-a b.csv", "type=main,command=build\n");
    root.trigger("build-x\u{1}y.csv", "type=main,command=build\n");
    root.trigger(
        &format!("build-{}.csv", "1".repeat(130)),
        "type=main,command=build\n",
    );
    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        root.marks(),
        [
            format!("{iso}:1:main:default::false"),
            "build-2026-01-01T10:00:01+01:00.csv:1:multi:t::false".to_string(),
        ]
    );
    let failed = root.failed();
    assert_eq!(failed.len(), 3, "{failed:?}");
    for name in &failed {
        assert!(root.reason(name).contains("unsafe file name"), "{name}");
    }
    assert!(failed.contains(&"build-a_b.csv".to_string()), "{failed:?}");
    assert!(failed.contains(&"build-x_y.csv".to_string()), "{failed:?}");
}

#[test]
fn a_csv_under_another_name_is_named_by_status_and_the_log_and_left_alone() {
    let root = marking_root("");
    // The newest "Initial Setup" page of the TractStack docs writes these names.
    root.trigger("main_build.csv", "type=main,tenant=default,command=build\n");
    let expected = "ignored: main_build.csv does not match build-*.csv; rename it to build-….csv";
    let out = root.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains(&format!("warning: {expected}")), "{status}");
    let json = root.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(
        v["warnings"][0].as_str().unwrap().starts_with(expected),
        "{v}"
    );

    let out = root.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(root.log().contains(expected), "{}", root.log());
    assert!(root.marks().is_empty());
    assert_eq!(
        std::fs::read_to_string(root.path.join("state/main_build.csv")).unwrap(),
        "type=main,tenant=default,command=build\n",
        "the file is left as it was"
    );

    // The daemon says it once, not at every scan, and again for a new one.
    let daemon = root.daemon(&[]);
    root.wait_watching();
    root.trigger("build-1.csv", "type=main,command=build\n");
    wait_until(Duration::from_secs(20), "the trigger to run", || {
        root.marks().len() == 1 && root.inbox().is_empty()
    });
    root.trigger(
        "dedicated_build.csv",
        "type=dedicated,site=acme,command=build\n",
    );
    wait_until(Duration::from_secs(20), "the second warning", || {
        root.daemon_out().contains("ignored: dedicated_build.csv")
    });
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
    let out = root.daemon_out();
    assert_eq!(out.matches("ignored: main_build.csv").count(), 1, "{out}");
}

/// A script that blocks its first job until `release` exists, so that triggers pile up behind it.
fn blocking_then_marking(root: &Root) -> String {
    format!(
        r#"fn build(job) {{
    if job.site == "busy" {{
        run("sh", ["-c", "touch {0}.started; while [ ! -f {0} ]; do sleep 0.05; done"]);
    }}
    run("mark", [`${{job.trigger}}:${{job.line}}:${{job.tenant}}:${{job.force}}`]);
}}
"#,
        root.path.join("release").display()
    )
}

#[test]
fn coalescing_keeps_a_superseded_force() {
    let root = marking_root("");
    let script = blocking_then_marking(&root);
    for t in ["main", "multi", "dedicated"] {
        root.script(&format!("{t}.rhai"), &script);
    }
    root.trigger("build-0.csv", "type=dedicated,site=busy,command=build\n");
    let daemon = root.daemon(&[]);
    wait_until(Duration::from_secs(20), "the blocking job", || {
        root.path.join("release.started").exists()
    });
    root.trigger("build-1.csv", "type=main,command=build,force=true\n");
    root.trigger(
        "build-2.csv",
        "type=multi,tenant=b,command=build,force=true\n",
    );
    root.trigger(
        "build-3.csv",
        "type=multi,tenant=b,command=build\ntype=main,command=build\n",
    );
    root.trigger("build-4.csv", "type=main,command=build\n");
    std::fs::write(root.path.join("release"), "").unwrap();
    wait_until(Duration::from_secs(20), "the queue to drain", || {
        root.marks().len() == 4 && root.inbox().is_empty()
    });
    assert_eq!(stop(daemon, libc::SIGTERM), Some(0));
    // build-1's main job runs once, for build-4, still forced; build-2's multi/b runs for build-3, forced.
    assert_eq!(
        root.marks()[1..],
        [
            "build-3.csv:1:b:true",
            "build-3.csv:2:default:false",
            "build-4.csv:1:default:true",
        ]
    );
    let out = root.daemon_out();
    assert!(
        out.contains("superseded build-1.csv by build-4.csv"),
        "{out}"
    );
    assert!(out.contains("build-4.csv now asks for force=true"), "{out}");
    assert!(root.failed().is_empty());
}
