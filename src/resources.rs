//! Owns measuring what a build takes from the machine: free space of the filesystem under a path, memory
//! available (to the machine and to the engine's cgroup), what a tree of files takes on disk, and the
//! pre-build check that compares them with what a build is about to write. It only reads: it never frees,
//! moves or changes anything, and it decides no thresholds (the scripts pass them).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Free and total space of one filesystem, as the engine's user may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    /// The filesystem's device (`st_dev`).
    pub dev: u64,
    /// Where it is mounted (from /proc/self/mountinfo), or the path asked about when that is unknown.
    pub mount: PathBuf,
    /// Its type (`ext4`, `tmpfs`...), empty when unknown.
    pub fstype: String,
    /// Bytes an unprivileged user may still write (`f_bavail`: root's reserve excluded).
    pub avail: u64,
    /// Size of the filesystem in bytes.
    pub total: u64,
}

/// The space of the filesystem holding `path`, or of its nearest existing ancestor (a `dist.new` that does
/// not exist yet will be written where its parent is).
pub fn space(path: &Path) -> std::io::Result<Space> {
    let existing = path
        .ancestors()
        .find(|p| std::fs::symlink_metadata(p).is_ok())
        .unwrap_or(Path::new("/"));
    let st = rustix::fs::statvfs(existing).map_err(std::io::Error::from)?;
    let dev = std::fs::metadata(existing)?.dev();
    let (mount, fstype) =
        mount_of(dev, existing).unwrap_or_else(|| (existing.into(), String::new()));
    Ok(Space {
        dev,
        mount,
        fstype,
        avail: st.f_bavail.saturating_mul(st.f_frsize),
        total: st.f_blocks.saturating_mul(st.f_frsize),
    })
}

/// The mount point and type of the filesystem `dev` that holds `path`: the longest mount point of that
/// device which is a prefix of the path (a bind mount shows the same device several times).
fn mount_of(dev: u64, path: &Path) -> Option<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            (fields.get(2) == Some(&want.as_str())).then(|| {
                // Mount points escape spaces and the like as octal (`\040`).
                let mount = PathBuf::from(unescape(fields.get(4).copied().unwrap_or("/")));
                (
                    mount,
                    fields.get(sep + 1).copied().unwrap_or("").to_string(),
                )
            })
        })
        .filter(|(mount, _)| path.starts_with(mount))
        .max_by_key(|(mount, _)| mount.as_os_str().len())
}

fn unescape(field: &str) -> String {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Memory a new process may use without pushing the machine (or the engine's cgroup) into reclaim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// Bytes available: the smaller of `MemAvailable` and the cgroup's headroom.
    pub available: u64,
    /// Where that figure comes from, for messages.
    pub from: String,
}

/// `MemAvailable` from /proc/meminfo, lowered to the headroom of the engine's cgroup (`memory.max` minus
/// `memory.current`) when the unit it runs in has a limit; `None` when neither can be read.
pub fn memory() -> Option<Memory> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let machine = meminfo.as_deref().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    let machine = machine.map(|available| Memory {
        available,
        from: "MemAvailable in /proc/meminfo".into(),
    });
    match (machine, cgroup_headroom()) {
        (Some(m), Some(c)) if c.available < m.available => Some(c),
        (Some(m), _) => Some(m),
        (None, c) => c,
    }
}

/// How much more the engine's cgroup (cgroup v2) may use before its `memory.max`, when it has one.
fn cgroup_headroom() -> Option<Memory> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?; // "max" (no limit) does not parse
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(Memory {
        available: max.saturating_sub(current),
        from: format!("memory.max of the engine's cgroup {}", dir.display()),
    })
}

/// What a tree of files takes on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of the blocks allocated to the files (not their apparent sizes).
    pub bytes: u64,
    /// Files and directories counted.
    pub entries: u64,
}

/// What `path` (a file or a directory tree) takes on disk, links not followed and other filesystems not
/// entered. Files already in `seen` (by device and inode) are not counted again, so that hard links (a
/// pnpm store and the `node_modules` linked from it, a binary and its cache entry) count once in a report.
pub fn usage(path: &Path, seen: &mut HashSet<(u64, u64)>) -> Usage {
    let mut total = Usage::default();
    let walk = walkdir::WalkDir::new(path)
        .follow_links(false)
        .same_file_system(true);
    for entry in walk.into_iter().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total.bytes += meta.blocks() * 512;
        total.entries += 1;
    }
    total
}

