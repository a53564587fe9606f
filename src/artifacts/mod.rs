//! Owns the content-addressed cache of build artifacts (backend binaries) in `state/.t8k-engine/artifacts/`:
//! an entry per key (the digest of everything that decides the output, as the caller names it), placed into
//! a build's `.new` path by a hard link (a copy across filesystems) and verified by its SHA-256, a size cap
//! kept by evicting the least recently used entries that no release still uses, and hit and miss counts
//! that survive restarts. It knows nothing of Go or of scripts: the caller gives the key's parts.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest;

use crate::fs::OwnDir;

/// `.t8k-engine/artifacts` below the inbox: both are the engine's own.
const OWN: usize = 2;
const STATS: &str = "stats.json";
const LOCK: &str = ".lock";
/// Changes whenever the way keys are made changes, so that old entries are never taken for new ones.
const KEY_VERSION: &str = "t8k-engine artifact key 1";

/// The cache at one directory with its size cap.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
}

/// One entry's record, beside its file as `<key>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The key: SHA-256 of the parts.
    pub key: String,
    /// What the key was made of, for people reading the cache.
    pub parts: Value,
    /// SHA-256 of the artifact's content.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Where it was stored from.
    pub source: PathBuf,
    /// When it was stored (RFC 3339).
    pub created: String,
    /// When it was last stored or placed (RFC 3339), for least-recently-used eviction.
    pub last_used: String,
    /// How many builds it saved.
    pub hits: u64,
    /// Where it was placed (and stored from): a release there that is still this file keeps it.
    pub placements: Vec<Placement>,
}

/// A place an entry's content went to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The live path of the release (the `.new` path without `.new`).
    pub live: PathBuf,
    /// The file placed there (device, inode); it keeps its identity when it is switched in and kept.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
}

/// The counts that give the hit rate, kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Lookups that placed an entry.
    pub hits: u64,
    /// Lookups that found nothing usable (corrupt entries included).
    pub misses: u64,
    /// Artifacts stored.
    pub stores: u64,
    /// Entries evicted to keep the cap.
    pub evictions: u64,
    /// Entries whose content no longer matched their digest (removed when found).
    pub corrupt: u64,
}

impl Stats {
    /// Hits over lookups, `None` before the first lookup.
    pub fn hit_rate(&self) -> Option<f64> {
        let lookups = self.hits + self.misses;
        (lookups > 0).then(|| self.hits as f64 / lookups as f64)
    }
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// The entry was placed at the destination and verified.
    Hit {
        /// Its record.
        entry: Entry,
        /// Placed by a hard link (false: copied).
        linked: bool,
    },
    /// No entry for the key.
    Miss {
        /// The key looked up.
        key: String,
    },
    /// An entry was there but its file was missing or its content did not match its digest: removed.
    Corrupt {
        /// The key looked up.
        key: String,
        /// What was wrong, for the log.
        why: String,
    },
}

/// What a store did.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The new entry's record.
    pub entry: Entry,
    /// Stored by a hard link (false: copied).
    pub linked: bool,
    /// Keys evicted to keep the cap.
    pub evicted: Vec<String>,
    /// Why the cache is still over its cap, when it is.
    pub over_cap: Option<String>,
}

/// The cache as `status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// The cache directory.
    pub dir: PathBuf,
    /// Entries.
    pub entries: usize,
    /// Their total size.
    pub bytes: u64,
    /// Entries a live or kept release is (so that evicting them would free nothing).
    pub in_use: usize,
    /// Their size.
    pub in_use_bytes: u64,
    /// The cap.
    pub max_bytes: u64,
    /// The counts.
    pub stats: Stats,
    /// Hits over lookups.
    pub hit_rate: Option<f64>,
}

/// The key of a set of parts: SHA-256 over the parts as canonical JSON (object keys sorted at every level).
pub fn key_of(parts: &Value) -> String {
    let mut h = sha2::Sha256::new();
    h.update(KEY_VERSION.as_bytes());
    h.update(b"\n");
    h.update(canonical(parts).to_string().as_bytes());
    format!("{:x}", h.finalize())
}

fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn sha256_of(file: &mut File) -> io::Result<String> {
    let mut h = sha2::Sha256::new();
    io::copy(file, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// Errors that mean "this filesystem cannot hard-link here": copy instead.
fn no_link(e: &rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    [Errno::XDEV, Errno::PERM, Errno::MLINK, Errno::OPNOTSUPP].contains(e)
}

impl Cache {
    /// The cache in `dir` (the engine's `artifacts` directory), kept under `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> Cache {
        Cache { dir, max_bytes }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens the directory and takes the cache's lock, held until the guard drops.
    fn open(&self) -> Result<(OwnDir, File)> {
        let dir = OwnDir::open(&self.dir, OWN)?;
        let fd = rustix::fs::openat(
            dir.fd(),
            LOCK,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(io::Error::from)
        .with_context(|| format!("cannot open {}", dir.join(LOCK).display()))?;
        let lock = File::from(fd);
        lock.lock()
            .with_context(|| format!("cannot lock {}", dir.join(LOCK).display()))?;
        Ok((dir, lock))
    }

    fn read_entry(dir: &OwnDir, key: &str) -> Result<Option<Entry>> {
        let name = format!("{key}.json");
        match dir.read(&name, 1 << 20)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{} is not an entry record", dir.join(&name).display())),
        }
    }

    fn write_entry(dir: &OwnDir, entry: &Entry) -> Result<()> {
        let text = serde_json::to_string_pretty(entry)?;
        dir.write(&format!("{}.json", entry.key), text.as_bytes(), true)
    }

    fn read_stats(dir: &OwnDir) -> Stats {
        dir.read(STATS, 1 << 16)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn count(dir: &OwnDir, f: impl FnOnce(&mut Stats)) {
        let mut stats = Self::read_stats(dir);
        f(&mut stats);
        // The counts only inform: a failure to write them never fails a build.
        if let Ok(text) = serde_json::to_string_pretty(&stats)
            && let Err(e) = dir.write(STATS, text.as_bytes(), false)
        {
            tracing::warn!("artifact cache: cannot update its counts: {e:#}");
        }
    }

    /// Removes an entry's file and record (either may be missing).
    fn remove(dir: &OwnDir, key: &str) {
        let _ = dir.remove(key);
        let _ = dir.remove(format!("{key}.json"));
    }

    /// Looks `parts` up and, on a hit, places the entry at `dest` (replacing what is there) by a hard link
    /// or a copy, then checks that `dest` holds content with the entry's digest. A corrupt entry is removed
    /// and reported, and counts as a miss.
    pub fn fetch(&self, parts: &Value, dest: &Path) -> Result<Fetched> {
        let key = key_of(parts);
        let (dir, _lock) = self.open()?;
        let entry = match Self::read_entry(&dir, &key) {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                Self::count(&dir, |s| s.misses += 1);
                return Ok(Fetched::Miss { key });
            }
            Err(e) => return Ok(self.corrupt(&dir, key, format!("{e:#}"))),
        };
        let mut file = match dir.open_read(&key) {
            Ok(f) => f,
            Err(e) => {
                let why = format!(
                    "its file {} cannot be opened: {e}",
                    dir.join(&key).display()
                );
                return Ok(self.corrupt(&dir, key, why));
            }
        };
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() != entry.size {
            let why = format!(
                "{} is {} bytes, its record says {}",
                dir.join(&key).display(),
                meta.len(),
                entry.size
            );
            return Ok(self.corrupt(&dir, key, why));
        }
        remove_file_at(dest)?;
        let linked = match rustix::fs::linkat(dir.fd(), key.as_str(), CWD, dest, AtFlags::empty()) {
            Ok(()) => true,
            Err(e) if no_link(&e) => {
                copy_to(&mut file, dest)?;
                false
            }
            Err(e) => {
                return Err(io::Error::from(e)).with_context(|| {
                    format!(
                        "cannot link {} to {}",
                        dir.join(&key).display(),
                        dest.display()
                    )
                });
            }
        };
        let placed = File::open(dest)
            .and_then(|mut f| Ok((sha256_of(&mut f)?, f.metadata()?)))
            .with_context(|| format!("cannot read back {}", dest.display()))?;
        if placed.0 != entry.digest {
            let _ = std::fs::remove_file(dest);
            let why = format!(
                "its content has SHA-256 {}, its record says {}",
                placed.0, entry.digest
            );
            return Ok(self.corrupt(&dir, key, why));
        }
        let mut entry = entry;
        entry.hits += 1;
        entry.last_used = now();
        note_placement(&mut entry, dest, &placed.1);
        Self::write_entry(&dir, &entry)?;
        Self::count(&dir, |s| s.hits += 1);
        Ok(Fetched::Hit { entry, linked })
    }

    fn corrupt(&self, dir: &OwnDir, key: String, why: String) -> Fetched {
        Self::remove(dir, &key);
        Self::count(dir, |s| {
            s.corrupt += 1;
            s.misses += 1;
        });
        Fetched::Corrupt { key, why }
    }

    /// Stores the file at `src` (a finished build) under `parts`, replacing an entry of the same key, then
    /// evicts least recently used entries no release uses until the cache fits its cap.
    pub fn store(&self, parts: &Value, src: &Path) -> Result<Stored> {
        let key = key_of(parts);
        let (dir, _lock) = self.open()?;
        let mut file = File::open(src).with_context(|| format!("cannot read {}", src.display()))?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            bail!(
                "{} is not a regular file: only a built file can be stored",
                src.display()
            );
        }
        let digest =
            sha256_of(&mut file).with_context(|| format!("cannot read {}", src.display()))?;
        let tmp = format!(".{key}.{}.tmp", std::process::id());
        let _ = dir.remove(&tmp);
        let linked = match rustix::fs::linkat(CWD, src, dir.fd(), tmp.as_str(), AtFlags::empty()) {
            Ok(()) => true,
            Err(e) if no_link(&e) => {
                copy_into(&dir, &mut file, &tmp)?;
                false
            }
            Err(e) => {
                return Err(io::Error::from(e)).with_context(|| {
                    format!(
                        "cannot link {} into {}",
                        src.display(),
                        dir.path().display()
                    )
                });
            }
        };
        // Read-only, so that a `cp` onto a release that is this file cannot change the cache's copy.
        let stored = (|| -> io::Result<()> {
            let f = dir.open_read(&tmp)?;
            f.set_permissions(std::fs::Permissions::from_mode(0o555))?;
            f.sync_all()?;
            rustix::fs::renameat(dir.fd(), tmp.as_str(), dir.fd(), key.as_str())?;
            Ok(())
        })();
        if let Err(e) = stored {
            let _ = dir.remove(&tmp);
            return Err(e).with_context(|| {
                format!("cannot store {} in {}", src.display(), dir.path().display())
            });
        }
        let stamp = now();
        let mut entry = Entry {
            key: key.clone(),
            parts: canonical(parts),
            digest,
            size: meta.len(),
            source: src.to_path_buf(),
            created: stamp.clone(),
            last_used: stamp,
            hits: 0,
            placements: Vec::new(),
        };
        note_placement(&mut entry, src, &meta);
        Self::write_entry(&dir, &entry)?;
        dir.sync()?;
        Self::count(&dir, |s| s.stores += 1);
        let (evicted, over_cap) = self.evict(&dir)?;
        Ok(Stored {
            entry,
            linked,
            evicted,
            over_cap,
        })
    }

    /// Every entry with its file's metadata; files without a record (and temporary files, which only a
    /// dead engine can have left: the lock is held) are removed.
    fn scan(dir: &OwnDir) -> Result<Vec<(Entry, std::fs::Metadata)>> {
        let mut found = Vec::new();
        let names: HashSet<String> = dir
            .entries()?
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .collect();
        for name in &names {
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = dir.remove(name);
                continue;
            }
            let Some(key) = name.strip_suffix(".json") else {
                if is_key(name) && !names.contains(&format!("{name}.json")) {
                    let _ = dir.remove(name);
                }
                continue;
            };
            if !is_key(key) {
                continue;
            }
            let meta = dir
                .open_read(key)
                .and_then(|f| f.metadata())
                .ok()
                .filter(|m| m.is_file());
            match (Self::read_entry(dir, key).ok().flatten(), meta) {
                (Some(entry), Some(meta)) => found.push((entry, meta)),
                _ => Self::remove(dir, key),
            }
        }
        Ok(found)
    }

    /// Evicts least recently used entries until the cache fits its cap, never one a release still uses;
    /// returns the keys evicted and, when the cache is still over its cap, why.
    fn evict(&self, dir: &OwnDir) -> Result<(Vec<String>, Option<String>)> {
        let mut entries = Self::scan(dir)?;
        entries.sort_by_key(|(e, _)| e.last_used.parse::<jiff::Timestamp>().ok());
        let mut total: u64 = entries.iter().map(|(e, _)| e.size).sum();
        let mut evicted = Vec::new();
        let mut kept_in_use = 0;
        for (entry, meta) in &entries {
            if total <= self.max_bytes {
                break;
            }
            if in_use(entry, meta) {
                kept_in_use += 1;
                continue;
            }
            Self::remove(dir, &entry.key);
            total -= entry.size;
            evicted.push(entry.key.clone());
        }
        if !evicted.is_empty() {
            let n = evicted.len() as u64;
            Self::count(dir, |s| s.evictions += n);
            dir.sync()?;
        }
        let over = (total > self.max_bytes).then(|| {
            format!(
                "the artifact cache holds {} over its cap of {}: its {kept_in_use} remaining entries are live or kept releases (evicting them would free nothing)",
                crate::resources::human(total - self.max_bytes),
                crate::resources::human(self.max_bytes)
            )
        });
        Ok((evicted, over))
    }

    /// The cache's entries, size, use and counts, read without the lock and without changing anything.
    pub fn summary(&self) -> Result<Summary> {
        let mut summary = Summary {
            dir: self.dir.clone(),
            max_bytes: self.max_bytes,
            ..Summary::default()
        };
        let Some(dir) = OwnDir::open_to_read(&self.dir, OWN)? else {
            return Ok(summary);
        };
        for name in dir.entries()? {
            let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Some(entry) = Self::read_entry(&dir, key).ok().flatten() else {
                continue;
            };
            let Ok(meta) = dir.open_read(key).and_then(|f| f.metadata()) else {
                continue;
            };
            summary.entries += 1;
            summary.bytes += entry.size;
            if in_use(&entry, &meta) {
                summary.in_use += 1;
                summary.in_use_bytes += entry.size;
            }
        }
        summary.stats = Self::read_stats(&dir);
        summary.hit_rate = summary.stats.hit_rate();
        Ok(summary)
    }
}

