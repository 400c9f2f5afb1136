//! What the tools read about processes from /proc, through the procfs crate: the pids there
//! are, a process's parent, thread group, name, title, state, capabilities, cgroup, memory
//! maps and socket descriptors. A process that vanished or cannot be read is `None` (or
//! empty): processes come and go while a tool looks.

use procfs::{
    FromRead as _,
    process::{FDTarget, Process, Stat, Status},
};

fn process(pid: u32) -> Option<Process> {
    Process::new(i32::try_from(pid).ok()?).ok()
}

// /proc/PID/stat and status are opened by path and parsed by procfs: `Process::new` would
// open the process's directory first, a second open and close per process, which showed in
// start-up time when every process of the machine is looked at (descendants).
fn stat(pid: u32) -> Option<Stat> {
    Stat::from_file(format!("/proc/{pid}/stat")).ok()
}

fn status(pid: u32) -> Option<Status> {
    Status::from_file(format!("/proc/{pid}/status")).ok()
}

/// Every process now, by pid. The names of /proc's numeric entries are all it takes;
/// procfs' `all_processes` would open every process's directory to list it.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The parent of `pid`.
pub fn parent_of(pid: u32) -> Option<u32> {
    u32::try_from(stat(pid)?.ppid).ok()
}

/// The thread group (process) of `pid`, itself for a process.
pub fn tgid_of(pid: u32) -> Option<u32> {
    u32::try_from(status(pid)?.tgid).ok()
}

/// `pid` as its own PID namespace numbers it (a containerized process's pid inside its
/// container: what it writes in its files), itself outside any.
pub fn pid_in_own_namespace(pid: u32) -> Option<u32> {
    let st = status(pid)?;
    match st.nspid.as_deref().and_then(<[i32]>::last) {
        Some(&inner) => u32::try_from(inner).ok(),
        None => Some(pid),
    }
}

/// What a pid is that no tool can trace: a kernel thread (no user memory, no binary) or a
/// zombie (exited, waiting for its parent to reap it). None for a live user process (or
/// one that cannot be read: the caller says that on its own).
pub fn untraceable(pid: u32) -> Option<&'static str> {
    /// include/linux/sched.h: the task is a kernel thread.
    const PF_KTHREAD: u32 = 0x0020_0000;
    let s = stat(pid)?;
    if s.flags & PF_KTHREAD != 0 {
        Some("a kernel thread")
    } else if s.state == 'Z' && status(pid).is_none_or(|st| st.threads <= 1) {
        // A process whose main thread exited while others run shows Z too (ps: Zl).
        Some("a zombie (it has exited; its parent has not reaped it)")
    } else {
        None
    }
}

/// The kernel's name of the task (`comm`, 15 bytes at most).
pub fn comm_of(pid: u32) -> Option<String> {
    Some(stat(pid)?.comm)
}

/// The process title: its command line as `ps` shows it (PostgreSQL rewrites it to
/// "postgres: checkpointer" and the like); empty when unreadable. Read by hand: procfs'
/// `cmdline` fails on a title that is not UTF-8 (a database or host name can be anything),
/// where the title is still worth showing with the odd bytes replaced.
pub fn title_of(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// How long ago `pid` started (to the kernel's clock tick, 10 ms on most machines).
pub fn age_of(pid: u32) -> Option<std::time::Duration> {
    let ticks = procfs::ticks_per_second() as f64;
    let started = stat(pid)?.starttime as f64 / ticks;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(std::time::Duration::from_secs_f64(
        (uptime - started).max(0.0),
    ))
}

/// True while `pid` runs; a process that exited but was not reaped yet (a zombie) is gone.
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
}

