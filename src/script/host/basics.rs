//! Owns the small helpers every script uses: log lines, the engine's environment, the time, waiting
//! (interrupted by a cancel or the job's deadline) and whether a local port accepts connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine};

use super::ctx::JobCtx;
use super::options::{MAX_SECS, number};
use super::{Res, terminated};

pub(super) fn register(engine: &mut Engine, ctx: &Arc<JobCtx>) {
    engine.register_fn(
        "log",
        |msg: &str| tracing::info!(target: "t8k::script", "{msg}"),
    );
    engine.register_fn(
        "warn",
        |msg: &str| tracing::warn!(target: "t8k::script", "{msg}"),
    );
    engine.register_fn("env", |name: &str| {
        std::env::var(name).map_or(Dynamic::UNIT, Dynamic::from)
    });
    engine.register_fn("unix_time", || -> i64 {
        jiff::Timestamp::now().as_second()
    });
    engine.register_fn("port_open", |port: i64| -> Res<bool> {
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port_open(): `{port}` is not a port"))?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
    });
    let c = ctx.clone();
    engine.register_fn("sleep", move |secs: i64| sleep_secs(&c, secs as f64));
    let c = ctx.clone();
    engine.register_fn("sleep", move |secs: f64| sleep_secs(&c, secs));
}

fn sleep_secs(ctx: &JobCtx, secs: f64) -> Res<()> {
    ctx.refuse_in_check("sleep")?;
    if !(0.0..=MAX_SECS).contains(&secs) {
        return Err(format!(
            "sleep(): `{}` is not a number of seconds up to {MAX_SECS}",
            number(secs)
        )
        .into());
    }
    interruptible_sleep(ctx, Duration::from_secs_f64(secs))
}

/// Waits `d`, stopping the script early when the job is cancelled or out of time.
pub(super) fn interruptible_sleep(ctx: &JobCtx, d: Duration) -> Res<()> {
    let end = Instant::now() + d;
    loop {
        if let Some(reason) = ctx.stop_reason() {
            return terminated(reason);
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}
