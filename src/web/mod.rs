//! Owns `t8k-engine serve`: a separate, network-facing process with the status page, the JSON API, live
//! Server-Sent Events and git webhooks. It reads the journal, the job logs, the release records and the
//! status document; it acts only by dropping trigger files, appending its requests to a journal of its
//! own and asking the engine to cancel (SIGUSR1, as `t8k-engine cancel` does). It never holds the
//! engine's lock and never runs a build, and tokio never leaves this module: [`serve`] is blocking and
//! builds the one runtime itself.
//!
//! Files: `config` (the `[web]` section), `auth` (named tokens), `server` (router, binding, shutdown),
//! `api` (read endpoints), `actions` (trigger, cancel, rollback), `events` (the journal and job-log tail
//! behind `/api/events`), `hooks` (signed git pushes), `page` (the embedded HTML page).

pub mod actions;
pub mod api;
pub mod auth;
pub mod config;
pub mod events;
pub mod hooks;
pub mod page;
pub mod server;

use std::path::PathBuf;

use anyhow::Result;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::config::Config;
use crate::error::Exit;
use crate::layout::Layout;

/// What every handler shares.
pub struct AppState {
    /// The engine's configuration.
    pub config: Config,
    /// The TractStack layout.
    pub layout: Layout,
    /// The `[web]` section.
    pub web: config::WebConfig,
    /// Who may act.
    pub tokens: auth::Tokens,
    /// Live events for `/api/events`.
    pub hub: events::Hub,
    /// Webhook deliveries seen recently.
    pub replays: hooks::Replays,
    /// Whether this host has a `[fleet]` section (the page then shows the fleet).
    pub fleet: bool,
    /// The address bound, once listening.
    pub listen: Option<std::net::SocketAddr>,
    /// The history, kept between reads: the live events make a status document at every change and the
    /// page reads the history at every job's start and end, and each would otherwise parse the whole
    /// journal.
    pub history: std::sync::Mutex<crate::history::Kept>,
}

/// Records read at once past which the heap is trimmed after them.
const WHOLE_READ: usize = 10_000;

impl AppState {
    /// The kept history, brought up to date.
    pub fn history(&self) -> std::sync::MutexGuard<'_, crate::history::Kept> {
        // A reader that panicked leaves the history as read so far, which the next one goes on from.
        let mut kept = self.history.lock().unwrap_or_else(|p| p.into_inner());
        // A whole journal read (the first time, after a rotation) leaves tens of MiB of parse buffers
        // free in the heap of a process that keeps running.
        if kept.catch_up(&self.layout) > WHOLE_READ {
            crate::trim::heap();
        }
        kept
    }

    /// The status document now (`GET /api/status`, and what the live events push at every change).
    pub fn status_document(&self) -> anyhow::Result<crate::status_doc::StatusDoc> {
        crate::status::document_from(&self.config, &self.layout, &self.history())
    }

    /// `log/jobs/`, where each job's log is.
    pub fn job_logs(&self) -> PathBuf {
        self.layout.jobs_dir.clone()
    }
}

/// An error answer: a status and a one-line reason, as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// An error with this status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401, with the challenge.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 500 from an internal error, with its chain.
    pub fn internal(e: anyhow::Error) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

impl From<crate::release::Refused> for ApiError {
    fn from(e: crate::release::Refused) -> ApiError {
        use crate::release::Refused;
        let status = match &e {
            Refused::Invalid(_) => StatusCode::BAD_REQUEST,
            Refused::NotFound(_) => StatusCode::NOT_FOUND,
            Refused::Conflict(_) => StatusCode::CONFLICT,
            Refused::Unreadable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.message())
    }
}

/// A body that is not the JSON a request needs: the API's JSON error with axum's reason (status 400 for
/// malformed JSON, 415 without `content-type: application/json`, 422 for fields of the wrong shape),
/// instead of axum's plain-text answer.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> ApiError {
        ApiError::new(
            e.status(),
            format!(
                "the request body is not the JSON this endpoint takes: {}; see README \"API\"",
                e.body_text()
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"t8k-engine\""),
            );
        }
        response
    }
}

/// Runs blocking file work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("a worker failed: {e}")))?
}

/// `t8k-engine serve`: listens until SIGTERM or SIGINT; exit 2 for a refused configuration or address.
pub fn serve(config: &Config, layout: &Layout, listen: Option<&str>) -> Result<Exit> {
    let refuse = |message: String| Err(crate::error::usage(message));
    let web = match config::WebConfig::of(config) {
        Ok(web) => web,
        Err(e) => return refuse(format!("{e:#}")),
    };
    let addr = match web.address(listen) {
        Ok(addr) => addr,
        Err(e) => return refuse(format!("--listen: {e:#}")),
    };
    let tokens = auth::Tokens::of(&web);
    if !addr.ip().is_loopback() && tokens.is_empty() {
        return refuse(format!(
            "refusing to listen on {addr} without a token: anyone who can reach it could read the logs and no one could be told apart; configure [web] tokens (README \"Web page and API\"), or listen on 127.0.0.1 behind a proxy"
        ));
    }
    for hook in &web.hooks {
        if let Err(e) = hook.secret() {
            return refuse(format!("web.hooks ({}): {e:#}", hook.repository));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let state = AppState {
        config: config.clone(),
        layout: layout.clone(),
        hub: events::Hub::new(),
        replays: hooks::Replays::default(),
        fleet: config.fleet.is_some(),
        listen: None,
        history: std::sync::Mutex::new(crate::history::Kept::new(true, true)),
        tokens,
        web,
    };
    // The history's first reading (both journals) also tells which webhook deliveries were recorded.
    let window = std::time::Duration::from_secs(state.web.hook_dedup_seconds);
    state
        .replays
        .remember_recorded(state.history().requests(), window);
    runtime.block_on(server::run(state, addr))?;
    Ok(Exit::Ok)
}
