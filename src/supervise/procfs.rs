//! Owns what the supervisor reads from `/proc`: a process's state, group, session and start time, the
//! members of a process group, and the processes whose environment carries a tag. It signals nothing.

/// The fields of `/proc/<pid>/stat` the supervisor needs.
pub(super) struct ProcStat {
    state: char,
    pub pgrp: libc::pid_t,
    pub session: libc::pid_t,
    /// When the process started, in clock ticks after boot.
    pub start: u64,
}

impl ProcStat {
    /// Zombies and dead entries still show up in /proc but hold nothing open and can do nothing.
    pub fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

pub(super) fn proc_stat(pid: libc::pid_t) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses, so fields are counted from the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    // Field 22 of the file; `session` was field 6.
    let start = fields.nth(15)?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        session,
        start,
    })
}

/// Every pid in /proc.
pub(super) fn pids() -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .collect()
}

/// Whether the environment of `pid` holds `tag` (`VAR=value`) as one of its entries.
pub(super) fn has_tag(pid: libc::pid_t, tag: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|entry| entry == tag))
}

/// Live (non-zombie) members of process group `pgid`, from /proc/<pid>/stat field 5.
pub(super) fn group_members(pgid: libc::pid_t) -> Vec<libc::pid_t> {
    // SAFETY: signal 0 only checks whether the group exists; nothing is delivered.
    if unsafe { libc::kill(-pgid, 0) } != 0 {
        return Vec::new();
    }
    pids()
        .into_iter()
        .filter(|&pid| proc_stat(pid).is_some_and(|st| st.pgrp == pgid && st.alive()))
        .collect()
}

/// A process found by its tag: its pid and its process group.
#[derive(Clone, Copy)]
pub(super) struct Tagged {
    pub pid: libc::pid_t,
    pub pgrp: libc::pid_t,
}

/// Live descendants of a run's `leader` started at or after `since` (clock ticks after boot) whose
/// environment holds `tag` (`VAR=value`): the processes of one run, wherever they moved.
pub(super) fn tagged(tag: &[u8], leader: libc::pid_t, since: u64) -> Vec<Tagged> {
    let me = std::process::id() as libc::pid_t;
    // Pids are handed out in increasing order until they wrap: unless they have wrapped since the
    // leader started, its descendants have higher pids, and older processes need not be read at all.
    let wrapped = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse::<libc::pid_t>().ok())
        .is_none_or(|last| last < leader);
    pids()
        .into_iter()
        .filter(|&pid| pid != me && (wrapped || pid > leader))
        .filter_map(|pid| {
            let st = proc_stat(pid).filter(|st| st.alive() && st.start >= since)?;
            has_tag(pid, tag).then_some(Tagged { pid, pgrp: st.pgrp })
        })
        .collect()
}
