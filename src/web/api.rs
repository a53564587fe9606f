//! Owns the read endpoints of the JSON API: the status document, the history with the CLI's filters, the
//! release records, one job with its steps, a job's log and the fleet's view; they only read.

use std::io::Read;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, blocking};
use crate::history::{Event, JobView};

/// Job ids are ULIDs: 26 of Crockford's base-32 digits. Checked before an id becomes part of a path.
pub fn is_job_id(id: &str) -> bool {
    id.len() == 26
        && id.bytes().all(|b| {
            b.is_ascii_digit()
                || (b.is_ascii_uppercase() && !matches!(b, b'I' | b'L' | b'O' | b'U'))
        })
}

/// `GET /api/info`: what this server offers, for the page.
pub async fn info(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "status_version": crate::status_doc::VERSION,
        "actions": !state.tokens.is_empty(),
        "fleet": state.fleet,
        "hooks": state.web.hooks.len(),
    }))
}

/// `GET /api/status`: the status document (README "Status document").
pub async fn status(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let doc = blocking(move || state.status_document().map_err(ApiError::internal)).await?;
    Ok(Json(doc).into_response())
}

/// The filters of `t8k-engine history`.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// How many jobs (default 20, at most 1,000).
    pub limit: Option<usize>,
    /// Only this target's jobs.
    pub target: Option<String>,
    /// Only jobs that did not succeed.
    #[serde(default)]
    pub failed: bool,
}

fn engine_running(state: &AppState) -> bool {
    crate::lock::EngineLock::probe(&state.layout.engine_dir).is_ok_and(|h| h.is_some())
}

/// `GET /api/history?limit=N&target=T&failed=true`: jobs newest first, with the newest N superseded
/// triggers and requests made through this server.
pub async fn history(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(20).min(1000);
    blocking(move || {
        let running = engine_running(&state);
        let kept = state.history();
        let jobs = kept
            .views()
            .listed(running, q.target.as_deref(), q.failed, limit);
        // Newest first and as many as the jobs: a busy server's journal holds thousands of each.
        let requests: Vec<&Event> = kept.requests().iter().rev().take(limit).collect();
        let superseded: Vec<&Event> = kept.views().superseded().iter().rev().take(limit).collect();
        Ok(Json(serde_json::json!({
            "jobs": jobs,
            "superseded": superseded,
            "requests": requests,
        })))
    })
    .await
}

/// The filter of `t8k-engine releases`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasesQuery {
    /// Only the install of this target (`main`, `multi/TENANT`, `dedicated/SITE`).
    pub target: Option<String>,
}

/// `GET /api/releases?target=T`: what `t8k-engine releases [T] --json` prints, each install's kept
/// releases newest first from the engine's release records.
pub async fn releases(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ReleasesQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || {
        let all = crate::release::listings(
            &state.layout.releases_dir,
            &state.layout.root,
            q.target.as_deref(),
            state.config.keep_releases,
        )?;
        Ok(Json(serde_json::Value::Array(all)))
    })
    .await
}

fn checked(id: &str) -> Result<String, ApiError> {
    if is_job_id(id) {
        Ok(id.to_string())
    } else {
        Err(ApiError::bad(format!(
            "`{}` is not a job id (26 characters, as `t8k-engine history` shows them)",
            id.escape_debug()
        )))
    }
}

/// `GET /api/jobs/{id}`: one job, with its steps so far while it runs.
pub async fn job(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = checked(&id)?;
    blocking(move || {
        let running = engine_running(&state);
        let kept = state.history();
        let job = kept
            .views()
            .newest_first(running)
            .find(|(j, _)| j.job_id == id)
            .map(|(j, result)| JobView {
                result,
                ..j.clone()
            })
            .ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, format!("no job {id} in the history"))
            })?;
        // A running job is the newest: its steps so far are among the records since it started.
        let steps = if job.result == crate::history::JobResult::Running {
            crate::status_doc::running_doc(&job, kept.newest()).steps
        } else {
            job.steps.clone()
        };
        Ok(Json(serde_json::json!({ "job": job, "steps": steps })))
    })
    .await
}

/// Whether the history has job `id` running.
fn is_running(state: &AppState, id: &str) -> bool {
    let running = engine_running(state);
    let kept = state.history();
    kept.views()
        .newest_first(running)
        .next()
        .is_some_and(|(j, r)| j.job_id == id && r == crate::history::JobResult::Running)
}

/// `GET /api/jobs/{id}/log`: the job's log as text; `X-Log-Bytes` says how many bytes it had, so that
/// live `log` events from that offset on continue it without a gap or a repeat.
pub async fn job_log(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = checked(&id)?;
    let bytes = blocking(move || {
        let mut f = match super::events::open_job_log(&state.job_logs(), &id) {
            Ok(f) => f,
            // A job that has just started may not have written its first line yet: its log is empty.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && is_running(&state, &id) => {
                return Ok(Vec::new());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("job {id} has no log (none yet, or pruned: keep_job_logs)"),
                ));
            }
            Err(e) => {
                return Err(ApiError::internal(anyhow::anyhow!(
                    "cannot read the log of job {id}: {e}"
                )));
            }
        };
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(|e| {
            ApiError::internal(anyhow::anyhow!("cannot read the log of job {id}: {e}"))
        })?;
        Ok(bytes)
    })
    .await?;
    let mut response = bytes.clone().into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("x-log-bytes", HeaderValue::from(bytes.len() as u64));
    Ok(response)
}

/// `GET /api/fleet`: every host of the fleet (`fleet status --json`), when this host has `[fleet]`.
pub async fn fleet(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.fleet {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this host has no [fleet] section",
        ));
    }
    fleet_document(state).await.map(Json)
}

#[cfg(feature = "fleet")]
async fn fleet_document(state: Arc<AppState>) -> Result<serde_json::Value, ApiError> {
    // The fleet's client builds a runtime of its own, so it runs on a thread outside this one.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(crate::fleet::status_document(&state.config));
    });
    rx.await
        .map_err(|_| ApiError::internal(anyhow::anyhow!("the fleet view failed")))?
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("{e:#}")))
}

#[cfg(not(feature = "fleet"))]
async fn fleet_document(_: Arc<AppState>) -> Result<serde_json::Value, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "this t8k-engine was built without the fleet feature",
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn job_ids_are_ulids_and_nothing_else() {
        assert!(super::is_job_id("01KBX5ZQ8Y3M4N6P7R8S9T0V1W"));
        assert!(!super::is_job_id("../../../../etc/passwd0000"));
        assert!(!super::is_job_id("01kbx5zq8y3m4n6p7r8s9t0v1w"));
        assert!(!super::is_job_id("01KBX5ZQ8Y3M4N6P7R8S9T0V1"));
    }
}
