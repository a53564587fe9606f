//! Owns the HTTP server: the routes, the body limits, the headers every answer carries, the check that
//! a loopback server answers only to loopback host names (DNS rebinding), the tail thread's life and a
//! graceful stop on SIGTERM or SIGINT; it holds no handler logic.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::{ApiError, AppState, actions, api, events, hooks, page};

/// Largest body of an API action; they are a few small JSON fields.
const MAX_ACTION_BYTES: usize = 16 << 10;

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/api/info", get(api::info))
        .route("/api/status", get(api::status))
        .route("/api/history", get(api::history))
        .route("/api/releases", get(api::releases))
        .route("/api/jobs/{id}", get(api::job))
        .route("/api/jobs/{id}/log", get(api::job_log))
        .route("/api/fleet", get(api::fleet))
        .route("/api/events", get(events::stream))
        .route("/api/trigger", post(actions::trigger))
        .route("/api/cancel", post(actions::cancel))
        .route("/api/rollback", post(actions::rollback))
        .layer(DefaultBodyLimit::max(MAX_ACTION_BYTES));
    // The webhook reads its body itself, against its own cap, to answer with a reason.
    let hooks = Router::new()
        .route("/hooks/git", post(hooks::git))
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/app.css", get(page::style))
        .merge(api)
        .merge(hooks)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page or endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Refuses a request to a loopback server under another host name than a loopback one or `web.hosts` (a
/// page that rebound its DNS name to 127.0.0.1 would otherwise read the logs), and adds the security
/// headers to every answer.
async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(listen) = state.listen
        && listen.ip().is_loopback()
    {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let named = host
            .rsplit_once(':')
            .map_or(host, |(name, _)| name)
            .to_ascii_lowercase();
        if !loopback_host(host)
            && !state
                .web
                .hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&named))
        {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this server listens on {listen} and answers only to loopback host names and web.hosts, not `{}`; add the name a proxy passes on to web.hosts",
                    host.escape_debug()
                ),
            )
            .into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// `localhost`, `127.x.x.x` or `[::1]`, with or without a port.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Listens on `addr` until SIGTERM or SIGINT.
pub async fn run(mut state: AppState, addr: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    state.listen = Some(local);
    let state = Arc::new(state);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    state.hub.set_stop(stop_rx.clone());
    let tail = events::start_tail(state.clone(), stop_rx.clone());
    // The address goes to stdout so that a caller that asked for port 0 learns the port.
    println!("listening on http://{local}/");
    tracing::info!(
        "t8k-engine serve: listening on http://{local}/ ({}, {} webhook(s))",
        if state.tokens.is_empty() {
            "read-only: no token configured".to_string()
        } else {
            format!("{} token(s) may act", state.web.tokens.len())
        },
        state.web.hooks.len()
    );
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received: stopping"),
            _ = int.recv() => tracing::info!("SIGINT received: stopping"),
        }
        let _ = stop_tx.send(true);
    });
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let mut stopping = stop_rx.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopping.wait_for(|s| *s).await;
        })
        .await
        .context("the server failed");
    let _ = tokio::task::spawn_blocking(move || tail.join()).await;
    served
}
