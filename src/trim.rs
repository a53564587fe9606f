//! Owns handing memory back to the system when the daemon goes idle: the heap its jobs freed (glibc keeps
//! it in its arenas) and its mappings of the engine's own code and read-only data, which start-up and jobs
//! faulted in and the idle loop never touches. It changes no behaviour: the page cache keeps the code, and
//! the next job maps what it runs again (minor faults).

/// What a trim gave back, for the debug log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Resident bytes before and after.
    pub before: u64,
    pub after: u64,
}

/// Gives back freed heap and the resident pages of the executable's read-only mappings.
pub fn idle() -> Trimmed {
    let before = resident();
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory of the allocator's own arenas to the system.
    unsafe {
        libc::malloc_trim(0);
    }
    drop_code_pages();
    Trimmed {
        before,
        after: resident(),
    }
}

/// Resident set size in bytes (VmRSS), 0 when unreadable.
pub fn resident() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
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
    fn a_trim_keeps_the_process_working() {
        let t = idle();
        assert!(t.before > 0 && t.after > 0);
        // Code dropped from the page tables runs again.
        assert_eq!(format!("{:?}", vec![1, 2, 3]), "[1, 2, 3]");
        assert!(resident() > 0);
    }
}
