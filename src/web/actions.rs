//! Owns the actions of the API (trigger a job, cancel the running job, roll a target back), each asked for
//! with a token: it checks the request as the command line would, records who asked in the journal
//! *before* acting (an action that cannot be recorded is not taken), then drops a trigger file or signals
//! the engine. It never holds the lock, runs a job or changes a release itself.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde::Deserialize;

use super::auth::Caller;
use super::config::target_spec;
use super::{ApiError, AppState, blocking};
use crate::history::Event;
use crate::trigger::JobSpec;

/// `POST /api/trigger`: a target (or the trigger fields) and a command.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    /// `main`, `multi/TENANT` or `dedicated/SITE`; or give `type` (and `tenant`, `site`).
    pub target: Option<String>,
    /// `main`, `prod`, `multi` or `dedicated`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Tenant (default `default`).
    pub tenant: Option<String>,
    /// Site (dedicated only).
    pub site: Option<String>,
    /// The script function (default `build`).
    pub command: Option<String>,
    /// Build everything even if nothing changed.
    #[serde(default)]
    pub force: bool,
}

/// `POST /api/cancel`: optionally the job meant, so that a job that started since is not cancelled.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// The job to cancel; refused when another one is running.
    pub job_id: Option<String>,
}

/// `POST /api/rollback`: a target and, optionally, the kept release to put back (default: the previous).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// `main`, `multi/TENANT` or `dedicated/SITE`.
    pub target: String,
    /// A release number from `GET /api/releases` (`id`), as a JSON number or a string of digits.
    pub to: Option<serde_json::Value>,
}

/// A release number given to `POST /api/rollback`, checked as the trigger parser checks `release=N`.
fn release_number(to: &serde_json::Value) -> Result<u64, ApiError> {
    let text = match to {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        _ => String::new(),
    };
    crate::trigger::release_number(&text).map_err(|_| {
        ApiError::bad(format!(
            "`to` must be a release number from GET /api/releases (such as 12), not {to}"
        ))
    })
}

/// The trigger line of a target's job: `type=…,tenant=…[,site=…],command=…` plus `extra` fields.
fn line_for(target: &str, command: &str, extra: &str) -> Result<String, ApiError> {
    let (kind, tenant, site) = target_spec(target).map_err(|e| ApiError::bad(format!("{e:#}")))?;
    let mut line = format!("type={kind},tenant={tenant}");
    if let Some(site) = site {
        line.push_str(&format!(",site={site}"));
    }
    line.push_str(&format!(",command={command}{extra}"));
    Ok(line)
}

fn parse(line: &str) -> Result<JobSpec, String> {
    crate::trigger::parse_line(line, 1).map_err(|e| e.message)
}

fn check_command(state: &AppState, spec: &JobSpec) -> Result<(), String> {
    crate::script::check_command(
        &crate::script::Scripts::new(&state.layout.scripts_dir),
        &crate::script::Settings::from_config(&state.config, &state.layout),
        spec.kind,
        &spec.command,
    )
    .map_err(|e| e.headline())
}

/// Records who asked, before anything is done: an action the history cannot hold is not taken.
pub(super) fn record(
    state: &AppState,
    action: &str,
    by: &str,
    detail: String,
    trigger: Option<String>,
    job_id: Option<String>,
) -> Result<(), ApiError> {
    append_request(
        state,
        &Event::Requested {
            action: action.into(),
            by: by.into(),
            detail,
            trigger,
            job_id,
            delivery: None,
            at: jiff::Timestamp::now().to_string(),
        },
    )
}

/// Appends a `Requested` record to the requests journal; an action the history cannot hold is not taken.
pub(super) fn append_request(state: &AppState, event: &Event) -> Result<(), ApiError> {
    crate::history::Journal::requests(&state.layout)
        .append(event)
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot record the request in the history, so nothing was done: {e:#}"),
            )
        })
}

/// Records the request, then drops `spec` as a new trigger file; returns its name.
fn drop_recorded(
    state: &AppState,
    action: &str,
    by: &str,
    spec: &JobSpec,
) -> Result<String, ApiError> {
    let name = crate::queue::new_trigger_name();
    record(state, action, by, spec.to_line(), Some(name.clone()), None)?;
    let path = state.layout.state.join(&name);
    crate::fs::write_new_durably(&path, format!("{}\n", spec.to_line()).as_bytes())
        .map_err(ApiError::internal)?;
    tracing::info!(
        "{action} asked by {by}: wrote {} ({})",
        path.display(),
        spec.to_line()
    );
    Ok(name)
}

