//! Owns what a bridge says about itself in its host's status report: jobs handed over, redeliveries
//! recognised, jobs set aside, the last error; it only holds numbers and lines that others fill in.

use serde::Serialize;

/// The bridge's own counters and state.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// When the bridge started (RFC 3339).
    pub started_at: String,
    /// The engine version.
    pub version: String,
    /// Whether it is pulling jobs right now (connected, consumer found).
    pub pulling: bool,
    /// Jobs handed to the engine since it started.
    pub jobs: u64,
    /// Deliveries of jobs already handed over, recognised and only acknowledged.
    pub redeliveries: u64,
    /// Jobs set aside (rejected or poison) since it started.
    pub set_aside: u64,
    /// The last job handed over.
    pub last_job: Option<LastJob>,
    /// Journal records published to the events stream since it started.
    pub events: u64,
    /// Outbox files forwarded since it started.
    pub forwarded: u64,
    /// Jobs the server gave up on (MaxDeliver advisories) that the bridge had no copy of: stream sequences.
    pub stuck: Vec<u64>,
    /// Jobs on their last delivery that the bridge finished from its last-chance record: stream sequences.
    pub last_chances: Vec<u64>,
    /// The last error and when (RFC 3339).
    pub last_error: Option<(String, String)>,
}

/// A job handed over.
#[derive(Debug, Clone, Serialize)]
pub struct LastJob {
    /// Its id.
    pub id: String,
    /// Its trigger name in the inbox.
    pub trigger: String,
    /// When (RFC 3339).
    pub at: String,
}