/// Every process below `roots` in the process tree (not the roots themselves).
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let parent_of: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut out: Vec<u32> = vec![];
    let mut frontier: Vec<u32> = roots.to_vec();
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &parent_of {
            if parent == p && !out.contains(&child) && !roots.contains(&child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

/// This process's effective capabilities (CapEff), 0 when unreadable.
pub fn effective_capabilities() -> u64 {
    Status::from_file("/proc/self/status").map_or(0, |s| s.capeff)
}

/// The cgroup v2 path of `pid` (its "0::/path" line).
pub fn cgroup_v2_of(pid: u32) -> Option<String> {
    process(pid)?
        .cgroups()
        .ok()?
        .into_iter()
        .find(|c| c.hierarchy == 0 && c.controllers.is_empty())
        .map(|c| c.pathname)
}

/// The socket descriptors of `pid`: (fd, socket inode). Unreadable processes have none.
pub fn socket_fds(pid: u32) -> Vec<(u32, u64)> {
    let Some(fds) = process(pid).and_then(|p| p.fd().ok()) else {
        return vec![];
    };
    fds.filter_map(|fd| {
        let fd = fd.ok()?;
        match fd.target {
            FDTarget::Socket(inode) => Some((u32::try_from(fd.fd).ok()?, inode)),
            _ => None,
        }
    })
    .collect()
}

/// The descriptors of `pid` that name a path (files, not sockets or pipes): (fd, path as
/// /proc/PID/fd links it). Unreadable processes have none.
pub fn file_fds(pid: u32) -> Vec<(u32, std::path::PathBuf)> {
    let Some(fds) = process(pid).and_then(|p| p.fd().ok()) else {
        return vec![];
    };
    fds.filter_map(|fd| {
        let fd = fd.ok()?;
        match fd.target {
            FDTarget::Path(path) => Some((u32::try_from(fd.fd).ok()?, path)),
            _ => None,
        }
    })
    .collect()
}

/// The TCP ports `pid` listens on: its listening sockets, found in /proc/PID/net/tcp and
/// tcp6 (its network namespace's) by their inodes. Unreadable processes have none.
pub fn listening_tcp_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<u64> =
        socket_fds(pid).into_iter().map(|(_, i)| i).collect();
    let Some(p) = process(pid).filter(|_| !inodes.is_empty()) else {
        return vec![];
    };
    let mut ports: Vec<u16> = [p.tcp(), p.tcp6()]
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.state == procfs::net::TcpState::Listen && inodes.contains(&e.inode))
        .map(|e| e.local_address.port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The memory maps of `pid` (/proc/PID/maps), or with `smaps` the same with each mapping's
/// statistics (Rss, Pss, ...).
pub fn memory_maps(pid: u32, smaps: bool) -> Option<procfs::process::MemoryMaps> {
    let p = process(pid)?;
    if smaps { p.smaps() } else { p.maps() }.ok()
}

/// The highest pid + 1 the kernel hands out.
pub fn pid_max() -> Option<u32> {
    u32::try_from(procfs::sys::kernel::pid_max().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_its_child() {
        let me = std::process::id();
        assert_eq!(tgid_of(me), Some(me));
        assert!(alive(me) && all_pids().contains(&me));
        assert!(comm_of(me).is_some_and(|c| !c.is_empty()));
        assert!(!title_of(me).is_empty());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert_eq!(parent_of(child.id()), Some(me));
        assert!(descendants(&[me]).contains(&child.id()));
        let _ = child.kill();
        let _ = child.wait();
        assert!(!alive(child.id()));
        assert_eq!(tgid_of(u32::MAX), None);
        assert!(socket_fds(u32::MAX).is_empty());
    }

    #[test]
    fn a_socket_descriptor_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd as _;
        let fd = listener.as_raw_fd() as u32;
        assert!(
            socket_fds(std::process::id())
                .iter()
                .any(|(f, inode)| *f == fd && *inode > 0)
        );
    }

    #[test]
    fn listening_ports_are_those_of_the_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // A connected socket of ours is no listening port.
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let ports = listening_tcp_ports(std::process::id());
        assert!(ports.contains(&port), "{ports:?}");
        assert!(!ports.contains(&client.local_addr().unwrap().port()));
        assert!(listening_tcp_ports(u32::MAX).is_empty());
    }
}