fn is_key(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Records that the entry's content is now at `path` (a `.new` path, or a live one).
fn note_placement(entry: &mut Entry, path: &Path, meta: &std::fs::Metadata) {
    let live = match path.to_str().and_then(|p| p.strip_suffix(".new")) {
        Some(live) => PathBuf::from(live),
        None => path.to_path_buf(),
    };
    entry.placements.retain(|p| p.live != live);
    entry.placements.push(Placement {
        live,
        dev: meta.dev(),
        ino: meta.ino(),
    });
}

/// Whether a release still is this entry's content: another name links its file (a site's live, kept or
/// failed binary), or a copy placed from it is still at a release path (`LIVE`, `LIVE.prev`, `LIVE.prev.2`,
/// `LIVE.failed`, `LIVE.new`), where it keeps its identity through switches and rollbacks.
fn in_use(entry: &Entry, meta: &std::fs::Metadata) -> bool {
    if meta.nlink() > 1 {
        return true;
    }
    entry.placements.iter().any(|p| {
        let (Some(parent), Some(name)) = (p.live.parent(), p.live.file_name()) else {
            return false;
        };
        let name = name.to_string_lossy();
        let Ok(listing) = std::fs::read_dir(parent) else {
            return false;
        };
        listing.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            (n == name || n.starts_with(&format!("{name}.")))
                && e.metadata()
                    .is_ok_and(|m| (m.dev(), m.ino()) == (p.dev, p.ino))
        })
    })
}

