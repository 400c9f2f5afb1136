//! Types shared by lwlocks' kernel programs and its userspace (feature `user`).
#![no_std]

/// Bytes of statement text per event.
pub const QUERY_CAP: usize = 256;
/// Bytes of a tranche name (PostgreSQL's are at most 21: "SerializableFinishedList").
pub const TRANCHE_CAP: usize = 32;

/// What the USDT site that fired means (the probe id of its attachment).
pub mod probe {
    /// lwlock__wait__start(tranche, mode): the backend is about to sleep on the lock.
    pub const WAIT_START: u32 = 1;
    /// lwlock__wait__done(tranche, mode): it woke up.
    pub const WAIT_DONE: u32 = 2;
    /// lwlock__acquire(tranche, mode), lwlock__condacquire(tranche, mode) and
    /// lwlock__acquire__or__wait(tranche, mode): the backend holds the lock (`--hold`).
    pub const ACQUIRED: u32 = 3;
    /// lwlock__release(tranche): it let one go (`--hold`).
    pub const RELEASE: u32 = 4;
}

/// Locks a thread can be seen holding at once (PostgreSQL allows 200; a backend holds a few,
/// up to the 16 lock-manager partitions when it reads pg_locks).
pub const HELD_CAP: usize = 20;

/// One lock held: its tranche's name (the pointer, the same for every lock of a tranche),
/// the mode and when it was taken.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldLock {
    pub name: u64,
    pub start_ns: u64,
    pub mode: u32,
    pub _pad: u32,
}

/// The LWLocks a thread holds, in the order it took them (`--hold`).
///
/// The release probe names the tranche only, not the lock: a release ends the most recent
/// hold of its tranche still open. Locks of one tranche released in the order they were taken
/// (not the usual nesting) get each other's durations; the tranche's count and total time are
/// exact either way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Held {
    pub n: u32,
    pub _pad: u32,
    pub locks: [HeldLock; HELD_CAP],
}

impl Held {
    /// A lock of tranche `name` taken in `mode` at `now`; false when already [`HELD_CAP`]
    /// locks are held (that hold is not timed).
    #[inline(always)]
    pub fn acquire(&mut self, name: u64, mode: u32, now: u64) -> bool {
        let n = self.n as usize;
        if n >= HELD_CAP {
            return false;
        }
        self.locks[n] = HeldLock {
            name,
            start_ns: now,
            mode,
            _pad: 0,
        };
        self.n += 1;
        true
    }

    /// A lock of tranche `name` released at `now`: the most recent open hold of that tranche
    /// ends (removed, the later ones moved down), its (mode, duration) returned; None when
    /// none is open (taken before the tool attached, or past [`HELD_CAP`]).
    #[inline(always)]
    pub fn release(&mut self, name: u64, now: u64) -> Option<(u32, u64)> {
        let n = (self.n as usize).min(HELD_CAP);
        let mut found = HELD_CAP;
        // From the top: the bound is a constant for the verifier.
        for back in 1..=HELD_CAP {
            if back > n {
                break;
            }
            let i = n - back;
            if i < HELD_CAP && self.locks[i].name == name {
                found = i;
                break;
            }
        }
        if found >= HELD_CAP {
            return None;
        }
        let held = self.locks[found];
        for i in 0..HELD_CAP - 1 {
            if i >= found && i + 1 < n {
                self.locks[i] = self.locks[i + 1];
            }
        }
        self.n = (n - 1) as u32;
        Some((held.mode, now.saturating_sub(held.start_ns)))
    }
}

/// Key of the hold times kept in the kernel: a tranche (by its name's address) and mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HoldKey {
    pub name: u64,
    pub mode: u32,
    pub _pad: u32,
}

/// Log2 slots of microseconds kept per hold key (up to 2^31 us: half an hour).
pub const HOLD_SLOTS: usize = 32;

/// Hold times of one tranche and mode since the tool attached, summed in the kernel.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HoldStats {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub log2_us: [u64; HOLD_SLOTS],
    /// The tranche's name, read when its first hold ended.
    pub tranche: [u8; TRANCHE_CAP],
}

/// What the process was doing at the event (pgbpf_common_ebpf::query_string).
pub use pgbpf_common_ebpf::query_string::statement;

/// One LWLock wait, sent when it ends.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WaitEvent {
    /// bpf_ktime_get_ns() when the wait began.
    pub start_ns: u64,
    pub duration_ns: u64,
    /// cgroup v2 id of the waiting task.
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    /// PostgreSQL's LWLockMode: 0 LW_EXCLUSIVE, 1 LW_SHARED, 2 LW_WAIT_UNTIL_FREE.
    pub mode: u32,
    pub statement: u8,
    pub truncated: u8,
    pub _pad: u16,
    pub query_len: u32,
    /// The waiter's user stack id (`--stack`), or `pgbpf_common_ebpf::stacks::NONE` / `LOST`.
    pub user_stack: i32,
    /// The tranche's name (NUL padded).
    pub tranche: [u8; TRANCHE_CAP],
    pub query: [u8; QUERY_CAP],
}

/// Indexes of the COUNTERS per-CPU array (0 and 1 as `pgbpf_common::pg_probes::Lost` reads
/// them).
pub mod counter {
    /// A wait could not be sent (ring buffer full).
    pub const RINGBUF_FULL: u32 = 0;
    /// A wait's start could not be remembered (WAITING full): that wait is not counted.
    pub const WAITING_FULL: u32 = 1;
    /// A wait ended whose start was not seen (it began before the tool attached).
    pub const DONE_WITHOUT_START: u32 = 2;
    /// `--hold`: a lock taken while [`super::HELD_CAP`] were held: its hold is not timed.
    pub const HELD_FULL: u32 = 3;
    /// `--hold`: a release without an open hold of its tranche (taken before the tool
    /// attached, or not timed).
    pub const RELEASE_UNMATCHED: u32 = 4;
    /// `--hold`: a thread's held locks could not be kept (HELD full).
    pub const HOLDERS_FULL: u32 = 5;
    /// `--hold`: a hold of a tranche and mode not in HOLDS when it was full: not counted.
    pub const HOLDS_FULL: u32 = 6;
    pub const COUNT: u32 = 7;
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data without implicit padding, every bit pattern valid.
unsafe impl aya::Pod for WaitEvent {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for HoldKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for HoldStats {}
