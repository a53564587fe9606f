//! Owns the idle daemon's memory: the allocator's settings for a long-running process, and what is handed
//! back when the daemon goes idle (the heap its jobs freed, and its mappings of the engine's own code and
//! read-only data, which jobs faulted in and the idle loop never touches). It changes no behaviour and
//! must never free anything still in use: the next job maps the code it runs again (minor faults).
//!
//! Where an idle daemon's memory goes (README "Idle memory"): private, anonymous memory (the loader's
//! relocated RELRO pages, the heap, thread stacks) is what it really costs the server; file-backed pages
//! (the binary's code, libc) are clean page cache that the kernel may reclaim and that dropping from our
//! page tables does not free, so the figures always give both.

/// Resident memory by kind, in bytes (from /proc/self/smaps_rollup).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    /// Private anonymous pages: heap, allocator arenas, stacks, relocated data. Only swap can take them.
    pub anon: u64,
    /// File-backed pages: the executable's code and read-only data, shared libraries.
    pub file: u64,
}

impl Resident {
    /// The whole resident set (VmRSS).
    pub fn total(&self) -> u64 {
        self.anon + self.file
    }

    /// Reads this process's figures; zeros when /proc is unreadable.
    pub fn now() -> Resident {
        std::fs::read_to_string("/proc/self/smaps_rollup")
            .map(|s| Resident::parse(&s))
            .unwrap_or_default()
    }

    fn parse(rollup: &str) -> Resident {
        let kib = |key: &str| {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        let (rss, anon) = (kib("Rss"), kib("Anonymous"));
        Resident {
            anon,
            file: rss.saturating_sub(anon),
        }
    }
}

impl std::fmt::Display for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "{:.1} MiB ({:.1} anonymous + {:.1} file-backed)",
            mib(self.total()),
            mib(self.anon),
            mib(self.file)
        )
    }
}

/// What an idle trim gave back, for the debug log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    pub before: Resident,
    /// After the allocator gave back what the jobs freed.
    pub heap_trimmed: Resident,
    /// After the executable's read-only pages left the page tables (they stay in the page cache).
    pub after: Resident,
}

/// Caps glibc's allocator at two arenas, unless the operator set `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES`.
///
/// Each thread that allocates may get an arena of its own (up to eight per core), and `malloc_trim` gives
/// back the free chunks inside an arena but leaves a thread arena's free top mapped (glibc shrinks only
/// the main arena's). Measured after 20 to 200 jobs: the job and script threads' arenas held 0.3 to 1.1
/// MiB resident, nearly all of it free (malloc_info), against 0.1 to 0.3 MiB with two arenas. The
/// engine's threads are few and mostly wait on child processes, so two arenas cost it no contention
/// that matters.
pub fn configure_allocator() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var_os("GLIBC_TUNABLES").is_some()
    {
        return;
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes a setting of the allocator; called before the daemon starts threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Gives back freed heap to the system: for a long-running process after a burst of work it will not
/// repeat soon (`serve` after reading a whole journal, which leaves tens of MiB of freed parse buffers).
pub fn heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory of the allocator's own arenas to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Gives back freed heap, then lets go of the resident pages of the executable's read-only mappings.
///
/// The second part frees no memory on the machine: those pages are clean page cache, which stays (and
/// which the kernel could reclaim under pressure anyway); it takes them out of the daemon's resident set,
/// and the next job maps back what it runs (a few thousand minor faults, milliseconds). It is what brings
/// VmRSS under 10 MiB: without it an idle daemon that ran jobs maps 9 to 11 MiB of its code and libc.
pub fn idle() -> Trimmed {
    let before = Resident::now();
    heap();
    let heap_trimmed = Resident::now();
    drop_code_pages();
    Trimmed {
        before,
        heap_trimmed,
        after: Resident::now(),
    }
}

/// One mapping of /proc/self/smaps.
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    path: String,
    flags: String,
}

fn mappings(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(m) = out.last_mut() {
                m.flags = flags.to_string();
            }
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // offset, device, inode, then the path (which may hold spaces).
        let path = fields.skip(3).collect::<Vec<_>>().join(" ");
        out.push(Mapping {
            start,
            end,
            perms: perms.to_string(),
            path,
            flags: String::new(),
        });
    }
    out
}

/// Whether dropping the mapping's pages loses nothing: the executable's own, not writable, and never
/// writable (no `ac`: the RELRO segment was written by the loader before it was made read-only, so its
/// pages are private copies; those must stay).
fn code_or_rodata(m: &Mapping, exe: &str) -> bool {
    m.path == exe
        && m.perms.starts_with('r')
        && m.perms.as_bytes().get(1) == Some(&b'-')
        && !m.flags.split_whitespace().any(|f| f == "ac")
}

fn drop_code_pages() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let exe = exe.display().to_string();
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for m in mappings(&smaps).iter().filter(|m| code_or_rodata(m, &exe)) {
        // SAFETY: the range is one whole mapping of our own executable that nothing ever wrote (checked
        // above), so MADV_DONTNEED only drops page-table entries: the next access maps the same bytes from
        // the page cache again. Threads running code there meanwhile fault it back in.
        unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_never_written_mappings_of_the_executable_are_dropped() {
        let smaps = "\
55d0a0000000-55d0a0400000 r--p 00000000 fe:00 42 /usr/bin/t8k engine
Rss: 100 kB
VmFlags: rd mr mw me
55d0a0400000-55d0a1000000 r-xp 00400000 fe:00 42 /usr/bin/t8k engine
VmFlags: rd ex mr mw me
55d0a1000000-55d0a1100000 r--p 01000000 fe:00 42 /usr/bin/t8k engine
VmFlags: rd mr mw me ac
55d0a1100000-55d0a1103000 rw-p 01100000 fe:00 42 /usr/bin/t8k engine
VmFlags: rd wr mr mw me ac
7f0000000000-7f0000100000 r-xp 00000000 fe:00 7 /usr/lib/libc.so.6
VmFlags: rd ex mr mw me
";
        let ms = mappings(smaps);
        assert_eq!(ms.len(), 5);
        let dropped: Vec<usize> = ms
            .iter()
            .enumerate()
            .filter(|(_, m)| code_or_rodata(m, "/usr/bin/t8k engine"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            dropped,
            [0, 1],
            "headers/rodata and text; never RELRO, data or other files"
        );
    }

    #[test]
    fn resident_memory_splits_into_anonymous_and_file_backed() {
        let r = Resident::parse(
            "55d0a0000000-7ffd00000000 ---p 00000000 00:00 0 [rollup]\nRss:               13364 kB\nPss:               11000 kB\nPss_Anon:           1400 kB\nAnonymous:          1432 kB\n",
        );
        assert_eq!(r.anon, 1432 * 1024, "Anonymous, not Pss_Anon");
        assert_eq!(r.file, (13364 - 1432) * 1024);
        assert_eq!(r.to_string(), "13.1 MiB (1.4 anonymous + 11.7 file-backed)");
        assert_eq!(Resident::parse(""), Resident::default());
    }

    #[test]
    fn a_trim_keeps_the_process_working() {
        let t = idle();
        assert!(t.before.total() > 0 && t.after.total() > 0);
        assert!(t.before.anon > 0 && t.after.file > 0);
        // Code dropped from the page tables runs again.
        assert_eq!(format!("{:?}", vec![1, 2, 3]), "[1, 2, 3]");
        assert!(Resident::now().total() > 0);
    }
}
