//! Owns the systemd notify protocol of `watch`: READY once startup recovery is done, watchdog pings from
//! the event loop only (so a hung loop is seen), STOPPING, and EXTEND_TIMEOUT while a job runs during
//! startup or a stop; outside systemd every message is a no-op. It never decides what the engine does.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::info;

/// What has been told to systemd, and when the next messages are due.
pub struct Notifier {
    watchdog: Option<Duration>,
    ready_sent: bool,
    next_ping: Instant,
    next_extend: Instant,
    /// How much longer each EXTEND_TIMEOUT asks for.
    extend_by: Duration,
}

impl Notifier {
    /// A notifier for a service whose stop kills with `kill_grace`.
    pub fn new(kill_grace: Duration) -> Notifier {
        let now = Instant::now();
        Notifier {
            watchdog: sd_notify::watchdog_enabled(),
            ready_sent: false,
            next_ping: now,
            next_extend: now,
            extend_by: kill_grace + Duration::from_secs(30),
        }
    }

    /// Whether READY was sent.
    pub fn ready_sent(&self) -> bool {
        self.ready_sent
    }

    /// READY=1, once: startup recovery is over and the inbox is watched.
    pub fn ready(&mut self, inbox: &std::path::Path) {
        if !self.ready_sent {
            self.ready_sent = true;
            let _ = sd_notify::notify(&[
                NotifyState::Ready,
                NotifyState::Status("watching for triggers"),
            ]);
            info!("watching {} for triggers", inbox.display());
        }
    }

    /// STOPPING=1.
    pub fn stopping(&mut self) {
        let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        self.next_extend = Instant::now();
    }

    /// A job started: extend at once if systemd is waiting (`extending`).
    pub fn job_started(&mut self) {
        self.next_extend = Instant::now();
    }

    /// Sends what is due: a watchdog ping, and EXTEND_TIMEOUT while `extending`.
    pub fn keepalive(&mut self, now: Instant, extending: bool) {
        if let Some(period) = self.watchdog
            && now >= self.next_ping
        {
            // Sent from the event loop only: if the loop hangs, the pings stop and systemd sees it.
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            self.next_ping = now + period / 2;
        }
        if extending && now >= self.next_extend {
            let extend = self.extend_by.as_micros().min(u32::MAX as u128) as u32;
            let _ = sd_notify::notify(&[NotifyState::ExtendTimeoutUsec(extend)]);
            self.next_extend = now + Duration::from_secs(10);
        }
    }

    /// When the next message is due.
    pub fn next_due(&self, extending: bool) -> Option<Instant> {
        let ping = self.watchdog.map(|_| self.next_ping);
        let extend = extending.then_some(self.next_extend);
        ping.into_iter().chain(extend).min()
    }
}