/// Bytes in the units a person reads: `812 MiB`, `1.4 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One place a build writes to, with what it is expected to write there.
#[derive(Debug, Clone)]
pub struct Need {
    /// What is written, for messages (`backend binary`).
    pub what: String,
    /// Where (the path itself need not exist yet).
    pub path: PathBuf,
    /// Bytes expected.
    pub bytes: u64,
}

/// What a build needs before it may start.
#[derive(Debug, Clone)]
pub struct Demand {
    /// Every place it writes to.
    pub disk: Vec<Need>,
    /// Bytes to leave free on every filesystem it writes to, after its own writes.
    pub keep_free: u64,
    /// The name of the setting `keep_free` comes from, for messages.
    pub keep_free_setting: String,
    /// Bytes of memory that must be available.
    pub memory: u64,
    /// The name of the setting `memory` comes from, for messages.
    pub memory_setting: String,
}

/// One filesystem a build writes to, with what the build needs there.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The filesystem.
    pub space: Space,
    /// Bytes the build is expected to write there.
    pub needed: u64,
    /// The places on it.
    pub places: Vec<Need>,
}

/// What the check found: every filesystem with its needs, and the memory available.
#[derive(Debug, Clone)]
pub struct Report {
    /// Each filesystem the build writes to.
    pub filesystems: Vec<Checked>,
    /// Memory available, when it could be read.
    pub memory: Option<Memory>,
    /// One line per shortage; empty when the build may start.
    pub short: Vec<String>,
}

/// Groups a build's places by filesystem and compares each filesystem's free space with what the build
/// writes there plus what must stay free, and the memory available with the memory required.
pub fn check(demand: &Demand) -> std::io::Result<Report> {
    let mut filesystems: Vec<Checked> = Vec::new();
    for need in &demand.disk {
        let space = space(&need.path)?;
        match filesystems.iter_mut().find(|c| c.space.dev == space.dev) {
            Some(c) => {
                c.needed += need.bytes;
                c.places.push(need.clone());
            }
            None => filesystems.push(Checked {
                space,
                needed: need.bytes,
                places: vec![need.clone()],
            }),
        }
    }
    let mut short = Vec::new();
    for fs in &filesystems {
        let required = fs.needed + demand.keep_free;
        if fs.space.avail < required {
            short.push(disk_shortage(fs, demand, required));
        }
    }
    let memory = memory();
    if let Some(m) = &memory
        && m.available < demand.memory
    {
        short.push(format!(
            "only {} of memory is available ({}); a build needs {} ({}): {} short",
            human(m.available),
            m.from,
            human(demand.memory),
            demand.memory_setting,
            human(demand.memory - m.available)
        ));
    }
    Ok(Report {
        filesystems,
        memory,
        short,
    })
}

fn disk_shortage(fs: &Checked, demand: &Demand, required: u64) -> String {
    let places: Vec<String> = fs
        .places
        .iter()
        .map(|p| format!("{} {} ({})", p.what, human(p.bytes), p.path.display()))
        .collect();
    let kind = if fs.space.fstype.is_empty() {
        String::new()
    } else {
        format!(" ({})", fs.space.fstype)
    };
    format!(
        "the filesystem at {}{kind} has {} free; this build writes about {} there ({}) and must leave {} free ({}): {} short",
        fs.space.mount.display(),
        human(fs.space.avail),
        human(fs.needed),
        places.join(", "),
        human(demand.keep_free),
        demand.keep_free_setting,
        human(required - fs.space.avail)
    )
}

/// A cache directory and how it was found, for `status`, `check` and the pre-build check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Located {
    /// The directory (it may not exist yet).
    pub path: PathBuf,
    /// Which setting gave it.
    pub from: String,
}

/// The caches builds share across sites and releases, where `go` and `pnpm` find them in an environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BuildCaches {
    /// Go's build cache (`go env GOCACHE`); `None` when it is off or cannot be placed.
    pub go_build: Option<Located>,
    /// Go's module cache (`go env GOMODCACHE`).
    pub go_modules: Option<Located>,
    /// pnpm's content-addressed store (`pnpm store path` without its version directory).
    pub pnpm_store: Option<Located>,
}

/// Finds the build caches as `go` (the environment, then the `go env -w` file) and `pnpm` (its
/// `npm_config_store_dir`, the user's `.npmrc`, `PNPM_HOME`, the XDG data directory) do, for processes
/// whose environment `var` reads. Nothing is created.
pub fn build_caches(var: &dyn Fn(&str) -> Option<String>) -> BuildCaches {
    let env = CacheEnv { var };
    BuildCaches {
        go_build: env.go_build(),
        go_modules: env.go_modules(),
        pnpm_store: env.pnpm_store(),
    }
}

