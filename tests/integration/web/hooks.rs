//! Signed git webhooks (GitHub and Forgejo) over real HTTP, and every way a delivery is refused.

use super::*;

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn push_body(repo: &str, branch: &str) -> String {
    serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "1".repeat(40),
        "after": "2".repeat(40),
        "repository": { "full_name": repo, "name": repo.split('/').nth(1).unwrap() },
        "pusher": { "name": "dev" },
    })
    .to_string()
}

/// Sends a push as GitHub does.
fn github(base: &str, secret: &str, body: &str, delivery: &str, event: &str) -> (u16, String) {
    let sig = format!("sha256={}", sign(secret, body.as_bytes()));
    post(
        &format!("{base}/hooks/git"),
        &[
            ("x-github-event", event),
            ("x-github-delivery", delivery),
            ("x-hub-signature-256", &sig),
        ],
        body,
    )
}

#[test]
fn git_webhooks_accept_signed_pushes_and_refuse_everything_else_with_a_reason() {
    let root = root_with_web();
    let web = serve(&root, "127.0.0.1:0");
    let base = &web.base;
    let body = push_body("acme/site", "main");

    let (code, answer) = github(base, "hook-secret-1", &body, "d-1", "push");
    assert_eq!(code, 202, "{answer}");
    let name = json(&answer)["trigger"].as_str().unwrap().to_string();
    assert_eq!(root.inbox(), std::slice::from_ref(&name));
    assert_eq!(
        std::fs::read_to_string(root.path.join("state").join(&name)).unwrap(),
        "type=main,tenant=default,command=build\n"
    );

    // The same delivery again: a replay, ignored.
    let (code, answer) = github(base, "hook-secret-1", &body, "d-1", "push");
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains("replay"), "{answer}");
    assert_eq!(root.inbox().len(), 1, "a replay drops nothing");

    // Forgejo (and Gitea): the bare hex signature in X-Gitea-Signature, its own delivery header.
    let sig = sign("hook-secret-1", body.as_bytes());
    let (code, answer) = post(
        &format!("{base}/hooks/git"),
        &[
            ("x-forgejo-event", "push"),
            ("x-gitea-event", "push"),
            ("x-forgejo-delivery", "f-1"),
            ("x-gitea-delivery", "f-1"),
            ("x-forgejo-signature", &sig),
            ("x-gitea-signature", &sig),
        ],
        &body,
    );
    assert_eq!(code, 202, "{answer}");
    assert_eq!(root.inbox().len(), 2);

    let refused = [
        (
            "wrong secret",
            github(base, "not-the-secret", &body, "d-2", "push"),
            401,
            "does not match",
        ),
        (
            "no signature",
            post(
                &format!("{base}/hooks/git"),
                &[("x-github-event", "push"), ("x-github-delivery", "d-3")],
                &body,
            ),
            401,
            "no signature",
        ),
        (
            "a body changed after signing",
            post(
                &format!("{base}/hooks/git"),
                &[
                    ("x-github-event", "push"),
                    ("x-github-delivery", "d-4"),
                    (
                        "x-hub-signature-256",
                        &format!("sha256={}", sign("hook-secret-1", body.as_bytes())),
                    ),
                ],
                &body.replace("main", "mainx"),
            ),
            401,
            "does not match",
        ),
        (
            "unknown repository",
            github(
                base,
                "hook-secret-1",
                &push_body("acme/other", "main"),
                "d-5",
                "push",
            ),
            404,
            "acme/other",
        ),
        (
            "another branch",
            github(
                base,
                "hook-secret-1",
                &push_body("acme/site", "dev"),
                "d-6",
                "push",
            ),
            422,
            "dev",
        ),
        (
            "another event",
            github(base, "hook-secret-1", &body, "d-7", "issues"),
            400,
            "only push",
        ),
        (
            "oversized body",
            github(
                base,
                "hook-secret-1",
                &format!("{body}{}", " ".repeat(5000)),
                "d-8",
                "push",
            ),
            413,
            "max_hook_bytes",
        ),
    ];
    for (what, (code, answer), want, needle) in refused {
        assert_eq!(code, want, "{what}: {answer}");
        assert!(
            json(&answer)["error"].as_str().unwrap().contains(needle),
            "{what}: {answer}"
        );
    }
    assert_eq!(root.inbox().len(), 2, "nothing refused dropped a trigger");
    let (code, answer) = github(base, "hook-secret-1", "{}", "d-9", "ping");
    assert_eq!(code, 200, "{answer}");

    // Both pushes are in the history as asked for by the hook.
    let h = history(base);
    let by: Vec<&str> = h["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["hook:site", "hook:site"], "{h}");
}

/// A delivery that dropped a trigger is still a replay after `serve` restarts: the request's record names
/// it, and a new `serve` remembers the deliveries recorded within the window (one hour by default).
#[test]
fn a_replay_is_known_after_serve_restarts_within_the_window() {
    let root = root_with_web();
    let body = push_body("acme/site", "main");
    // Deliveries recorded an hour and a half ago and a minute ago, as an earlier `serve` recorded them.
    let config = t8k_engine::config::Config {
        root: root.path.clone(),
        ..Default::default()
    };
    let requests =
        t8k_engine::history::Journal::requests(&t8k_engine::layout::Layout::new(&config));
    for (delivery, ago) in [("d-old", 5400), ("d-recent", 60)] {
        let at = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(ago);
        requests
            .append(&t8k_engine::history::Event::Requested {
                action: "trigger".into(),
                by: "hook:acme/site".into(),
                detail: "push".into(),
                trigger: Some(format!("build-{delivery}.csv")),
                job_id: None,
                delivery: Some(delivery.into()),
                at: at.to_string(),
            })
            .unwrap();
    }
    {
        let web = serve(&root, "127.0.0.1:0");
        let (code, answer) = github(&web.base, "hook-secret-1", &body, "d-1", "push");
        assert_eq!(code, 202, "{answer}");
    }
    assert_eq!(root.inbox().len(), 1);
    let recorded =
        std::fs::read_to_string(root.path.join("state/.t8k-engine/requests/journal.jsonl"))
            .unwrap();
    assert!(recorded.contains(r#""delivery":"d-1""#), "{recorded}");

    let web = serve(&root, "127.0.0.1:0");
    for delivery in ["d-1", "d-recent"] {
        let (code, answer) = github(&web.base, "hook-secret-1", &body, delivery, "push");
        assert_eq!(code, 200, "{delivery}: {answer}");
        assert!(answer.contains("replay"), "{answer}");
    }
    assert_eq!(root.inbox().len(), 1, "a replay drops nothing");
    // Outside the window, and a delivery never seen: new pushes.
    for delivery in ["d-old", "d-2"] {
        let (code, answer) = github(&web.base, "hook-secret-1", &body, delivery, "push");
        assert_eq!(code, 202, "{delivery}: {answer}");
    }
    assert_eq!(root.inbox().len(), 3);
}
