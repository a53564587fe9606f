//! Owns `POST /hooks/git`: push events from GitHub (`X-Hub-Signature-256: sha256=HEX`) and Gitea or
//! Forgejo (`X-Gitea-Signature` / `X-Forgejo-Signature: HEX`), HMAC-SHA256 over the raw body checked
//! against each configured secret in constant time before the body is read as JSON; capped bodies;
//! replays of a delivery id within the dedup window ignored. A valid push of a configured repository and
//! branch drops one trigger with a build line per target (coalescing does the rest); everything else gets
//! a 4xx with the reason. It never runs anything itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::config::Hook;
use super::{ApiError, AppState, blocking};

/// At most this many delivery ids are remembered; the oldest go first.
const MAX_REMEMBERED: usize = 10_000;

/// Delivery ids seen recently, with when.
#[derive(Debug, Default)]
pub struct Replays(Mutex<HashMap<String, Instant>>);

impl Replays {
    /// Remembers the deliveries `requests` (the requests journal's records) name from within `window`
    /// (the pushes that dropped a trigger): a replay is still known after `serve` restarts.
    pub fn remember_recorded(&self, requests: &[crate::history::Event], window: Duration) {
        let (now, clock) = (jiff::Timestamp::now(), Instant::now());
        let mut seen: Vec<(String, Instant)> = requests
            .iter()
            .filter_map(|event| {
                let crate::history::Event::Requested {
                    delivery: Some(delivery),
                    at,
                    ..
                } = event
                else {
                    return None;
                };
                let at = at.parse::<jiff::Timestamp>().ok()?;
                // A record from the future (the clock was set back) counts as just now.
                let age = Duration::from_secs_f64(now.duration_since(at).as_secs_f64().max(0.0));
                let when = clock.checked_sub(age).filter(|_| age < window)?;
                Some((delivery.clone(), when))
            })
            .collect();
        seen.sort_by_key(|(_, when)| std::cmp::Reverse(*when));
        seen.truncate(MAX_REMEMBERED);
        self.0.lock().unwrap().extend(seen);
    }

    /// Whether `id` was seen within `window`; remembers it either way.
    fn seen(&self, id: &str, window: Duration) -> bool {
        let mut map = self.0.lock().unwrap();
        let now = Instant::now();
        map.retain(|_, at| now.duration_since(*at) < window);
        if map.len() >= MAX_REMEMBERED
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.to_string(), now).is_some()
    }

    /// Forgets `id` (its push could not be acted on, so a redelivery must not count as a replay).
    fn forget(&self, id: &str) {
        self.0.lock().unwrap().remove(id);
    }
}

fn first<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| headers.get(*n))
        .and_then(|v| v.to_str().ok())
}

/// The signature the forge sent, as bytes.
fn signature(headers: &HeaderMap) -> Result<Vec<u8>, ApiError> {
    let hex_text = if let Some(github) = first(headers, &["x-hub-signature-256"]) {
        github
            .strip_prefix("sha256=")
            .ok_or_else(|| ApiError::unauthorized("X-Hub-Signature-256 must be `sha256=HEX`"))?
    } else if let Some(gitea) = first(headers, &["x-gitea-signature", "x-forgejo-signature"]) {
        gitea.strip_prefix("sha256=").unwrap_or(gitea)
    } else {
        return Err(ApiError::unauthorized(
            "no signature: set the webhook's secret (GitHub sends X-Hub-Signature-256, Gitea and Forgejo X-Gitea-Signature)",
        ));
    };
    hex::decode(hex_text.trim())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| ApiError::unauthorized("the signature is not 64 hex digits"))
}

/// The hooks whose secret signed `body` (each compared in constant time by `verify_slice`).
fn signed_by<'a>(hooks: &'a [Hook], body: &[u8], sig: &[u8]) -> Vec<&'a Hook> {
    hooks
        .iter()
        .filter(|h| {
            let Ok(secret) = h.secret() else { return false };
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&secret) else {
                return false;
            };
            mac.update(body);
            mac.verify_slice(sig).is_ok()
        })
        .collect()
}

/// What a push says, read only after its signature checked out.
struct Push {
    repository: String,
    branch: Option<String>,
    after: String,
    deleted: bool,
}

fn push(body: &[u8]) -> Result<Push, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("the body is not JSON: {e}")))?;
    let repository = value["repository"]["full_name"]
        .as_str()
        .ok_or_else(|| ApiError::bad("the push has no repository.full_name"))?
        .to_string();
    let reference = value["ref"]
        .as_str()
        .ok_or_else(|| ApiError::bad("the push has no ref"))?;
    let after = value["after"].as_str().unwrap_or("").to_string();
    Ok(Push {
        repository,
        branch: reference.strip_prefix("refs/heads/").map(str::to_string),
        deleted: value["deleted"].as_bool() == Some(true)
            || (!after.is_empty() && after.bytes().all(|b| b == b'0')),
        after,
    })
}

fn status(code: StatusCode, message: String) -> ApiError {
    ApiError::new(code, message)
}

