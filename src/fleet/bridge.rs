//! Owns `t8k-engine fleet`, one host's bridge: takes the bridge lock, connects, and runs the inbound half
//! (jobs to triggers), the outbound half (journal to events, status), the outbox and the watch on the
//! server's give-up advisories inside the one runtime, until SIGTERM or SIGINT. It never runs a job.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use futures_util::StreamExt;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::config::FleetConfig;
use super::ledger::{self, LastChance, Ledger};
use super::report::Report;
use crate::config::Config;
use crate::fs::OwnDir;
use crate::layout::Layout;

/// Runs the bridge until it is told to stop; returns the exit code.
pub fn run(config: &Config, layout: &Layout) -> Result<crate::error::Exit> {
    let fleet = FleetConfig::of(config)?;
    let host = fleet.host()?.to_string();
    let (dir, _lock, ledger) = ledger::open_local(layout)?;
    std::fs::create_dir_all(&layout.state)?;
    let runtime = super::connect::runtime()?;
    runtime.block_on(serve(config, layout, &fleet, host, dir, ledger))
}

/// The bridge in its runtime: connects, starts the outbound half, the outbox and the advisory watch, runs
/// the inbound half until a signal (or its failure) stops it, then winds the others down.
async fn serve(
    config: &Config,
    layout: &Layout,
    fleet: &FleetConfig,
    host: String,
    dir: Arc<OwnDir>,
    ledger: Ledger,
) -> Result<crate::error::Exit> {
    let client = super::connect::connect(fleet, true).await?;
    let js = async_nats::jetstream::new(client.clone());
    let report = Arc::new(Mutex::new(Report {
        started_at: jiff::Timestamp::now().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..Report::default()
    }));
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        stop_on_signal().await;
        info!("fleet: stopping: the job being handed over is finished first");
        let _ = stop_tx.send(true);
    });
    info!(
        "fleet: bridge of host {host} started ({} jobs in its ledger), server {}",
        ledger.len(),
        fleet.url
    );
    let mut tasks = vec![tokio::spawn(
        super::outbound::Outbound {
            config: config.clone(),
            layout: layout.clone(),
            host: host.clone(),
            js: js.clone(),
            report: report.clone(),
            status_every: fleet.status_every(),
            dir: dir.clone(),
            history: Arc::new(Mutex::new(crate::history::Kept::new(false, false))),
        }
        .run(stop.clone()),
    )];
    tasks.extend(fleet.outbox.clone().map(|dir| {
        tokio::spawn(
            super::outbox::Outbox {
                dir,
                js: js.clone(),
                report: report.clone(),
                max_bytes: config.max_trigger_bytes,
                writer_check: crate::queue::ready::WriterProbe::from_config(config),
            }
            .run(stop.clone()),
        )
    }));
    tokio::spawn(watch_advisories(
        client.clone(),
        host.clone(),
        dir.clone(),
        report.clone(),
    ));
    let inbound = super::inbound::Inbound {
        layout: layout.clone(),
        host,
        dir,
        ledger,
        client: client.clone(),
        js,
        report,
        sites: None,
    }
    .run(stop.clone())
    .await;
    if let Err(e) = &inbound {
        error!("fleet: the bridge stops: {e:#}");
    }
    wind_down(stop, inbound.is_err(), tasks).await;
    let _ = client.flush().await;
    inbound.map(|()| crate::error::Exit::Ok)
}

/// Whatever stopped the inbound half stops the rest: waits for the stop (unless the inbound half failed),
/// then for each task; the outbound half sends the journal once more on its way out.
async fn wind_down(
    mut stop: watch::Receiver<bool>,
    inbound_failed: bool,
    tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
) {
    while !*stop.borrow() && !inbound_failed {
        let _ = stop.changed().await;
    }
    drop(stop);
    for task in tasks {
        match task.await {
            Ok(Err(e)) => warn!("fleet: {e:#}"),
            Err(e) => warn!("fleet: a bridge task ended abnormally: {e}"),
            Ok(Ok(())) => {}
        }
    }
}

async fn stop_on_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
}

/// Listens for the server giving up on one of this host's jobs. A job the bridge kept a last-chance copy of
/// is finished from that copy; any other is stuck in the stream and reported loudly.
async fn watch_advisories(
    client: async_nats::Client,
    host: String,
    dir: Arc<OwnDir>,
    report: Arc<Mutex<Report>>,
) {
    let subject = super::names::max_deliveries_advisory(&host);
    let mut sub = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            warn!("fleet: cannot listen for {subject}: {e}");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        let seq = serde_json::from_slice::<serde_json::Value>(&msg.payload)
            .ok()
            .and_then(|v| v["stream_seq"].as_u64())
            .unwrap_or(0);
        let kept = LastChance::load(&dir)
            .ok()
            .flatten()
            .is_some_and(|lc| lc.seq == seq);
        let mut report = report.lock().unwrap();
        if kept || report.last_chances.contains(&seq) {
            info!(
                "fleet: the server gave up redelivering stream seq {seq}; the bridge set it aside from its last-chance copy"
            );
        } else {
            error!(
                "fleet: the server gave up redelivering job stream seq {seq} of host {host} and the bridge has no copy of it: it stays in stream {}; an administrator can read it with `nats stream get {} {seq}` and remove it with `nats stream rmm {} {seq}`",
                super::names::JOBS_STREAM,
                super::names::JOBS_STREAM,
                super::names::JOBS_STREAM
            );
            report.stuck.push(seq);
        }
    }
}
