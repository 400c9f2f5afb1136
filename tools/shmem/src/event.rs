//! One kernel record turned into what a user reads: who (pid, backend type, statement), what
//! call on which segment, how big, and how it ended.

use pgbpf_common::{
    output::c_str,
    postgres::{backend_type, parallel_leader},
};
use shmem_ebpf::{ShmEvent, kind};

/// A decoded event.
#[derive(Clone, Debug)]
pub struct Event {
    /// CLOCK_MONOTONIC at the call's start.
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    /// The pid inside the target's pid namespace (a container's own numbering).
    pub ns_pid: Option<u32>,
    pub backend: String,
    /// A parallel worker's leader.
    pub leader: Option<u32>,
    pub call: &'static str,
    pub segment: String,
    pub size: u64,
    /// Negative errno, or the syscall's result (fd, address, shmid).
    pub ret: i64,
    /// Syscalls have a result; function events (dsm_create, ...) do not.
    pub is_syscall: bool,
    pub duration_ns: u64,
    /// (size, free) of the tmpfs when the call began.
    pub space: Option<(u64, u64)>,
    pub query: String,
    pub detail: String,
    /// The caller's user stack, innermost first (`--stack`).
    pub stack: Option<pgbpf_common::stacks::Stack>,
}

impl Event {
    pub fn failed(&self) -> bool {
        self.is_syscall && self.ret < 0
    }

    /// "ok", "fd 5", "0x7f…", "ENOSPC".
    pub fn result(&self) -> String {
        if !self.is_syscall {
            return "-".into();
        }
        if self.ret < 0 {
            return errno_name(-self.ret);
        }
        match self.call {
            "open" | "memfd_create" => format!("fd {}", self.ret),
            "mmap" | "shmat" => format!("{:#x}", self.ret),
            "shmget" => format!("id {}", self.ret),
            _ => "ok".into(),
        }
    }

    pub fn errno(&self) -> Option<i64> {
        (self.failed()).then_some(-self.ret)
    }
}

/// "ENOSPC" for 28; the number for an unknown code.
pub fn errno_name(code: i64) -> String {
    let e = nix::errno::Errno::from_raw(code as i32);
    if e == nix::errno::Errno::UnknownErrno {
        format!("errno {code}")
    } else {
        format!("{e:?}")
    }
}

fn call_name(k: u8) -> &'static str {
    match k {
        kind::OPEN => "open",
        kind::FTRUNCATE => "ftruncate",
        kind::FALLOCATE => "fallocate",
        kind::MMAP => "mmap",
        kind::UNLINK => "unlink",
        kind::MEMFD_CREATE => "memfd_create",
        kind::SHMGET => "shmget",
        kind::SHMAT => "shmat",
        kind::SHMDT => "shmdt",
        kind::SHMCTL => "shmctl",
        kind::DSM_CREATE => "dsm_create",
        kind::PG_SHMEM_CREATE => "PGSharedMemoryCreate",
        _ => "unknown",
    }
}

/// A /dev/shm path as PostgreSQL names the segment ("/PostgreSQL.123").
fn segment_name(path: &str) -> String {
    match path.strip_prefix("/dev/shm") {
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        _ => path.to_string(),
    }
}

const IPC_CMDS: [(u64, &str); 6] = [
    (0, "IPC_RMID"),
    (1, "IPC_SET"),
    (2, "IPC_STAT"),
    (3, "IPC_INFO"),
    (11, "SHM_LOCK"),
    (12, "SHM_UNLOCK"),
];

