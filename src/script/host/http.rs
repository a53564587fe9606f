//! Owns `http_check` (health checks through `crate::http`, bounded by the job's deadline) and
//! `http_post` (webhooks, whose messages name only the URL's origin: the path carries the secret).

use std::sync::Arc;
use std::time::Duration;

use rhai::{Dynamic, Engine, Map};
use serde::Serialize;

use super::ctx::JobCtx;
use super::options::Opts;
use super::{Res, terminated, to_map};
use crate::http;

pub(super) fn register(engine: &mut Engine, ctx: &Arc<JobCtx>) {
    let c = ctx.clone();
    engine.register_fn("http_check", move |url: &str| {
        http_check(&c, url, &Map::new())
    });
    let c = ctx.clone();
    engine.register_fn("http_check", move |url: &str, opts: Map| {
        http_check(&c, url, &opts)
    });
    let c = ctx.clone();
    engine.register_fn("http_post", move |url: &str, body: Dynamic| {
        http_post(&c, url, body, &Map::new())
    });
    let c = ctx.clone();
    engine.register_fn("http_post", move |url: &str, body: Dynamic, opts: Map| {
        http_post(&c, url, body, &opts)
    });
}

/// Refuses anything but an http:// or https:// URL.
fn web_url(f: &str, url: &str) -> Res<()> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{f}(): `{url}` is not an http:// or https:// URL").into())
    }
}

/// What `http_check` returns.
#[derive(Serialize)]
struct Checked {
    ok: bool,
    status: u16,
    body: String,
    location: Option<String>,
    attempts: u32,
    /// Seconds.
    elapsed: f64,
}

fn http_check(ctx: &JobCtx, url: &str, opts: &Map) -> Res<Map> {
    ctx.refuse_in_check("http_check")?;
    let o = Opts::new(
        "http_check",
        opts,
        &[
            "expect",
            "timeout",
            "interval",
            "allow_fail",
            "headers",
            "redirect_ok",
            "redirect_bad",
        ],
    )?;
    web_url("http_check", url)?;
    let probe = probe(&o)?;
    let asked = o.secs("timeout")?.unwrap_or(ctx.settings.http_timeout);
    // The job's deadline stops the checks too: nothing else interrupts them.
    let limit = ctx.limit(asked);
    let interval = o.secs("interval")?.unwrap_or(http::FIRST_PAUSE);
    let c = http::check(url, &probe, limit.timeout, interval, &ctx.current_cancel());
    if c.cancelled {
        return terminated(ctx.stop_reason().unwrap_or_else(|| "job cancelled".into()));
    }
    if !c.ok && limit.by_deadline {
        return terminated(ctx.over_time(&format!(" while checking {url}")));
    }
    if c.ok || o.bool("allow_fail")? {
        tracing::info!(
            "http_check {url}: status {}{} after {} attempt(s)",
            c.status,
            c.location
                .as_deref()
                .map(|l| format!(" (redirect to {l})"))
                .unwrap_or_default(),
            c.attempts
        );
        return to_map(&Checked {
            ok: c.ok,
            status: c.status,
            body: c.body,
            location: c.location,
            attempts: c.attempts,
            elapsed: c.elapsed.as_secs_f64(),
        });
    }
    let message = format!(
        "http_check {url}: no {} within {}s after {} attempt(s) (last: {})",
        wanted(&probe),
        limit.timeout.as_secs_f64(),
        c.attempts,
        c.last_problem.unwrap_or_else(|| "nothing".into())
    );
    ctx.fail_here(message.clone(), Vec::new());
    Err(message.into())
}

/// The request and the answers that count as healthy, from `http_check`'s options.
fn probe(o: &Opts) -> Res<http::Probe> {
    let expect = match o.get("expect") {
        None => http::Expect::Success,
        Some(v) if v.is_int() => http::Expect::Any(vec![status_code(v.as_int().unwrap_or(0))?]),
        Some(v) if v.is_array() => {
            let codes = v.clone().into_array().unwrap_or_default();
            http::Expect::Any(
                codes
                    .iter()
                    .map(|c| status_code(c.as_int().unwrap_or(0)))
                    .collect::<Res<_>>()?,
            )
        }
        Some(v) => return o.wrong("expect", "a status code or an array of them", v),
    };
    let mut probe = http::Probe::new(expect);
    probe.headers = o.pairs("headers")?;
    probe.redirect_ok = o.bool("redirect_ok")?;
    probe.redirect_bad = o.strings("redirect_bad", "an array of paths such as [\"/maint\"]")?;
    Ok(probe)
}

/// What a failed check wanted, for its message.
fn wanted(probe: &http::Probe) -> String {
    let mut want = match &probe.expect {
        http::Expect::Success => "2xx status".to_string(),
        http::Expect::Any(list) => format!("status {list:?}"),
    };
    if probe.redirect_ok {
        want.push_str(" or redirect");
        if !probe.redirect_bad.is_empty() {
            want.push_str(&format!(" (except to {})", probe.redirect_bad.join(", ")));
        }
    }
    want
}

fn status_code(n: i64) -> Res<u16> {
    if (100..=599).contains(&n) {
        Ok(n as u16)
    } else {
        Err(format!("http_check(): `{n}` is not an HTTP status code").into())
    }
}

/// What `http_post` returns.
#[derive(Serialize)]
struct Posted {
    status: u16,
}

/// POSTs a string (as text) or a map (as JSON) to a webhook; throws on a transport error or a non-2xx status.
fn http_post(ctx: &JobCtx, url: &str, body: Dynamic, opts: &Map) -> Res<Map> {
    ctx.refuse_in_check("http_post")?;
    let o = Opts::new("http_post", opts, &["headers", "timeout"])?;
    web_url("http_post", url)?;
    let (text, content_type) = if body.is_string() {
        (body.to_string(), "text/plain; charset=utf-8")
    } else {
        let value: serde_json::Value = rhai::serde::from_dynamic(&body)?;
        (value.to_string(), "application/json")
    };
    let asked = o.secs("timeout")?.unwrap_or(ctx.settings.http_timeout);
    let timeout = ctx.limit(asked).timeout.max(Duration::from_millis(1));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.post(url).header("content-type", content_type);
    for (k, v) in o.pairs("headers")? {
        request = request.header(k, v);
    }
    // Webhook URLs carry their secret in the path (Slack, Discord, Teams): messages name the origin only.
    let shown = url_origin(url);
    let status = request
        .send(text)
        .map_err(|e| format!("http_post {shown}: {}", e.to_string().replace(url, &shown)))?
        .status()
        .as_u16();
    if !(200..300).contains(&status) {
        return Err(format!("http_post {shown}: the server answered status {status}").into());
    }
    to_map(&Posted { status })
}

/// `scheme://host:port/…` of a URL: no userinfo, and the path and query elided when there are any.
fn url_origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(url)".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let more = if end < rest.len() && &rest[end..] != "/" {
        "/…"
    } else {
        ""
    };
    format!("{scheme}://{host}{more}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_post_messages_name_only_the_origin() {
        assert_eq!(
            url_origin("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            url_origin("http://u:p@127.0.0.1:8080/x?token=t"),
            "http://127.0.0.1:8080/…"
        );
        assert_eq!(
            url_origin("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(url_origin("https://h?k=v"), "https://h/…");
    }
}