/// Removes a regular file or link at `path` so that a new one can take the name; a directory there is an error.
fn remove_file_at(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => bail!(
            "{} is a directory: the artifact goes to a file path (a build's .new path)",
            path.display()
        ),
        Ok(_) => {
            std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot look at {}", path.display())),
    }
}

/// Copies an open file to `dest` through a temporary file beside it, renamed into place.
fn copy_to(from: &mut File, dest: &Path) -> Result<()> {
    let tmp = {
        let mut name = dest.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.tmp", std::process::id()));
        dest.with_file_name(name)
    };
    let mut copy = || -> io::Result<()> {
        use std::io::Seek;
        from.seek(io::SeekFrom::Start(0))?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        io::copy(from, &mut out)?;
        out.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        out.sync_all()?;
        std::fs::rename(&tmp, dest)
    };
    copy().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::from(e).context(format!("cannot copy the artifact to {}", dest.display()))
    })
}

/// Copies an open file into the cache directory as `name`.
fn copy_into(dir: &OwnDir, from: &mut File, name: &str) -> Result<()> {
    use std::io::Seek;
    let mut copy = || -> io::Result<()> {
        from.seek(io::SeekFrom::Start(0))?;
        let fd = rustix::fs::openat(
            dir.fd(),
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        let mut out = File::from(fd);
        io::copy(from, &mut out)?;
        Ok(())
    };
    copy().with_context(|| format!("cannot copy into {}", dir.join(name).display()))
}

#[cfg(test)]
mod tests;
