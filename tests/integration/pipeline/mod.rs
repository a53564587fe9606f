//! The shipped release pipeline end to end on the faithful fixture site (tests/fixtures/site): real git
//! remotes, real `go build` of a backend that keeps tractstack-go's contracts (tenant middleware, `/health`,
//! warm-up, `sqlite_fts5`, data under GO_BACKEND_PATH), real `pnpm` against a local npm registry that
//! publishes astro-tractstack, a real Astro frontend served by real pm2 in fork mode (as the installer
//! sets it up) or cluster mode.
//!
//! The backend runs under a real systemd: each site boots a user manager of its own in a private PID and
//! mount namespace (tests/common/systemd.rs), its backend is the installer's `tractstack-go.service` or an
//! instance of `tractstack-go@.service` (`unit.rs`), and the engine restarts it with its real
//! `restart_systemd`, plain `systemctl restart UNIT` reaching that manager through `sd.bin_dir()` first on
//! its PATH. Failures are real too: a build that fails its health check, a binary that exits 1. The one
//! stand-in is for journald, which does not run in the namespace: the units write their output to a file
//! and tests/fixtures/journalctl reads it for the scripts' log check.

mod failures;
mod releases;
mod site;
mod unit;
