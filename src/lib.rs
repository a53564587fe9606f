//! t8k-engine: takes the trigger files a TractStack server receives and runs each job through an
//! operator-editable Rhai script, never losing or half-processing a trigger.
//!
//! Dependencies point one way: `cli` → `drain` → (`queue`, `trigger`, `layout`, `script`) → `supervise`, `http`.
//! The supervisor knows nothing of Rhai; scripts never touch the state directory. `preflight` and
//! `status` only read: the root, the tools on the steps' PATH, systemd's unit directory. `queue`, `lock`,
//! `history` and `release` reach the engine's own directories only through `owndir`, which never follows
//! a link. The fleet (`fleet`, behind the `fleet` feature) only drops trigger files and reads the journal:
//! it never holds the lock or runs builds, and tokio never leaves it. The web server (`web`, behind the
//! `web` feature, `t8k-engine serve`) is the same kind of neighbour: it reads the journal, the job logs and
//! the status (`status_doc`, the versioned document it serves), drops trigger files, appends its requests
//! to the journal and signals a cancel, but never holds the lock or runs a build; its tokio stays in it.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod drain;
pub mod faults;
#[cfg(feature = "fleet")]
pub mod fleet;
pub mod history;
pub mod http;
pub mod joblog;
pub mod layout;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod owndir;
pub mod perms;
pub mod preflight;
pub mod progress;
pub mod queue;
pub mod ready;
pub mod redact;
pub mod release;
pub mod script;
pub mod status;
pub mod status_doc;
pub mod supervise;
pub mod trigger;
pub mod watch;
#[cfg(feature = "web")]
pub mod web;
pub mod whitelist;
