//! What a host's NATS credentials allow, tried for real against the server the engine configured: a host
//! cannot take another host's jobs, change the site map or add consumers, and can still do what it must
//! (its own jobs, events and status, reading the site map); a producer queues jobs but cannot take or
//! delete them; nobody connects without a user or with a wrong password.

use std::time::Duration;

use crate::fleet_harness::{Server, publish};

/// A connection as `user` that records every error the server reports on it.
async fn watched(
    server: &Server,
    user: &str,
) -> (
    async_nats::Client,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let e = errors.clone();
    let client = async_nats::ConnectOptions::new()
        .user_and_password(user.into(), server.password(user))
        .custom_inbox_prefix(format!("_INBOX.{user}"))
        .request_timeout(Some(Duration::from_millis(1500)))
        .event_callback(move |event| {
            let e = e.clone();
            async move {
                if let async_nats::Event::ServerError(err) = event {
                    e.lock().unwrap().push(err.to_string());
                }
            }
        })
        .connect(server.url())
        .await
        .unwrap();
    (client, errors)
}

#[test]
fn a_hosts_credentials_can_do_only_what_a_host_must() {
    use async_nats::jetstream::consumer::PullConsumer;
    use futures_util::StreamExt;
    let server = Server::start(&["h1", "h2"]);
    server.init(&["h1", "h2"], 30, 5);
    server.site("s1", "h1");
    server.site("s2", "h2");
    let queued = publish(
        &server,
        &[
            (
                "type=dedicated,site=s1,command=build".into(),
                ulid::Ulid::new(),
            ),
            (
                "type=dedicated,site=s2,command=build".into(),
                ulid::Ulid::new(),
            ),
        ],
    );
    let h2_seq = queued[1].2;
    let runtime = t8k_engine::fleet::connect::runtime().unwrap();
    runtime.block_on(async {
        let (h1, errors) = watched(&server, "h1").await;
        let js = async_nats::jetstream::new(h1.clone());
        // Each forbidden operation: the subject the server must refuse, and the attempt.
        let forbidden: Vec<(&str, String)> = vec![
            (
                "fetch host h2's jobs",
                "$JS.API.CONSUMER.MSG.NEXT.T8K_JOBS.h2".into(),
            ),
            (
                "queue a job for host h2",
                "t8k.jobs.h2.dedicated.default.s2.build".into(),
            ),
            (
                "queue a job for itself",
                "t8k.jobs.h1.dedicated.default.s1.build".into(),
            ),
            (
                "delete the jobs stream",
                "$JS.API.STREAM.DELETE.T8K_JOBS".into(),
            ),
            (
                "purge the jobs stream",
                "$JS.API.STREAM.PURGE.T8K_JOBS".into(),
            ),
            (
                "read a job by sequence",
                "$JS.API.STREAM.MSG.GET.T8K_JOBS".into(),
            ),
            (
                "delete a job by sequence",
                "$JS.API.STREAM.MSG.DELETE.T8K_JOBS".into(),
            ),
            (
                "delete host h2's consumer",
                "$JS.API.CONSUMER.DELETE.T8K_JOBS.h2".into(),
            ),
            (
                "delete its own consumer",
                "$JS.API.CONSUMER.DELETE.T8K_JOBS.h1".into(),
            ),
            (
                "create a consumer",
                "$JS.API.CONSUMER.CREATE.T8K_JOBS".into(),
            ),
            (
                "create a durable consumer",
                "$JS.API.CONSUMER.DURABLE.CREATE.T8K_JOBS.x".into(),
            ),
            (
                "ack host h2's job by a guessed subject",
                format!("$JS.ACK.T8K_JOBS.h2.1.{h2_seq}.1.0.0"),
            ),
            (
                "publish host h2's events",
                "t8k.events.h2.journal.job_started".into(),
            ),
            ("put host h2's status", "$KV.t8k_status.h2".into()),
            ("change the site map", "$KV.t8k_sites.s2".into()),
            (
                "read host h2's status",
                "$JS.API.DIRECT.GET.KV_t8k_status.$KV.t8k_status.h2".into(),
            ),
            (
                "delete the site map",
                "$JS.API.STREAM.DELETE.KV_t8k_sites".into(),
            ),
            (
                "read the events stream",
                "$JS.API.CONSUMER.CREATE.T8K_EVENTS".into(),
            ),
        ];
        for (what, subject) in &forbidden {
            errors.lock().unwrap().clear();
            let body = if subject.starts_with("$KV.t8k_sites") {
                "h1"
            } else {
                "{}"
            };
            // A request without waiting for the answer: a refused one is never answered.
            h1.publish_with_reply(subject.clone(), h1.new_inbox(), body.into())
                .await
                .unwrap();
            h1.flush().await.unwrap();
            let refused = |errors: &Vec<String>| {
                errors
                    .iter()
                    .any(|e| e.contains("Permissions Violation") && e.contains(subject.as_str()))
            };
            wait_until_async(|| refused(&errors.lock().unwrap())).await;
            assert!(
                refused(&errors.lock().unwrap()),
                "h1 could {what} ({subject}): {:?}",
                errors.lock().unwrap()
            );
        }
        errors.lock().unwrap().clear();
        let sub = h1.subscribe("t8k.jobs.>").await;
        h1.flush().await.unwrap();
        wait_until_async(|| {
            errors
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.contains("Subscription to \"t8k.jobs.>\""))
        })
        .await;
        assert!(
            errors
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.contains("Subscription to \"t8k.jobs.>\"")),
            "h1 could subscribe to every job: {:?} {}",
            errors.lock().unwrap(),
            sub.is_ok()
        );

        // Nothing the refused operations aimed at changed; h2's job is still waiting for h2.
        let (admin, _) = watched(&server, "admin").await;
        let admin_js = async_nats::jetstream::new(admin);
        let mut jobs = admin_js.get_stream("T8K_JOBS").await.unwrap();
        assert_eq!(
            jobs.info().await.unwrap().state.messages,
            2,
            "both jobs still queued"
        );
        for c in ["h1", "h2"] {
            assert!(
                jobs.consumer_info(c).await.is_ok(),
                "consumer {c} still exists"
            );
        }
        assert!(admin_js.get_stream("KV_t8k_sites").await.is_ok());
        // The server itself keeps one consumer per host: a second one on h1's subjects is refused.
        let second = jobs
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("h1-again".into()),
                filter_subject: "t8k.jobs.h1.>".into(),
                ..Default::default()
            })
            .await;
        assert!(
            second.is_err(),
            "a second consumer on h1's jobs was created"
        );
        let sites = admin_js.get_key_value("t8k_sites").await.unwrap();
        assert_eq!(sites.get("s2").await.unwrap().unwrap(), "h2");

        // What a host must do still works: its own job, events, status, and reading the site map.
        let mine: PullConsumer = js.get_consumer_from_stream("h1", "T8K_JOBS").await.unwrap();
        let mut batch = mine
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        let msg = batch.next().await.unwrap().unwrap();
        assert_eq!(
            msg.subject.as_str(),
            "t8k.jobs.h1.dedicated.default.s1.build"
        );
        msg.double_ack().await.unwrap();
        js.publish("t8k.events.h1.bridge.test", "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
        js.publish("$KV.t8k_status.h1", "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(
            t8k_engine::fleet::sites::lookup(&js, "s2")
                .await
                .unwrap()
                .as_deref(),
            Some("h2")
        );
        assert_eq!(
            jobs.info().await.unwrap().state.messages,
            1,
            "only h2's job is left"
        );

        // The producer queues for any host but cannot take or delete jobs.
        let (producer, perrors) = watched(&server, "producer").await;
        for subject in [
            "$JS.API.CONSUMER.MSG.NEXT.T8K_JOBS.h2",
            "$JS.API.STREAM.DELETE.T8K_JOBS",
        ] {
            producer
                .publish_with_reply(subject, producer.new_inbox(), "{}".into())
                .await
                .unwrap();
            producer.flush().await.unwrap();
            wait_until_async(|| perrors.lock().unwrap().iter().any(|e| e.contains(subject))).await;
            assert!(
                perrors.lock().unwrap().iter().any(|e| e.contains(subject)),
                "producer could {subject}"
            );
        }
    });
    // Nobody connects without a user, nor with a wrong password.
    for (user, password) in [(None, None), (Some("h1"), Some("wrong"))] {
        let refused = runtime.block_on(async {
            let mut options = async_nats::ConnectOptions::new().max_reconnects(Some(1));
            if let (Some(u), Some(p)) = (user, password) {
                options = options.user_and_password(u.into(), p.into());
            }
            options
                .connect(server.url())
                .await
                .err()
                .map(|e| e.to_string())
        });
        let refused = refused.unwrap_or_else(|| panic!("{user:?} connected"));
        assert!(
            refused.to_lowercase().contains("authorization"),
            "{refused}"
        );
    }
}

/// Polls a condition for up to 3 s inside the runtime.
async fn wait_until_async(cond: impl Fn() -> bool) {
    for _ in 0..150 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
