//! Owns the TractStack directory layout: resolves every path the engine uses (its own directories under the
//! inbox, the logs, the metrics file) and every path, unit name, pm2 name and port of a target from the
//! root; it never creates or changes anything, and reads only `etc/t8k-ports.conf` and the backend's
//! `.env` (where the backend finds its data).

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
    /// Who asked `serve` for what (`.t8k-engine/requests`): the web process's only writable place
    /// besides the inbox, so it never writes the engine's own journal.
    pub requests_dir: PathBuf,
    /// Release records and the pending notes of switches not yet verified.
    pub releases_dir: PathBuf,
    /// The artifact cache: backend binaries by the key of what decided them.
    pub artifacts_dir: PathBuf,
    /// The Prometheus metrics file written after every job.
    pub metrics_file: PathBuf,
    /// The status document rewritten on every change of the engine's state.
    pub status_file: PathBuf,
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
            requests_dir: engine_dir.join("requests"),
            releases_dir: engine_dir.join("releases"),
            artifacts_dir: engine_dir.join("artifacts"),
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
            status_file: config
                .status_file
                .clone()
                .unwrap_or_else(|| root.join("log").join("status.json")),
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
        let backend_src = base.join("src").join("tractstack-go");
        let (data_dir, data_dir_from) = data_dir(&self.root, &backend_src);
        Ok(Target {
            backend_src,
            frontend_src: base.join("src").join("my-tractstack"),
            binary: base.join("bin").join("tractstack-go"),
            whitelist: data_dir
                .join("config")
                .join(&spec.tenant)
                .join("tailwindWhitelist.json"),
            data_dir,
            data_dir_from,
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
    /// The backend's data directory: where it reads `config/<tenant>/` (see [`data_dir`]).
    pub data_dir: PathBuf,
    /// Where `data_dir` came from, for logs.
    pub data_dir_from: String,
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

/// Where tractstack-go reads its data (pkg/config `BackendPath`): `GO_BACKEND_PATH` from its environment,
/// which its `.env` fills when the unit does not set it, else `$HOME/t8k-go-server`. The installer writes
/// the same `GO_BACKEND_PATH` into the unit and into `src/tractstack-go/.env` (`<base>/t8k-go-server/`),
/// so the `.env` is read here; without one, `$HOME` is the t8k user's home, the root, for dedicated
/// sites too. Returns the directory and where it came from.
pub fn data_dir(root: &Path, backend_src: &Path) -> (PathBuf, String) {
    let env_file = backend_src.join(".env");
    match read_dotenv(&env_file).get("GO_BACKEND_PATH") {
        Some(v) if !v.is_empty() => {
            let path = Path::new(v.trim_end_matches('/'));
            // A relative path is relative to the unit's working directory, the backend's sources.
            let dir = if path.as_os_str().is_empty() {
                PathBuf::from("/")
            } else {
                backend_src.join(path)
            };
            (dir, format!("GO_BACKEND_PATH in {}", env_file.display()))
        }
        _ => (
            root.join("t8k-go-server"),
            format!(
                "$HOME/t8k-go-server, the backend's default (no GO_BACKEND_PATH in {})",
                env_file.display()
            ),
        ),
    }
}

/// Reads a `.env` file as tractstack-go's pkg/config does: `KEY=VALUE` lines, blank lines and `#` comments
/// skipped, key and value trimmed, then quotes (`"` and `'`) trimmed from the value; the first `=` splits.
/// A missing or unreadable file reads as empty.
pub fn read_dotenv(path: &Path) -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    let mut vars = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
            // The backend keeps the first value a key gets (it never overrides a set variable).
            vars.entry(key.trim().to_string())
                .or_insert_with(|| value.to_string());
        }
    }
    vars
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

/// The layout of a root with the default configuration, for unit tests here and elsewhere.
#[cfg(test)]
pub(crate) fn of_root(root: &Path) -> Layout {
    Layout::new(&Config {
        root: root.to_path_buf(),
        ..Config::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::parse_line;

    fn layout(root: &Path) -> Layout {
        of_root(root)
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
        // Without GO_BACKEND_PATH in its .env the site's backend reads $HOME/t8k-go-server.
        assert_eq!(
            t.whitelist,
            dir.path()
                .join("t8k-go-server/config/default/tailwindWhitelist.json")
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
    fn the_data_dir_is_where_the_backend_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        let spec = parse_line("type=dedicated,site=acme,command=build", 1).unwrap();
        let src = dir.path().join("sites/acme/src/tractstack-go");
        std::fs::create_dir_all(&src).unwrap();
        // No GO_BACKEND_PATH: the backend falls back to $HOME/t8k-go-server, main's directory.
        let t = l.target(&spec).unwrap();
        assert_eq!(t.data_dir, dir.path().join("t8k-go-server"));
        assert!(
            t.data_dir_from.contains("no GO_BACKEND_PATH"),
            "{}",
            t.data_dir_from
        );
        // The installer's .env, with its trailing slash and quotes the backend trims.
        let data = dir.path().join("sites/acme/t8k-go-server");
        std::fs::write(
            src.join(".env"),
            format!(
                "# comment\nGO_BACKEND_PATH=\"{}/\"\nPORT=10001\nGO_BACKEND_PATH=/elsewhere\n",
                data.display()
            ),
        )
        .unwrap();
        let t = l.target(&spec).unwrap();
        assert_eq!(t.data_dir, data);
        assert_eq!(
            t.whitelist,
            data.join("config/default/tailwindWhitelist.json")
        );
        assert_eq!(read_dotenv(&src.join(".env"))["PORT"], "10001");
        std::fs::write(src.join(".env"), "GO_BACKEND_PATH=data\n").unwrap();
        assert_eq!(l.target(&spec).unwrap().data_dir, src.join("data"));
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
