//! Owns the TractStack directory layout: resolves every path the engine uses (its own directories under the
//! inbox, the logs, the metrics file) and every path, unit name, pm2 name and port of a target from the
//! root; it never creates or changes anything, and reads nothing but `etc/t8k-ports.conf`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::config::Config;
use crate::trigger::{JobSpec, Kind};

/// The engine-wide directories under a root.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The TractStack root.
    pub root: PathBuf,
    /// The inbox where triggers are dropped.
    pub state: PathBuf,
    /// Engine-owned directory inside the inbox: the lock and the claimed triggers live here.
    pub engine_dir: PathBuf,
    /// Claimed triggers being processed.
    pub work: PathBuf,
    /// Triggers set aside with their reasons.
    pub failed: PathBuf,
    /// The operator's script overrides.
    pub scripts_dir: PathBuf,
    /// The append-only build log.
    pub log_file: PathBuf,
    /// Port assignments.
    pub ports_file: PathBuf,
    /// Per-job logs (`<job-id>.log`), beside the build log.
    pub jobs_dir: PathBuf,
    /// The job history's journal files.
    pub journal_dir: PathBuf,
    /// Release records and the pending notes of switches not yet verified.
    pub releases_dir: PathBuf,
    /// The Prometheus metrics file written after every job.
    pub metrics_file: PathBuf,
}

impl Layout {
    /// Resolves the layout from the settings.
    pub fn new(config: &Config) -> Layout {
        let root = config.root.clone();
        let state = config
            .state_dir
            .clone()
            .unwrap_or_else(|| root.join("state"));
        let engine_dir = state.join(".t8k-engine");
        let log_file = config
            .log_file
            .clone()
            .unwrap_or_else(|| root.join("log").join("build.log"));
        Layout {
            work: engine_dir.join("work"),
            failed: state.join("failed"),
            journal_dir: engine_dir.join("history"),
            releases_dir: engine_dir.join("releases"),
            engine_dir,
            scripts_dir: config
                .scripts_dir
                .clone()
                .unwrap_or_else(|| root.join("scripts")),
            jobs_dir: log_file.parent().unwrap_or(Path::new(".")).join("jobs"),
            log_file,
            metrics_file: config
                .metrics_file
                .clone()
                .unwrap_or_else(|| root.join("log").join("t8k-engine.prom")),
            ports_file: config
                .ports_file
                .clone()
                .unwrap_or_else(|| root.join("etc").join("t8k-ports.conf")),
            state,
            root,
        }
    }

    /// Resolves where a job's target lives and how its services are named.
    pub fn target(&self, spec: &JobSpec) -> Result<Target> {
        let (base, unit, pm2, port_key) = match (&spec.kind, &spec.site) {
            (Kind::Dedicated, Some(site)) => (
                self.root.join("sites").join(site),
                format!("tractstack-go@{site}"),
                format!("astro-{site}"),
                site.as_str(),
            ),
            (Kind::Dedicated, None) => bail!("a dedicated job needs a site"),
            _ => (
                self.root.clone(),
                "tractstack-go".to_string(),
                "astro-main".to_string(),
                "main",
            ),
        };
        let ports = read_ports(&self.ports_file)?;
        let (go_port, astro_port) = match ports.get(port_key) {
            Some(&(go, astro)) => (Some(go), Some(astro)),
            None => (None, None),
        };
        let data_dir = base.join("t8k-go-server");
        Ok(Target {
            backend_src: base.join("src").join("tractstack-go"),
            frontend_src: base.join("src").join("my-tractstack"),
            binary: base.join("bin").join("tractstack-go"),
            whitelist: data_dir
                .join("config")
                .join(&spec.tenant)
                .join("tailwindWhitelist.json"),
            data_dir,
            base,
            unit,
            pm2_name: pm2,
            go_port,
            astro_port,
        })
    }
}

