use super::*;

fn job(result: &str) -> JobDoc {
    JobDoc {
        job_id: "01KBX5ZQ8Y3M4N6P7R8S9T0V1W".into(),
        command: "build".into(),
        result: result.into(),
        started_at: "2026-12-05T00:00:00Z".into(),
        duration_ms: None,
        reason: None,
    }
}

#[test]
fn the_document_round_trips_and_names_its_version() {
    let doc = StatusDoc {
        version: VERSION,
        generated_at: "2026-12-05T00:00:00Z".into(),
        engine: EngineDoc {
            state: EngineState::Idle,
            pid: Some(7),
            since: None,
        },
        running: None,
        queue: Vec::new(),
        queue_total: 0,
        claimed: Vec::new(),
        set_aside: Vec::new(),
        set_aside_total: 0,
        targets: Vec::new(),
        idle_because: None,
        warnings: Vec::new(),
    };
    let value = serde_json::to_value(&doc).unwrap();
    assert_eq!(value["version"], 1);
    assert_eq!(value["engine"]["state"], "idle");
    let back: StatusDoc = serde_json::from_value(value).unwrap();
    assert_eq!(back, doc);
}

/// A writer on a fresh root, its document's path, and the layout.
fn writer(dir: &std::path::Path) -> (StatusFile, PathBuf, Layout) {
    let config = Config {
        root: dir.to_path_buf(),
        ..Config::default()
    };
    let layout = Layout::new(&config);
    crate::queue::Queue::open(&layout, 4096).unwrap();
    let path = dir.join("log/status.json");
    let engine = EngineDoc {
        state: EngineState::Idle,
        pid: Some(std::process::id()),
        since: None,
    };
    (
        StatusFile::start(&path, &config, engine, Vec::new()),
        path,
        layout,
    )
}

fn read(path: &Path) -> StatusDoc {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn the_writer_lists_the_first_waiting_triggers_and_counts_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let (file, path, layout) = writer(dir.path());
    assert_eq!(read(&path).engine.state, EngineState::Idle);
    for i in 0..SHOWN + 5 {
        std::fs::write(
            layout.state.join(format!("build-{i:04}.csv")),
            "type=main,command=build\n",
        )
        .unwrap();
    }
    std::fs::write(layout.state.join("build-9999.csv"), "type=main,bogus=1\n").unwrap();
    file.refresh(&layout, None);
    let doc = read(&path);
    assert_eq!((doc.queue.len(), doc.queue_total), (SHOWN, SHOWN + 6));
    assert_eq!(
        doc.queue[0].jobs,
        ["type=main,tenant=default,command=build"]
    );
    assert!(doc.queue[0].ready && doc.idle_because.is_none());
    file.stopped();
    let doc = read(&path);
    assert_eq!(
        (doc.engine.state, doc.engine.pid),
        (EngineState::Stopped, None)
    );
    assert!(
        doc.idle_because
            .unwrap()
            .starts_with("no engine is running")
    );
}

#[test]
fn the_writer_follows_a_job_through_its_steps_to_its_targets() {
    let dir = tempfile::tempdir().unwrap();
    let (file, path, _) = writer(dir.path());
    file.job_started(RunningDoc {
        job_id: "J1".into(),
        trigger: "build-1.csv".into(),
        line: 1,
        target: "main".into(),
        command: "build".into(),
        started_at: jiff::Timestamp::now().to_string(),
        elapsed_s: 0,
        step: None,
        steps: Vec::new(),
        requested_by: None,
    });
    file.step_started("build", "");
    file.step_started("compile", "backend");
    file.step_started("bundle", "frontend");
    let mut bundle = read(&path).running.unwrap().steps[2].clone();
    bundle.ok = Some(true);
    bundle.wall_ms = 5;
    file.step_ended(&bundle);
    let doc = read(&path);
    assert_eq!(doc.engine.state, EngineState::Running);
    let running = doc.running.unwrap();
    let step = running.step.unwrap();
    assert_eq!(
        (step.name.as_str(), step.branch.as_str()),
        ("compile", "backend")
    );
    assert_eq!(running.steps[2].ok, Some(true));
    assert_eq!(doc.targets[0].last_job.as_ref().unwrap().result, "running");

    let mut failed = job("failed");
    failed.reason = Some("it broke".into());
    file.job_finished(
        "multi/blue",
        failed,
        |t| t == "main" || t.starts_with("multi/"),
        None,
    );
    let doc = read(&path);
    assert!(doc.running.is_none() && doc.engine.state == EngineState::Idle);
    let names: Vec<&str> = doc.targets.iter().map(|t| t.target.as_str()).collect();
    assert_eq!(names, ["main", "multi/blue"], "added in name order");
    assert_eq!(
        doc.targets[1]
            .last_failure
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("it broke")
    );
    file.job_finished("multi/blue", job("succeeded"), |_| true, None);
    let doc = read(&path);
    assert!(
        doc.targets[1].last_failure.is_some(),
        "a success keeps the last failure"
    );
    assert_eq!(
        doc.targets[1].last_job.as_ref().unwrap().result,
        "succeeded"
    );
    assert_eq!(doc, file.doc());
}

#[test]
fn idle_because_names_the_first_trigger_that_is_not_ready() {
    let q = |ready: bool| QueuedDoc {
        name: "build-1.csv".into(),
        ready,
        state: if ready {
            "ready".into()
        } else {
            "incomplete: no newline".into()
        },
        jobs: Vec::new(),
    };
    assert_eq!(idle_because(true, false, Some(&q(true))), None);
    assert_eq!(
        idle_because(true, false, Some(&q(false))).as_deref(),
        Some("waiting for build-1.csv: incomplete: no newline")
    );
    assert_eq!(idle_because(true, true, Some(&q(false))), None);
    assert_eq!(idle_because(false, false, None), None);
}
