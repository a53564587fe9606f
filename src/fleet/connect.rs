//! Owns the connection to NATS and the one tokio runtime the fleet runs in: credentials, TLS, reconnect
//! pacing and connection logging; it knows nothing of jobs or streams.

use std::time::Duration;

use anyhow::{Context, Result};

use super::config::FleetConfig;

/// The last permission violation the server reported on any connection of this process.
static VIOLATION: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Takes the last permission violation the server reported, if any: a publish that is refused is never
/// answered, so this is how a caller tells a refusal from a slow server.
pub fn take_violation() -> Option<String> {
    VIOLATION.lock().unwrap().take()
}

/// Adds the server's refusal to an error that a refused request caused (it shows only as a time-out).
pub fn with_violation(e: anyhow::Error) -> anyhow::Error {
    match take_violation() {
        Some(v) => e.context(format!(
            "the NATS server refused this user ({v}): it lacks the role this needs (see `t8k-engine fleet server-config`)"
        )),
        None => e,
    }
}

/// The runtime every fleet command runs in. One worker thread keeps the connection served while a task
/// waits (a current-thread runtime driven by short blocking calls queued acks without sending them).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("t8k-fleet")
        .enable_all()
        .build()
        .context("cannot start the fleet's runtime")
}

/// Connects as the configured user. With `wait` the first connection is retried in the background (the
/// bridge starts while NATS is down); without it a server that cannot be reached is an error at once.
pub async fn connect(config: &FleetConfig, wait: bool) -> Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!(
            "t8k-engine {} {}",
            env!("CARGO_PKG_VERSION"),
            config.host.as_deref().unwrap_or("")
        ))
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)))
        // Quick reconnects: a restarted server is back in seconds, and jobs wait until then.
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((100u64 << attempt.min(5)).min(2_000))
        })
        .event_callback(|event| async move {
            use async_nats::Event;
            match event {
                Event::Disconnected => tracing::warn!("fleet: disconnected from NATS; reconnecting"),
                Event::Connected => tracing::info!("fleet: connected to NATS"),
                Event::ClientError(e) => tracing::error!("fleet: NATS client error: {e}"),
                Event::ServerError(e) => {
                    let text = e.to_string();
                    if text.contains("Permissions Violation") {
                        *VIOLATION.lock().unwrap() = Some(text.clone());
                    }
                    tracing::error!(
                        "fleet: the NATS server reports: {text} (check this user's role in the server's configuration)"
                    )
                }
                other => tracing::debug!("fleet: NATS event: {other}"),
            }
        });
    if let Some(user) = config.user() {
        // Replies come to the user's own inbox prefix, so the server can allow it that and nothing else.
        options = options.custom_inbox_prefix(format!("_INBOX.{user}"));
        if let Some(password) = config.password()? {
            options = options.user_and_password(user.to_string(), password);
        }
    }
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.urls().iter().any(|u| u.starts_with("tls://")) {
        options = options.require_tls(true);
    }
    if wait {
        options = options.retry_on_initial_connect();
    }
    let urls: Vec<async_nats::ServerAddr> = config
        .urls()
        .iter()
        .map(|u| u.parse())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| {
            format!(
                "config setting fleet.url `{}` is not a server address",
                config.url
            )
        })?;
    options.connect(urls).await.with_context(|| {
        format!(
            "cannot connect to the fleet's NATS server at {} as user `{}`: check that it runs, the url, and the password file",
            config.url,
            config.user().unwrap_or("(none)")
        )
    })
}

/// The configuration with another user and password (admin commands, producers on an operator's machine).
pub fn as_user(
    config: &FleetConfig,
    user: Option<&str>,
    password_file: Option<&std::path::Path>,
) -> Result<FleetConfig> {
    let mut config = config.clone();
    if let Some(user) = user {
        super::config::check_name("--user", user)?;
        config.user = Some(user.to_string());
    }
    if let Some(file) = password_file {
        config.password_file = Some(file.to_path_buf());
    }
    Ok(config)
}
