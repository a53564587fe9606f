//! Owns the daemon's hold on its inbox: the notify watch on it and the lock on the engine directory inside
//! it, checked against what is on disk (an `rm -rf` or a replaced directory) and taken again on a new one;
//! it never reads or runs a trigger.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::warn;

use crate::layout::Layout;
use crate::lock::EngineLock;
use crate::queue::Queue;
use crate::watch::{Hint, InboxWatch};

/// How long a missing inbox may stay missing before it is recreated (an `rm -rf` may still be running;
/// the operator may be recreating it).
const MISSING_GRACE: Duration = Duration::from_secs(2);
/// How soon a lost or missing inbox is looked at again.
const RECHECK: Duration = Duration::from_millis(200);

/// The watch on the inbox and the lock on its engine directory.
pub struct InboxGuard {
    layout: Layout,
    max_bytes: u64,
    watch: Option<InboxWatch>,
    lock: EngineLock,
    tell: Arc<dyn Fn(Hint) + Send + Sync>,
    missing_since: Option<Instant>,
    /// When to check the inbox again (after a lost watch, periodically).
    pub check_at: Option<Instant>,
}

/// What a check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// The watched inbox and the locked directory are the ones on disk.
    Intact,
    /// They were missing a moment ago; a check is due again soon.
    Waiting,
    /// They were replaced: recreated, locked and watched again; what was seen of the old inbox is stale.
    Renewed,
}

impl InboxGuard {
    /// Watches the inbox (recreating it if missing) with the lock already held; hints go to `tell`.
    pub fn new(
        layout: &Layout,
        max_bytes: u64,
        lock: EngineLock,
        tell: Arc<dyn Fn(Hint) + Send + Sync>,
    ) -> Result<Self> {
        let mut guard = InboxGuard {
            layout: layout.clone(),
            max_bytes,
            watch: None,
            lock,
            tell,
            missing_since: None,
            check_at: None,
        };
        guard.arm()?;
        Ok(guard)
    }

    /// The watch lost events or the inbox: look again shortly.
    pub fn lost(&mut self) {
        self.check_at.get_or_insert(Instant::now() + RECHECK);
    }

    fn arm(&mut self) -> Result<()> {
        self.watch = None;
        let tell = self.tell.clone();
        let watch = InboxWatch::arm(
            &self.layout.state,
            std::slice::from_ref(&self.layout.engine_dir),
            move |hint| tell(hint),
        )?;
        self.watch = Some(watch);
        Ok(())
    }

    /// Checks that the watched inbox and the locked engine directory are still the ones on disk. After
    /// they were deleted or replaced: wait a moment, then recreate the engine's directories, lock the new
    /// engine directory (the old lock died with the old one) and watch the new inbox.
    pub fn check(&mut self) -> Result<Checked> {
        let now = Instant::now();
        let intact =
            self.watch.as_ref().is_some_and(InboxWatch::still_valid) && self.lock.still_valid();
        if intact {
            self.missing_since = None;
            return Ok(Checked::Intact);
        }
        if !self.layout.state.is_dir() {
            let since = *self.missing_since.get_or_insert(now);
            if since.elapsed() < MISSING_GRACE {
                self.check_at = Some(now + RECHECK);
                return Ok(Checked::Waiting);
            }
        }
        self.missing_since = None;
        warn!(
            "the inbox {} was deleted or replaced; watching it again",
            self.layout.state.display()
        );
        Queue::open(&self.layout, self.max_bytes)?;
        match EngineLock::try_acquire(&self.layout.engine_dir)? {
            Ok(lock) => self.lock = lock,
            Err(holder) => anyhow::bail!(
                "after {} was replaced, another t8k-engine ({holder}) locked it; stopping so that only one engine runs",
                self.layout.state.display()
            ),
        }
        self.arm()?;
        Ok(Checked::Renewed)
    }

    /// The inbox directory.
    pub fn path(&self) -> &Path {
        &self.layout.state
    }
}
