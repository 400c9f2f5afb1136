//! Types shared by page_reclaim's kernel programs and its userspace (feature `user`).
#![no_std]

/// The kinds of reclaim whose begin/end pairs are timed.
pub const KIND_MEMCG: usize = 0;
pub const KIND_DIRECT: usize = 1;
pub const KINDS: usize = 2;

/// Per-process, per-cgroup key of [`ReclaimStats`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReclaimKey {
    pub tgid: u32,
    pub _pad: u32,
    /// cgroup v2 id of the reclaiming task at the end of the episode.
    pub cgroup_id: u64,
}

/// What one process reclaimed, per kind ([`KIND_MEMCG`], [`KIND_DIRECT`]). Per-CPU values:
/// userspace sums the counters and takes the largest `max_stall_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReclaimStats {
    pub pages: [u64; KINDS],
    pub episodes: [u64; KINDS],
    pub stall_ns: [u64; KINDS],
    pub max_stall_ns: u64,
    pub comm: [u8; 16],
}

/// Start of an episode, keyed by `tid << 1 | kind`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReclaimStart {
    pub ts_ns: u64,
}

/// Indexes of the `COUNTERS` per-CPU array.
pub mod counter {
    /// An end without its begin: the episode started before the tool attached.
    pub const END_WITHOUT_BEGIN: u32 = 0;
    /// A process could not get a row in the stats map (map full): its episode is lost.
    pub const STATS_MAP_FULL: u32 = 1;
    /// A begin could not be recorded (start map full): that episode is lost.
    pub const STARTS_MAP_FULL: u32 = 2;
    /// kswapd woke up (system-wide, for context).
    pub const KSWAPD_WAKES: u32 = 3;
    /// An allocation by a target task woke kswapd.
    pub const KSWAPD_WAKEUPS_BY_TARGET: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// Slots per kind in the `STALL_HIST` array (log2 of microseconds).
pub const HIST_SLOTS: usize = 64;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, #[repr(C)], every bit pattern is valid.
    unsafe impl aya::Pod for super::ReclaimKey {}
    unsafe impl aya::Pod for super::ReclaimStats {}
    unsafe impl aya::Pod for super::ReclaimStart {}
}