fn accepted(body: serde_json::Value) -> (StatusCode, Json<serde_json::Value>) {
    (StatusCode::ACCEPTED, Json(body))
}

/// `POST /api/trigger`.
pub async fn trigger(
    State(state): State<Arc<AppState>>,
    Caller(by): Caller,
    body: Result<Json<TriggerRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Json(req) = body?;
    let command = req.command.clone().unwrap_or_else(|| "build".into());
    let force = if req.force { ",force=true" } else { "" };
    let line = match (&req.target, &req.kind) {
        (Some(target), None) => line_for(target, &command, force)?,
        (None, Some(kind)) => {
            let mut line = format!(
                "type={kind},tenant={}",
                req.tenant.as_deref().unwrap_or("default")
            );
            if let Some(site) = &req.site {
                line.push_str(&format!(",site={site}"));
            }
            format!("{line},command={command}{force}")
        }
        _ => {
            return Err(ApiError::bad(
                "give either `target` or `type` (with `tenant`, `site`)",
            ));
        }
    };
    let spec = parse(&line).map_err(|e| ApiError::bad(format!("invalid trigger: {e}")))?;
    blocking(move || {
        check_command(&state, &spec)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
        let name = drop_recorded(&state, "trigger", &by, &spec)?;
        Ok(accepted(serde_json::json!({
            "trigger": name,
            "line": spec.to_line(),
            "requested_by": by,
        })))
    })
    .await
}

/// `POST /api/cancel`: asks the engine to stop its running job (SIGUSR1, as `t8k-engine cancel`); the job's
/// end arrives as a `job_finished` event.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Caller(by): Caller,
    body: Result<Option<Json<CancelRequest>>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let req = body?.map(|Json(r)| r).unwrap_or_default();
    blocking(move || {
        let conflict = |m: String| ApiError::new(StatusCode::CONFLICT, m);
        let holder = crate::lock::EngineLock::probe(&state.layout.engine_dir)
            .map_err(ApiError::internal)?
            .ok_or_else(|| conflict("no engine is running: nothing to cancel".into()))?;
        // Only the newest job can be running.
        let job = state
            .history()
            .views()
            .newest_first(true)
            .next()
            .filter(|(_, result)| *result == crate::history::JobResult::Running)
            .map(|(j, _)| j.clone())
            .ok_or_else(|| {
                conflict(format!(
                    "the engine ({holder}) is running no job: nothing to cancel"
                ))
            })?;
        if let Some(want) = &req.job_id
            && *want != job.job_id
        {
            return Err(conflict(format!(
                "job {} is not running (job {} is): nothing was cancelled",
                want.escape_debug(),
                job.job_id
            )));
        }
        let pid = holder.pid.ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "the engine's pid is unknown (state/.t8k-engine/engine.pid): cannot signal it"
            ))
        })?;
        let detail = format!("job {} ({} {})", job.job_id, job.target, job.command);
        record(
            &state,
            "cancel",
            &by,
            detail,
            None,
            Some(job.job_id.clone()),
        )?;
        let pid = rustix::process::Pid::from_raw(pid as i32)
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("engine pid {pid} is not a pid")))?;
        rustix::process::kill_process(pid, rustix::process::Signal::USR1).map_err(|e| {
            ApiError::internal(anyhow::anyhow!(
                "cannot signal the engine (pid {pid:?}): {e}"
            ))
        })?;
        tracing::info!("cancel asked by {by}: job {}", job.job_id);
        Ok(accepted(serde_json::json!({
            "cancelling": job.job_id,
            "target": job.target,
            "requested_by": by,
        })))
    })
    .await
}

/// `POST /api/rollback`: checks the release against the records as `t8k-engine rollback` does, then drops
/// a `command=rollback,release=N` trigger naming it; the engine runs it under its lock, in queue order,
/// through the type's `rollback` function.
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    Caller(by): Caller,
    body: Result<Json<RollbackRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Json(req) = body?;
    let to = req.to.as_ref().map(release_number).transpose()?;
    blocking(move || {
        let (spec, plan) = crate::release::ask(
            &state.layout.releases_dir,
            &state.layout.root,
            &req.target,
            to,
        )?;
        let install = crate::release::install_of(&spec);
        if plan.to.id == plan.from.id {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "release {} of {install} is live already: nothing to roll back",
                    plan.to.id
                ),
            ));
        }
        check_command(&state, &spec)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
        let name = drop_recorded(&state, "rollback", &by, &spec)?;
        Ok(accepted(serde_json::json!({
            "trigger": name,
            "line": spec.to_line(),
            "install": install,
            "from": plan.from.id,
            "to": plan.to.id,
            "requested_by": by,
        })))
    })
    .await
}