/// Where one job's install lives and what its services are called.
#[derive(Debug, Clone)]
pub struct Target {
    /// `<root>` for main and multi, `<root>/sites/<SITE>` for dedicated.
    pub base: PathBuf,
    /// The Go backend's repository.
    pub backend_src: PathBuf,
    /// The Astro frontend's repository.
    pub frontend_src: PathBuf,
    /// The live backend binary.
    pub binary: PathBuf,
    /// The backend's data directory.
    pub data_dir: PathBuf,
    /// The tenant's Tailwind whitelist file.
    pub whitelist: PathBuf,
    /// The backend's systemd unit.
    pub unit: String,
    /// The frontend's pm2 process.
    pub pm2_name: String,
    /// Backend port from `etc/t8k-ports.conf`, when listed.
    pub go_port: Option<u16>,
    /// Frontend port from `etc/t8k-ports.conf`, when listed.
    pub astro_port: Option<u16>,
}

/// Reads `name=goPort,astroPort` lines; a missing file means no ports are known.
pub fn read_ports(path: &Path) -> Result<BTreeMap<String, (u16, u16)>> {
    // Reading a FIFO would hang the job: only a regular file is read.
    if let Ok(meta) = std::fs::metadata(path)
        && !meta.is_file()
    {
        bail!(
            "{} is not a regular file: write the ports as `name=goPort,astroPort` lines in a file there",
            path.display()
        );
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    parse_ports(&text).with_context(|| format!("{} is not valid", path.display()))
}

fn parse_ports(text: &str) -> Result<BTreeMap<String, (u16, u16)>> {
    let mut ports = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line.split_once('=').and_then(|(name, rest)| {
            let (go, astro) = rest.split_once(',')?;
            Some((
                name.trim(),
                go.trim().parse::<u16>().ok()?,
                astro.trim().parse::<u16>().ok()?,
            ))
        });
        match parsed {
            Some((name, go, astro)) if !name.is_empty() => {
                ports.insert(name.to_string(), (go, astro));
            }
            _ => bail!(
                "line {}: expected `name=goPort,astroPort`, found `{line}`",
                i + 1
            ),
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::parse_line;

    fn layout(root: &Path) -> Layout {
        Layout::new(&Config {
            root: root.to_path_buf(),
            ..Config::default()
        })
    }

    #[test]
    fn dedicated_target_lives_under_sites() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/t8k-ports.conf"),
            "main=10000,20000\n# comment\nacme=10001,20001\n",
        )
        .unwrap();
        let l = layout(dir.path());
        let spec = parse_line("type=dedicated,site=acme,command=build", 1).unwrap();
        let t = l.target(&spec).unwrap();
        assert_eq!(t.binary, dir.path().join("sites/acme/bin/tractstack-go"));
        assert_eq!(t.unit, "tractstack-go@acme");
        assert_eq!(t.pm2_name, "astro-acme");
        assert_eq!((t.go_port, t.astro_port), (Some(10001), Some(20001)));
        assert_eq!(
            t.whitelist,
            dir.path()
                .join("sites/acme/t8k-go-server/config/default/tailwindWhitelist.json")
        );
    }

    #[test]
    fn multi_tenant_whitelist_and_main_ports() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/t8k-ports.conf"), "main=10000,20000\n").unwrap();
        let spec = parse_line("type=multi,tenant=blue,command=build", 1).unwrap();
        let t = layout(dir.path()).target(&spec).unwrap();
        assert_eq!(
            t.whitelist,
            dir.path()
                .join("t8k-go-server/config/blue/tailwindWhitelist.json")
        );
        assert_eq!(
            (t.unit.as_str(), t.pm2_name.as_str()),
            ("tractstack-go", "astro-main")
        );
        assert_eq!(t.go_port, Some(10000));
    }

    #[test]
    fn bad_ports_line_names_its_line() {
        let err = parse_ports("main=10000,20000\nacme=99999,1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(parse_ports("x=1\n").is_err());
        assert!(parse_ports("=1,2\n").is_err());
    }
}
