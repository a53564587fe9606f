//! Owns reading what scripts pass to host functions: option maps checked against the keys a function
//! accepts, argument arrays of strings, and `run`'s options with the presets the other host functions
//! use. It runs nothing.

use std::path::PathBuf;
use std::time::Duration;

use rhai::{Array, Dynamic, Map};

use super::Res;

/// The longest wait a script may ask for (about 31 years): anything longer is a mistake, and a
/// `Duration` or `Instant` built from it could overflow.
pub(super) const MAX_SECS: f64 = 1e9;

/// A number as a message shows it: 1e300 in full is three hundred digits.
pub(super) fn number(x: f64) -> String {
    if x.abs() < 1e12 {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// Validates an option map against the keys a function accepts.
pub(super) struct Opts<'a> {
    f: &'static str,
    map: &'a Map,
}

impl<'a> Opts<'a> {
    pub fn new(f: &'static str, map: &'a Map, allowed: &[&str]) -> Res<Opts<'a>> {
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "{f}(): unknown option `{k}` (expected one of: {})",
                allowed.join(", ")
            )
            .into());
        }
        Ok(Opts { f, map })
    }

    /// The value of `key`, when given.
    pub fn get(&self, key: &str) -> Option<&'a Dynamic> {
        self.map.get(key)
    }

    pub fn wrong<T>(&self, key: &str, want: &str, got: &Dynamic) -> Res<T> {
        Err(format!(
            "{}(): option `{key}` must be {want}, got {}",
            self.f,
            got.type_name()
        )
        .into())
    }

    pub fn bool(&self, key: &str) -> Res<bool> {
        match self.map.get(key) {
            None => Ok(false),
            Some(v) => v.as_bool().or_else(|_| self.wrong(key, "true or false", v)),
        }
    }

    pub fn secs(&self, key: &str) -> Res<Option<Duration>> {
        let Some(v) = self.map.get(key) else {
            return Ok(None);
        };
        let secs = v
            .as_int()
            .map(|i| i as f64)
            .or_else(|_| v.as_float())
            .or_else(|_| self.wrong(key, "a number of seconds", v))?;
        if !(secs > 0.0 && secs <= MAX_SECS) {
            return Err(format!(
                "{}(): option `{key}` must be a positive number of seconds up to {MAX_SECS}, got {}",
                self.f,
                number(secs)
            )
            .into());
        }
        Ok(Some(Duration::from_secs_f64(secs)))
    }

    pub fn string(&self, key: &str) -> Res<Option<String>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) if v.is_string() => Ok(Some(v.to_string())),
            Some(v) => self.wrong(key, "a string", v),
        }
    }

    /// An array of strings under `key` (empty when not given), `want` saying what it holds.
    pub fn strings(&self, key: &str, want: &str) -> Res<Vec<String>> {
        match self.map.get(key) {
            None => Ok(Vec::new()),
            Some(v) if v.is_array() => strings(self.f, v.clone().into_array().unwrap_or_default()),
            Some(v) => self.wrong(key, want, v),
        }
    }

    /// A map of strings under `key` (empty when not given): environment variables, headers.
    pub fn pairs(&self, key: &str) -> Res<Vec<(String, String)>> {
        let Some(v) = self.map.get(key) else {
            return Ok(Vec::new());
        };
        let Some(map) = v.read_lock::<Map>() else {
            return self.wrong(key, "a map of strings", v);
        };
        Ok(map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }
}

/// The arguments of `f` as strings, refusing anything else.
pub(super) fn strings(f: &str, args: Array) -> Res<Vec<String>> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if a.is_string() {
                Ok(a.to_string())
            } else {
                Err(format!(
                    "{f}(): argument {} must be a string, got {} (write it as a string)",
                    i + 1,
                    a.type_name()
                )
                .into())
            }
        })
        .collect()
}

/// What `run()` was asked to do.
pub(super) struct RunOptions {
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    /// No log lines: the command and its output go to the debug level only.
    pub quiet: bool,
    /// A failure is returned in the result instead of thrown.
    pub allow_fail: bool,
    /// `Some(true)` low, `Some(false)` normal, `None` the configured default.
    pub low_priority: Option<bool>,
    /// Leave running what detaches into its own session: only the service helpers, whose job is to start daemons.
    pub keep_detached: bool,
}

impl RunOptions {
    /// A script's `run()` options.
    pub fn parse(map: &Map) -> Res<RunOptions> {
        let o = Opts::new(
            "run",
            map,
            &["cwd", "env", "timeout", "quiet", "allow_fail", "priority"],
        )?;
        let low_priority = match o.string("priority")?.as_deref() {
            None => None,
            Some("low") => Some(true),
            Some("normal") => Some(false),
            Some(other) => {
                return Err(format!(
                    "run(): option `priority` must be \"low\" or \"normal\", not \"{other}\""
                )
                .into());
            }
        };
        Ok(RunOptions {
            cwd: o.string("cwd")?.map(PathBuf::from),
            env: environment(&o)?,
            timeout: o.secs("timeout")?,
            quiet: o.bool("quiet")?,
            allow_fail: o.bool("allow_fail")?,
            low_priority,
            keep_detached: false,
        })
    }

    /// A quick look whose answer the caller judges (`systemctl is-active`, `journalctl`): no log lines,
    /// a failure returned rather than thrown, at normal priority so that it does not wait behind a build.
    pub fn probe() -> RunOptions {
        RunOptions {
            cwd: None,
            env: Vec::new(),
            timeout: None,
            quiet: true,
            allow_fail: true,
            low_priority: Some(false),
            keep_detached: false,
        }
    }

    /// A quick look that must succeed (`git rev-parse`, `pm2 jlist`): a probe whose failure throws.
    pub fn query() -> RunOptions {
        RunOptions {
            allow_fail: false,
            ..RunOptions::probe()
        }
    }

    /// An action on a service (`systemctl restart`, `pm2 reload`): logged, a failure throws, at normal
    /// priority, and the daemons it starts are left running (see [`RunOptions::keeping_daemons`]).
    pub fn service() -> RunOptions {
        RunOptions {
            quiet: false,
            ..RunOptions::query()
        }
        .keeping_daemons()
    }

    /// Leaves running what the command detaches into a session of its own: a service manager's daemon
    /// (pm2's, or the unit's processes under the tests' fake systemctl) must outlive the command.
    pub fn keeping_daemons(self) -> RunOptions {
        RunOptions {
            keep_detached: true,
            ..self
        }
    }

    /// Runs in `dir`.
    pub fn in_dir(self, dir: &str) -> RunOptions {
        RunOptions {
            cwd: Some(dir.into()),
            ..self
        }
    }
}

/// The `env` option of `run()`: names a program can receive, values without NUL bytes.
fn environment(o: &Opts) -> Res<Vec<(String, String)>> {
    let Some(v) = o.get("env") else {
        return Ok(Vec::new());
    };
    let Some(m) = v.read_lock::<Map>() else {
        return o.wrong("env", "a map of strings", v);
    };
    m.iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!(
                    "run(): environment variable name `{}` is not valid",
                    k.escape_debug()
                )
                .into());
            }
            let v = v.to_string();
            if v.contains('\0') {
                return Err(format!(
                    "run(): the value of environment variable `{k}` contains a NUL byte, which no program can receive"
                )
                .into());
            }
            Ok((k.to_string(), v))
        })
        .collect()
}
