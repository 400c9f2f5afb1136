//! Types shared by write_per_type's kernel programs and its userspace (feature `user`).
#![no_std]

/// Bytes of an opened file's path sent to userspace.
pub const PATH_CAP: usize = 256;
/// Files (an open of a descriptor by a process) whose writes are counted apart at once.
pub const MAX_FILES: u32 = 16_384;
/// Descriptors whose open is remembered at once.
pub const MAX_FDS: u32 = 65_536;

/// A file a traced process opened (openat returned `fd`): userspace classifies its path.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpenEvent {
    pub tgid: u32,
    pub fd: u32,
    /// The open's id (bpf_ktime_get_ns() at its return): its writes carry it.
    pub id: u64,
    /// The path as given to openat (PostgreSQL's are relative to its data directory).
    pub path: [u8; PATH_CAP],
}

/// A descriptor of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: u32,
}

/// One open file of a process: its descriptor and the open's id (0: opened before the
/// tool attached, or not by openat: a duplicated or inherited descriptor).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub fd: FdKey,
    pub id: u64,
}

/// Writes and syncs of one open file since attach.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Write syscalls that wrote something (write, pwrite64, writev, pwritev, pwritev2).
    pub writes: u64,
    /// Bytes they wrote (their results: transferred, not requested).
    pub bytes: u64,
    /// fsync and fdatasync calls.
    pub syncs: u64,
    pub sync_ns: u64,
    /// The longest (kept without a lock: two CPUs may race to raise it).
    pub sync_max_ns: u64,
}

/// A syscall between its entry and its exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub fd: u32,
    /// 1: fsync or fdatasync; 0: a write.
    pub sync: u32,
    /// When a sync began (0 for writes: not timed).
    pub start_ns: u64,
}

/// Indexes of the COUNTERS per-CPU array (0 and 1 as `pgbpf_common::pg_probes::Lost` reads
/// them).
pub mod counter {
    /// An open could not be sent (ring buffer full): its file's writes count as "unknown".
    pub const RINGBUF_FULL: u32 = 0;
    /// A write or sync whose file had no room in the file table: not counted.
    pub const FILES_FULL: u32 = 1;
    /// A syscall's entry could not be remembered: not counted.
    pub const PENDING_FULL: u32 = 2;
    /// An open not remembered (descriptor table full): its file's writes count as opened
    /// before attach (classified by the descriptor's path at the report).
    pub const FDS_FULL: u32 = 3;
    pub const COUNT: u32 = 4;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data without implicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::OpenEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FdKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FileKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FileStats {}
}
