//! Types shared by shmem's kernel programs and its userspace (feature `user`).
#![no_std]

/// Bytes of a segment name (a /dev/shm path or a memfd name) kept per event.
pub const NAME_CAP: usize = 64;
/// Bytes of the process title (PostgreSQL's ps display: backend type) kept per event.
pub const TITLE_CAP: usize = 80;
/// Bytes of statement text kept per event.
pub const QUERY_CAP: usize = 256;

/// What an event is: the syscall (or PostgreSQL function) it reports.
pub mod kind {
    pub const OPEN: u8 = 1;
    pub const FTRUNCATE: u8 = 2;
    pub const FALLOCATE: u8 = 3;
    pub const MMAP: u8 = 4;
    pub const UNLINK: u8 = 5;
    pub const MEMFD_CREATE: u8 = 6;
    pub const SHMGET: u8 = 7;
    pub const SHMAT: u8 = 8;
    pub const SHMDT: u8 = 9;
    pub const SHMCTL: u8 = 10;
    /// uprobe on PostgreSQL's dsm_create(size, flags).
    pub const DSM_CREATE: u8 = 11;
    /// uprobe on PostgreSQL's PGSharedMemoryCreate(size, ...): the main segment.
    pub const PG_SHMEM_CREATE: u8 = 12;
}

/// One shared-memory event, sent when the syscall returns (or when the function is entered).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ShmEvent {
    /// bpf_ktime_get_ns() at the syscall's entry.
    pub ts_ns: u64,
    pub duration_ns: u64,
    /// The syscall's return value (negative errno on failure); 0 for function events.
    pub ret: i64,
    /// Bytes asked for: ftruncate length, fallocate len, mmap len, shmget size, dsm_create
    /// size, PGSharedMemoryCreate size.
    pub size: u64,
    /// open/memfd flags, fallocate offset, mmap flags, shmget key, shmat/shmctl shmid,
    /// shmdt address, dsm_create flags.
    pub arg: u64,
    /// fallocate mode, mmap prot, shmget flags, shmctl cmd, shmat flags.
    pub arg2: u64,
    /// Size and free bytes of the tmpfs the file lives on, read when the call began
    /// (ftruncate/fallocate of a /dev/shm file; valid when `has_space` is 1).
    pub space_total: u64,
    pub space_free: u64,
    /// The caller's cgroup (v2 id) when the call began: where it ran even once it is gone.
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    /// The tgid in the target's pid namespace (a container's own numbering), 0 unknown.
    pub ns_pid: u32,
    pub fd: i32,
    pub kind: u8,
    pub has_space: u8,
    /// 1 when `name` is known (a /dev/shm path, memfd name); else see `fd`.
    pub has_name: u8,
    pub _pad: u8,
    pub query_len: u32,
    /// The caller's user stack id in the stack map (`--stack`), or
    /// `pgbpf_common_ebpf::stacks::NONE` / `LOST`.
    pub user_stack: i32,
    pub _pad2: u32,
    pub name: [u8; NAME_CAP],
    pub title: [u8; TITLE_CAP],
    pub query: [u8; QUERY_CAP],
}

/// Key of the open /dev/shm and memfd files.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Indexes of the COUNTERS per-CPU array.
pub mod counter {
    /// An event could not be sent (ring buffer full).
    pub const RINGBUF_FULL: u32 = 0;
    /// A syscall in flight could not be remembered (PENDING full): its event is lost.
    pub const PENDING_FULL: u32 = 1;
    /// An open /dev/shm file could not be remembered: its later calls show no name.
    pub const FDS_FULL: u32 = 2;
    pub const COUNT: u32 = 3;
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data, every bit pattern valid.
unsafe impl aya::Pod for ShmEvent {}
#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data, every bit pattern valid.
unsafe impl aya::Pod for FdKey {}
