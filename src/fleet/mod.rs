//! Owns the fleet: several hosts fed through NATS JetStream. One bridge per host (`t8k-engine fleet`) turns
//! this host's jobs into ordinary trigger files and the engine's journal into events and status; producers
//! (`trigger --fleet`, an outbox) publish jobs routed by the site map. It never holds the engine's lock,
//! claims a trigger or runs a build, and tokio never leaves this module: every entry point is blocking and
//! builds the one runtime itself, so a host without `[fleet]` starts no runtime and opens no connection.
//!
//! Files: `config` (the `[fleet]` section), `names` (subjects, keys, file names), `connect` (connection and
//! runtime), `setup` (streams, buckets, consumers), `server_conf` (the server's accounts and permissions),
//! `ledger` (exactly one trigger per job), `inbound` (jobs to triggers), `journal_tail` and `outbound`
//! (journal to events, status), `outbox` and `producer` (publishing), `sites` (the site map), `view`
//! (`fleet status` and `fleet history`), `wait` (`trigger --fleet --wait`), `bridge` (the bridge process),
//! `cli` (the commands).

pub mod bridge;
pub mod cli;
pub mod config;
pub mod connect;
pub mod inbound;
pub mod journal_tail;
pub mod ledger;
pub mod names;
pub mod outbound;
pub mod outbox;
pub mod producer;
pub mod report;
pub mod server_conf;
pub mod setup;
pub mod sites;
pub mod view;
pub mod wait;

pub use view::status_document;
