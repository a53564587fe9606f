//! The engine modules the fuzz targets exercise, compiled from the engine's own source files under the
//! engine's crate name, so the targets read `t8k_engine::trigger::parse` as the engine's callers do.
//!
//! Why not depend on the engine crate: every crate of a fuzz build is compiled with coverage
//! instrumentation, and the engine's other dependencies (rhai, ureq and rustls, clap, jiff, ...) more than
//! doubled the clean build CI does on every run, for code no target reaches. The modules included here
//! use nothing of the rest of the engine; if one ever does, this build fails and says which path.

#[path = "../../src/trigger.rs"]
pub mod trigger;

#[path = "../../src/whitelist/mod.rs"]
pub mod whitelist;