/// One environment read the way `go` and `pnpm` read theirs.
struct CacheEnv<'a> {
    var: &'a dyn Fn(&str) -> Option<String>,
}

impl CacheEnv<'_> {
    /// A variable that is set and not empty (both tools treat an empty one as unset).
    fn set(&self, name: &str) -> Option<String> {
        (self.var)(name).filter(|v| !v.is_empty())
    }

    fn under_home(&self, rel: &str) -> Option<PathBuf> {
        self.set("HOME").map(|h| Path::new(&h).join(rel))
    }

    fn env_var(&self, name: &str) -> Option<Located> {
        self.set(name).map(|v| Located {
            path: PathBuf::from(v),
            from: format!("{name} in the environment"),
        })
    }

    /// A value `go env -w` wrote to `$GOENV` (default `$XDG_CONFIG_HOME/go/env`).
    fn go_env_file_value(&self, name: &str) -> Option<Located> {
        let file = self.set("GOENV").map(PathBuf::from).or_else(|| {
            let config = self
                .set("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| self.under_home(".config"))?;
            Some(config.join("go/env"))
        })?;
        let text = std::fs::read_to_string(&file).ok()?;
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))?;
        Some(Located {
            path: PathBuf::from(value.trim()),
            from: format!("{name} in {} (go env -w)", file.display()),
        })
    }

    fn go_build(&self) -> Option<Located> {
        self.env_var("GOCACHE")
            .or_else(|| self.go_env_file_value("GOCACHE"))
            .or_else(|| {
                let (dir, from) = match self.set("XDG_CACHE_HOME") {
                    Some(x) => (PathBuf::from(x), "$XDG_CACHE_HOME/go-build"),
                    None => (
                        self.under_home(".cache")?,
                        "$HOME/.cache/go-build (Go's default)",
                    ),
                };
                Some(Located {
                    path: dir.join("go-build"),
                    from: from.into(),
                })
            })
            .filter(|l| l.path != Path::new("off") && l.path.is_absolute())
    }

    fn go_modules(&self) -> Option<Located> {
        self.env_var("GOMODCACHE")
            .or_else(|| self.go_env_file_value("GOMODCACHE"))
            .or_else(|| {
                let gopath = self
                    .set("GOPATH")
                    .and_then(|p| p.split(':').next().map(PathBuf::from));
                let (path, from) = match gopath {
                    Some(p) => (p.join("pkg/mod"), "$GOPATH/pkg/mod"),
                    None => (
                        self.under_home("go/pkg/mod")?,
                        "$HOME/go/pkg/mod (Go's default)",
                    ),
                };
                Some(Located {
                    path,
                    from: from.into(),
                })
            })
            .filter(|l| l.path.is_absolute())
    }

    fn pnpm_store(&self) -> Option<Located> {
        [
            "npm_config_store_dir",
            "NPM_CONFIG_STORE_DIR",
            "pnpm_config_store_dir",
        ]
        .iter()
        .find_map(|name| self.env_var(name))
        .or_else(|| self.store_dir_in_npmrc())
        .or_else(|| {
            self.set("PNPM_HOME").map(|h| Located {
                path: Path::new(&h).join("store"),
                from: "$PNPM_HOME/store".into(),
            })
        })
        .or_else(|| {
            let (path, from) = match self.set("XDG_DATA_HOME") {
                Some(x) => (
                    Path::new(&x).join("pnpm/store"),
                    "$XDG_DATA_HOME/pnpm/store",
                ),
                None => (
                    self.under_home(".local/share/pnpm/store")?,
                    "$HOME/.local/share/pnpm/store (pnpm's default)",
                ),
            };
            Some(Located {
                path,
                from: from.into(),
            })
        })
        .filter(|l| l.path.is_absolute())
    }

    fn store_dir_in_npmrc(&self) -> Option<Located> {
        let file = self
            .set("npm_config_userconfig")
            .map(PathBuf::from)
            .or_else(|| self.under_home(".npmrc"))?;
        let text = std::fs::read_to_string(&file).ok()?;
        let value = text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "store-dir").then(|| v.trim().to_string())
        })?;
        Some(Located {
            path: PathBuf::from(value),
            from: format!("store-dir in {}", file.display()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_caches_are_found_as_go_and_pnpm_find_them() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap().to_string();
        let env = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            build_caches(&move |name: &str| {
                vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
        };
        let defaults = env(&[("HOME", &home)]);
        assert_eq!(
            defaults.go_build.unwrap().path,
            dir.path().join(".cache/go-build")
        );
        assert_eq!(
            defaults.go_modules.unwrap().path,
            dir.path().join("go/pkg/mod")
        );
        assert_eq!(
            defaults.pnpm_store.unwrap().path,
            dir.path().join(".local/share/pnpm/store")
        );
        // No HOME and nothing set: Go cannot place its cache (it fails the build), and says so here.
        assert_eq!(env(&[]), BuildCaches::default());
        let off = env(&[("HOME", &home), ("GOCACHE", "off")]);
        assert!(off.go_build.is_none());
        // `go env -w` and the user's .npmrc are read as go and pnpm read them.
        std::fs::create_dir_all(dir.path().join(".config/go")).unwrap();
        std::fs::write(dir.path().join(".config/go/env"), "GOCACHE=/srv/go-build\n").unwrap();
        std::fs::write(dir.path().join(".npmrc"), "store-dir = /srv/pnpm-store\n").unwrap();
        let written = env(&[("HOME", &home)]);
        assert_eq!(written.go_build.unwrap().path, Path::new("/srv/go-build"));
        assert_eq!(
            written.pnpm_store.unwrap().path,
            Path::new("/srv/pnpm-store")
        );
        let explicit = env(&[
            ("HOME", &home),
            ("GOCACHE", "/c/go"),
            ("npm_config_store_dir", "/c/pnpm"),
        ]);
        assert_eq!(
            explicit.go_build.as_ref().unwrap().from,
            "GOCACHE in the environment"
        );
        assert_eq!(explicit.pnpm_store.unwrap().path, Path::new("/c/pnpm"));
    }

    #[test]
    fn sizes_read_as_a_person_reads_them() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(812 << 20), "812 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }

    #[test]
    fn mount_points_with_spaces_are_unescaped() {
        assert_eq!(unescape("/mnt/my\\040disk"), "/mnt/my disk");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/odd\\9"), "/odd\\9");
    }

    #[test]
    fn a_missing_path_is_measured_where_it_would_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let here = space(dir.path()).unwrap();
        let later = space(&dir.path().join("dist.new/client")).unwrap();
        assert_eq!(here.dev, later.dev);
        assert!(here.total > 0 && here.avail <= here.total);
        assert!(dir.path().starts_with(&here.mount), "{here:?}");
    }

    #[test]
    fn usage_counts_hard_links_once_and_follows_no_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("usr")).unwrap();
        let mut seen = HashSet::new();
        let first = usage(dir.path(), &mut seen);
        assert!(
            first.bytes >= 64 * 1024 && first.bytes < 200 * 1024,
            "{first:?}"
        );
        // The directory, the file once, the link itself.
        assert_eq!(first.entries, 3);
        assert_eq!(usage(&dir.path().join("b"), &mut seen), Usage::default());
    }

    #[test]
    fn a_demand_larger_than_the_disk_names_what_is_short_and_by_how_much() {
        let dir = tempfile::tempdir().unwrap();
        let avail = space(dir.path()).unwrap().avail;
        let demand = Demand {
            disk: vec![
                Need {
                    what: "backend binary".into(),
                    path: dir.path().join("bin/tractstack-go.new"),
                    bytes: 10 << 20,
                },
                Need {
                    what: "frontend build".into(),
                    path: dir.path().join("dist.new"),
                    bytes: avail,
                },
            ],
            keep_free: 1 << 30,
            keep_free_setting: "MIN_FREE_DISK in lib/common.rhai".into(),
            memory: 0,
            memory_setting: "MIN_FREE_MEMORY".into(),
        };
        let report = check(&demand).unwrap();
        assert_eq!(report.filesystems.len(), 1);
        assert_eq!(report.short.len(), 1, "{:?}", report.short);
        let line = &report.short[0];
        assert!(line.contains("backend binary 10.0 MiB"), "{line}");
        assert!(line.contains("MIN_FREE_DISK in lib/common.rhai"), "{line}");
        assert!(line.ends_with("short"), "{line}");
        let fits = Demand {
            disk: vec![demand.disk[0].clone()],
            keep_free: 0,
            ..demand.clone()
        };
        assert!(check(&fits).unwrap().short.is_empty());
        let no_memory = Demand {
            memory: u64::MAX / 2,
            ..fits
        };
        let short = check(&no_memory).unwrap().short;
        assert!(
            short.len() == 1 && short[0].contains("of memory is available"),
            "{short:?}"
        );
    }
}