pub fn decode(e: &ShmEvent) -> Event {
    let name = c_str(&e.name);
    let title = c_str(&e.title);
    let backend = backend_type(&title)
        .map(str::to_string)
        .unwrap_or_else(|| title.split(' ').next().unwrap_or("").to_string());
    let (segment, detail) = match e.kind {
        kind::OPEN => (
            segment_name(&name),
            if e.arg & libc::O_CREAT as u64 != 0 {
                "create".to_string()
            } else {
                "attach".to_string()
            },
        ),
        kind::UNLINK => (segment_name(&name), String::new()),
        kind::MEMFD_CREATE => (format!("memfd:{name}"), String::new()),
        kind::FTRUNCATE | kind::FALLOCATE | kind::MMAP => {
            let seg = if e.has_name != 0 {
                segment_name(&name)
            } else if e.kind == kind::MMAP && e.fd < 0 {
                "anonymous".to_string()
            } else {
                format!("fd {}", e.fd)
            };
            let detail = if e.kind == kind::FALLOCATE && (e.arg != 0 || e.arg2 != 0) {
                format!("offset {} mode {:#x}", e.arg, e.arg2)
            } else {
                String::new()
            };
            (seg, detail)
        }
        kind::SHMGET => (format!("SysV key {:#010x}", e.arg as u32), String::new()),
        kind::SHMAT => (format!("SysV id {}", e.arg), String::new()),
        kind::SHMDT => (format!("SysV at {:#x}", e.arg), String::new()),
        kind::SHMCTL => (
            format!("SysV id {}", e.arg),
            IPC_CMDS
                .iter()
                .find(|(c, _)| *c == e.arg2 & 0xff)
                .map_or_else(|| format!("cmd {}", e.arg2), |(_, n)| n.to_string()),
        ),
        kind::DSM_CREATE => ("dynamic shared memory".to_string(), String::new()),
        kind::PG_SHMEM_CREATE => ("main segment".to_string(), String::new()),
        _ => (String::new(), String::new()),
    };
    let n = (e.query_len as usize).min(e.query.len());
    Event {
        ts_ns: e.ts_ns,
        pid: e.tgid,
        tid: e.tid,
        ns_pid: (e.ns_pid != 0).then_some(e.ns_pid),
        leader: parallel_leader(&title),
        backend,
        call: call_name(e.kind),
        segment,
        size: e.size,
        ret: e.ret,
        is_syscall: !matches!(e.kind, kind::DSM_CREATE | kind::PG_SHMEM_CREATE),
        duration_ns: e.duration_ns,
        space: (e.has_space != 0).then_some((e.space_total, e.space_free)),
        query: c_str(&e.query[..n]),
        detail,
        stack: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(k: u8) -> ShmEvent {
        // SAFETY: plain data; all zeroes is a valid event.
        let mut e: ShmEvent = unsafe { std::mem::zeroed() };
        e.kind = k;
        e.tgid = 42;
        e
    }

    fn put(dst: &mut [u8], s: &str) {
        dst[..s.len()].copy_from_slice(s.as_bytes());
    }

    #[test]
    fn a_failed_fallocate_reads_like_the_server_log() {
        let mut e = raw(kind::FALLOCATE);
        put(&mut e.name, "/dev/shm/PostgreSQL.699663942");
        e.has_name = 1;
        put(&mut e.title, "postgres: parallel worker for PID 4242");
        let q = "select count(*) from t";
        put(&mut e.query, q);
        e.query_len = q.len() as u32;
        e.size = 50438144;
        e.ret = -28;
        e.has_space = 1;
        e.space_total = 64 << 20;
        e.space_free = 10 << 20;
        let d = decode(&e);
        assert_eq!(d.segment, "/PostgreSQL.699663942");
        assert_eq!(d.backend, "parallel worker");
        assert_eq!(d.leader, Some(4242));
        assert!(d.failed());
        assert_eq!(d.result(), "ENOSPC");
        assert_eq!(d.query, q);
        assert_eq!(d.space, Some((64 << 20, 10 << 20)));
    }

    #[test]
    fn results_and_odd_input() {
        let mut e = raw(kind::MMAP);
        e.fd = -1;
        e.ret = 0x7f00_0000_0000;
        let d = decode(&e);
        assert_eq!(
            (d.segment.as_str(), d.result().as_str()),
            ("anonymous", "0x7f0000000000")
        );
        let mut e = raw(kind::OPEN);
        e.ret = -17;
        assert_eq!(decode(&e).result(), "EEXIST");
        assert_eq!(errno_name(99999), "errno 99999");
        // Garbage: no NULs, length beyond the buffer.
        let mut e = raw(kind::SHMCTL);
        e.name = [0xff; shmem_ebpf::NAME_CAP];
        e.title = [b'x'; shmem_ebpf::TITLE_CAP];
        e.query_len = u32::MAX;
        e.arg2 = 0;
        let d = decode(&e);
        assert_eq!(d.detail, "IPC_RMID");
        assert_eq!(decode(&raw(200)).call, "unknown");
        assert_eq!(decode(&raw(kind::DSM_CREATE)).result(), "-");
    }
}