/// `POST /hooks/git`.
pub async fn git(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let (body, signed) = signed_body(&state, &headers, body).await?;
    let event = first(
        &headers,
        &["x-github-event", "x-gitea-event", "x-forgejo-event"],
    )
    .unwrap_or("")
    .to_string();
    if event == "ping" {
        return Ok((StatusCode::OK, Json(serde_json::json!({ "pong": true }))));
    }
    if event != "push" {
        return Err(ApiError::bad(format!(
            "event `{}` is not handled: only push events trigger builds (choose \"just the push event\")",
            event.escape_debug()
        )));
    }
    let delivery = first(
        &headers,
        &[
            "x-github-delivery",
            "x-gitea-delivery",
            "x-forgejo-delivery",
        ],
    )
    .filter(|d| !d.is_empty() && d.len() <= 100)
    .ok_or_else(|| ApiError::bad("no delivery id (X-GitHub-Delivery or X-Gitea-Delivery)"))?
    .to_string();
    let push = push(&body)?;
    let (branch, matching) = hooks_for(&signed, &push)?;
    let window = Duration::from_secs(state.web.hook_dedup_seconds);
    if state.replays.seen(&delivery, window) {
        tracing::info!("webhook delivery {delivery} seen before: ignored as a replay");
        return Ok((
            StatusCode::OK,
            Json(serde_json::json!({
                "ignored": format!("delivery {delivery} was received before (within {}s): a replay", window.as_secs()),
            })),
        ));
    }
    let st = state.clone();
    let push = Pushed {
        repository: push.repository.clone(),
        branch,
        after: push.after.clone(),
        delivery: delivery.clone(),
    };
    let result = blocking(move || drop_push(&st, &matching, &push)).await;
    if result.is_err() {
        state.replays.forget(&delivery);
    }
    result
}

/// The body, read up to `web.max_hook_bytes`, and the configured hooks whose secret signed it.
async fn signed_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(axum::body::Bytes, Vec<Hook>), ApiError> {
    let cap = state.web.max_hook_bytes;
    let too_big = || {
        status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {cap} bytes (web.max_hook_bytes)"),
        )
    };
    let declared =
        first(headers, &[header::CONTENT_LENGTH.as_str()]).and_then(|l| l.parse::<u64>().ok());
    if declared.is_some_and(|l| l > cap as u64) {
        return Err(too_big());
    }
    if state.web.hooks.is_empty() {
        return Err(status(
            StatusCode::NOT_FOUND,
            "no webhook is configured ([web] hooks)".into(),
        ));
    }
    let sig = signature(headers)?;
    let body = axum::body::to_bytes(body, cap)
        .await
        .map_err(|_| too_big())?;
    let hooks = state.web.hooks.clone();
    let signed = {
        let body = body.clone();
        blocking(move || {
            Ok(signed_by(&hooks, &body, &sig)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>())
        })
        .await?
    };
    if signed.is_empty() {
        tracing::warn!("webhook refused: its signature matches no configured secret");
        return Err(ApiError::unauthorized(
            "the signature does not match: check the webhook's secret against web.hooks secret_file",
        ));
    }
    Ok((body, signed))
}

/// The pushed branch and the signed hooks for its repository and branch, or why the push builds nothing.
fn hooks_for(signed: &[Hook], push: &Push) -> Result<(String, Vec<Hook>), ApiError> {
    let Some(branch) = push.branch.clone() else {
        return Err(status(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{} is not a branch: only branch pushes trigger builds",
                push.repository
            ),
        ));
    };
    let for_repo: Vec<&Hook> = signed
        .iter()
        .filter(|h| h.repository.eq_ignore_ascii_case(&push.repository))
        .collect();
    if for_repo.is_empty() {
        return Err(status(
            StatusCode::NOT_FOUND,
            format!(
                "no webhook is configured for repository `{}` (web.hooks repository)",
                push.repository.escape_debug()
            ),
        ));
    }
    let matching: Vec<Hook> = for_repo
        .into_iter()
        .filter(|h| h.branch == branch)
        .cloned()
        .collect();
    if matching.is_empty() {
        return Err(status(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "pushes to branch `{}` of {} trigger nothing (web.hooks branch)",
                branch.escape_debug(),
                push.repository
            ),
        ));
    }
    if push.deleted {
        return Err(status(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "branch {branch} of {} was deleted: nothing to build",
                push.repository
            ),
        ));
    }
    Ok((branch, matching))
}

/// A push that will drop a trigger: what the request record says of it.
struct Pushed {
    repository: String,
    branch: String,
    /// The commit pushed.
    after: String,
    /// The forge's delivery id.
    delivery: String,
}

/// One trigger with a `build` line per target of the matching hooks, recorded as asked by the hook (with
/// its delivery id, so that a replay is known after a restart).
fn drop_push(
    state: &AppState,
    hooks: &[Hook],
    pushed: &Pushed,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Pushed {
        repository, branch, ..
    } = pushed;
    let mut lines: Vec<String> = Vec::new();
    for target in hooks.iter().flat_map(|h| h.targets.iter()) {
        let (kind, tenant, site) =
            super::config::target_spec(target).map_err(|e| ApiError::bad(format!("{e:#}")))?;
        let mut line = format!("type={kind},tenant={tenant}");
        if let Some(site) = site {
            line.push_str(&format!(",site={site}"));
        }
        line.push_str(",command=build");
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    let name = crate::queue::new_trigger_name();
    let by = hooks[0].who();
    let short: String = pushed.after.chars().take(12).collect();
    super::actions::append_request(
        state,
        &crate::history::Event::Requested {
            action: "trigger".into(),
            by: by.clone(),
            detail: format!(
                "push of {short} to {repository} {branch}: {}",
                lines.join("; ")
            ),
            trigger: Some(name.clone()),
            job_id: None,
            delivery: Some(pushed.delivery.clone()),
            at: jiff::Timestamp::now().to_string(),
        },
    )?;
    let mut text = lines.join("\n");
    text.push('\n');
    let path = state.layout.state.join(&name);
    crate::fs::write_new_durably(&path, text.as_bytes()).map_err(ApiError::internal)?;
    tracing::info!(
        "push of {short} to {repository} {branch} ({by}): wrote {}",
        path.display()
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "trigger": name, "lines": lines, "requested_by": by })),
    ))
}
