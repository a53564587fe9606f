//! The sites benchmark's yardstick, "one backend build and N frontend builds", in two readings. As jobs:
//! a round in which only each site's frontend changed and one job in which only one site's backend
//! changed, both real releases run by `t8k-engine run` with the artifact cache off, so that the backend
//! job really runs `go build` (in the same units as the rounds: the run's wall time). As build steps: the
//! cached round's `build backend`, `install frontend` and `build frontend` alone. It measures and adds up;
//! bench.rs orders the rounds around it and report.rs prints.

use super::super::common::text;
use super::Server;
use super::bench::{Figures, Round, measure, round};

/// A new commit of every site's frontend and none of the backend, then one round: N frontend builds.
/// Asserts that each site serves its new frontend on the backend it had.
pub fn frontends_only(server: &Server, version: &str) -> Round {
    let backends: Vec<Option<String>> = server.sites.iter().map(|s| s.serving().0).collect();
    for s in &server.sites {
        server.push_frontend(&s.name, &format!("{version}-{}", s.name));
    }
    let r = round(server);
    for (s, backend) in server.sites.iter().zip(backends) {
        assert_eq!(
            s.serving(),
            (backend, Some(format!("{version}-{}", s.name))),
            "{} serves its new frontend on the backend it had",
            s.name
        );
    }
    r
}

/// A new backend commit and one job of `site` alone (its frontend unchanged): one backend build. Asserts
/// that the site serves the new backend on the frontend it had.
pub fn backend_only(server: &Server, site: &str, version: &str) -> Round {
    let frontend = server.site(site).serving().1;
    server.push_backend(version);
    let out = server
        .engine(&["trigger", "dedicated", "--site", site])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r = measure(server);
    assert_eq!(
        server.site(site).serving(),
        (Some(version.to_string()), frontend),
        "{site} serves its new backend on the frontend it had"
    );
    r
}

impl Figures {
    /// As jobs: T(backend-only job) + T(frontend-only round), each a `t8k-engine run`'s wall time.
    pub fn jobs_yardstick_s(&self) -> f64 {
        self.backend_only.wall_s + self.frontend_only.wall_s
    }

    /// As jobs, from the history's job records alone (no engine start-up or claiming in it).
    pub fn jobs_yardstick_records_s(&self) -> f64 {
        self.backend_only.jobs_s + self.frontend_only.jobs_s
    }

    /// As build steps: the cached round's Go build and every site's frontend install and build.
    pub fn steps_yardstick_s(&self) -> f64 {
        self.cached.backend_build_s + self.cached.frontend_builds_s
    }
}

/// How far `t` is from `yardstick`, in percent.
pub fn against(t: f64, yardstick: f64) -> f64 {
    (t / yardstick.max(1e-9) - 1.0) * 100.0
}
