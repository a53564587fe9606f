//! Owns stopping what a step leaves: its process group (SIGTERM, a grace, SIGKILL), the processes that
//! escaped the group but carry the run's tag, and, after a crash, what a dead engine's steps left
//! running for a trigger. Every signal goes to a group or process just seen alive as ours.

use std::collections::BTreeSet;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::output::Sink;
use super::procfs::{Tagged, group_members, has_tag, pids, proc_stat, tagged};
use super::reap::{Exit, Leader};
use super::{JOB_TAG_VAR, KILL_WAIT, POLL};

/// Rounds of SIGKILL for escapees that keep forking; each round kills every one found.
const KILL_ROUNDS: usize = 50;

/// Sends `sig` to the group and, while the leader has not exited, to the leader itself. The leader is
/// reaped only after the supervisor is done, so neither id can name another process meanwhile.
pub(super) fn signal_group(pgid: libc::pid_t, sig: libc::c_int, leader_alive: bool) {
    // SAFETY: kill takes plain integers; a negative pid addresses the process group we created.
    unsafe { libc::kill(-pgid, sig) };
    if leader_alive {
        // SAFETY: as above; the leader may have moved itself to another group.
        unsafe { libc::kill(pgid, sig) };
    }
}

/// Stops whatever is left of the leader's group: SIGTERM, up to `grace` to exit, then SIGKILL; returns
/// how many non-leaders were killed. `exit` is filled in when the leader exits meanwhile.
pub(super) fn stop_group(
    leader: &Leader,
    exit: &mut Option<Exit>,
    grace: Duration,
    sink: &mut Sink,
) -> usize {
    let pgid = leader.pid;
    let others = group_members(pgid)
        .into_iter()
        .filter(|&p| p != pgid)
        .count();
    if exit.is_some() && others == 0 {
        return 0;
    }
    signal_group(pgid, libc::SIGTERM, exit.is_none());
    let until = Instant::now() + grace;
    loop {
        if exit.is_none() {
            *exit = leader.exited();
        }
        if exit.is_some() && group_members(pgid).is_empty() {
            return others;
        }
        if Instant::now() >= until {
            break;
        }
        sink.pump(POLL.min(until.saturating_duration_since(Instant::now())));
    }
    signal_group(pgid, libc::SIGKILL, exit.is_none());
    if exit.is_none() {
        *exit = leader.wait_exit(KILL_WAIT);
    }
    others
}

/// Signals each process and, when it leads a group of its own, that group: its children there may have
/// dropped the tag from their environment.
fn signal_each(found: &[Tagged], sig: libc::c_int) {
    for t in found {
        // SAFETY: kill takes plain integers; pid was just seen alive carrying this run's tag.
        unsafe { libc::kill(t.pid, sig) };
        if t.pgrp == t.pid {
            // SAFETY: as above; the group is the one that process leads.
            unsafe { libc::kill(-t.pid, sig) };
        }
    }
}

/// Stops the processes of a run that escaped its process group (a `setsid` daemon, a shell's job-control
/// group): SIGTERM, up to `grace` to exit, then SIGKILL until none is left. Returns how many there were.
/// A process that both leaves the group and scrubs its environment is not found; only a cgroup per run
/// would catch that.
pub(super) fn stop_escapees(
    tag: &[u8],
    leader: libc::pid_t,
    since: u64,
    grace: Duration,
    sink: &mut Sink,
) -> usize {
    let found = tagged(tag, leader, since);
    if found.is_empty() {
        return 0;
    }
    let mut seen: BTreeSet<libc::pid_t> = found.iter().map(|t| t.pid).collect();
    signal_each(&found, libc::SIGTERM);
    let until = Instant::now() + grace;
    loop {
        let left = tagged(tag, leader, since);
        seen.extend(left.iter().map(|t| t.pid));
        if left.is_empty() {
            return seen.len();
        }
        if Instant::now() >= until {
            break;
        }
        sink.pump(POLL.min(until.saturating_duration_since(Instant::now())));
    }
    for _ in 0..KILL_ROUNDS {
        let left = tagged(tag, leader, since);
        if left.is_empty() {
            break;
        }
        seen.extend(left.iter().map(|t| t.pid));
        signal_each(&left, libc::SIGKILL);
        thread::sleep(Duration::from_millis(5));
    }
    seen.len()
}

/// The job tag of a claimed trigger: its path in the work directory, unique while it is claimed.
pub fn job_tag(claimed: &Path) -> String {
    claimed.display().to_string()
}

/// Stops what the processes of a claimed trigger's jobs left running (see [`kill_tagged_groups`]);
/// returns how many process groups were stopped.
pub fn kill_job(claimed: &Path, grace: Duration) -> usize {
    kill_tagged_groups(JOB_TAG_VAR, &job_tag(claimed), grace)
}

/// Kills the process groups whose leader carries `var=value` in its environment and is not a session
/// leader: what a dead engine's steps left running. Daemons a step started (a unit's process, pm2's
/// daemon) detach into their own session and are spared. Returns how many groups were stopped.
pub fn kill_tagged_groups(var: &str, value: &str, grace: Duration) -> usize {
    let tag = format!("{var}={value}");
    let leaders: Vec<libc::pid_t> = pids()
        .into_iter()
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|st| st.pgrp == pid && st.session != pid && st.alive())
        })
        .filter(|&pid| has_tag(pid, tag.as_bytes()))
        .collect();
    for &pgid in &leaders {
        // SAFETY: kill takes plain integers; -pgid addresses a group whose leader we just identified.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
    }
    let until = Instant::now() + grace;
    while Instant::now() < until && leaders.iter().any(|&g| !group_members(g).is_empty()) {
        thread::sleep(POLL);
    }
    for &pgid in &leaders {
        if !group_members(pgid).is_empty() {
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
    leaders.len()
}
