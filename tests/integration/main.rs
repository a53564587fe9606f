//! The integration tests: one binary, one module per area, all driving the real `t8k-engine` binary (or,
//! for `props`, the library's queue and parser) through the helpers in `tests/common/`.
//!
//! Three test binaries stay apart: `tests/faults.rs` and `tests/fleet_storm.rs` need the `failpoints`
//! feature, and `tests/fuzz.rs` runs cargo-fuzz on its own workspace for a quarter of a minute per target
//! on every core it gets, which would starve the timing-sensitive tests here if it ran beside them.

#[path = "../common/mod.rs"]
mod common;
#[cfg(feature = "fleet")]
#[path = "../fleet_harness/mod.rs"]
mod fleet_harness;
#[path = "../sites_harness/mod.rs"]
mod sites_harness;

mod abuse;
mod astro_tractstack;
mod benches;
mod cli;
mod crash_loop;
#[cfg(feature = "fleet")]
mod fleet;
mod history;
mod intake;
mod journal;
mod operator;
mod pipeline;
mod props;
mod releases;
mod run;
mod scopes;
mod security;
mod services;
mod sites;
mod systemd;
mod tractstack;
mod watch;
#[cfg(feature = "web")]
mod web;
#[cfg(feature = "web")]
mod web_page;
mod whitelist_corpus;
