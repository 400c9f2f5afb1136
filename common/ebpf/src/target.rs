//! In-kernel target filter shared by all tools (`--pid`, `--container`/`--cgroup`, `--comm`).
//!
//! The loader sets the globals before load (`pgbpf_common::target::KernelFilter`) and fills
//! [`PGBPF_TARGET_TGIDS`] after load. Names are prefixed so they cannot clash with a tool's own.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{map, tracepoint},
    maps::{Array, HashMap},
    programs::TracePointContext,
};

/// 1 when only the tgids in [`PGBPF_TARGET_TGIDS`] are traced.
#[unsafe(no_mangle)]
static PGBPF_FILTER_TGID: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
/// 1 when only the cgroup in [`PGBPF_TARGET_CGROUP`] and those below it are traced.
#[unsafe(no_mangle)]
static PGBPF_FILTER_CGROUP_ON: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
/// Depth of that cgroup below the v2 root (the root is level 0).
#[unsafe(no_mangle)]
static PGBPF_FILTER_CGROUP_LEVEL: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
/// 1 when the current task's comm must equal [`PGBPF_FILTER_COMM`].
#[unsafe(no_mangle)]
static PGBPF_FILTER_COMM_ON: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
/// The comm to match, NUL padded to 16 bytes.
#[unsafe(no_mangle)]
static PGBPF_FILTER_COMM: aya_ebpf::Global<[u8; 16]> = aya_ebpf::Global::new([0; 16]);

/// The target cgroup's id (cgroup v2, its directory's inode) in slot 0. A map, not a
/// constant: a restarted container's cgroup is a new one, whose id userspace writes here to
/// follow it.
#[map]
pub static PGBPF_TARGET_CGROUP: Array<u64> = Array::with_max_entries(1, 0);

/// Traced processes by tgid (value unused) when `PGBPF_FILTER_TGID` is 1.
#[map]
pub static PGBPF_TARGET_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// True when the current task belongs to the target given on the command line.
#[inline(always)]
pub fn current_is_target() -> bool {
    if PGBPF_FILTER_TGID.load() != 0 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        // SAFETY: the value is only tested for presence, never read through.
        if unsafe { PGBPF_TARGET_TGIDS.get(&tgid) }.is_none() {
            return false;
        }
    }
    if PGBPF_FILTER_CGROUP_ON.load() != 0 {
        // An array slot: the verifier turns the lookup into a load.
        // 0: not written yet (every task above the level would match it).
        let Some(&cgroup_id) = PGBPF_TARGET_CGROUP.get(0).filter(|&&id| id != 0) else {
            return false;
        };
        let level = PGBPF_FILTER_CGROUP_LEVEL.load() as i32;
        // SAFETY: a plain helper call; returns 0 when the task is above that level.
        if unsafe { bpf_get_current_ancestor_cgroup_id(level) } != cgroup_id {
            return false;
        }
    }
    if PGBPF_FILTER_COMM_ON.load() != 0 {
        let Ok(comm) = bpf_get_current_comm() else {
            return false;
        };
        if comm != PGBPF_FILTER_COMM.load() {
            return false;
        }
    }
    true
}

/// 1 when children of traced processes become traced too (a postmaster's backends).
#[unsafe(no_mangle)]
static PGBPF_FOLLOW_FORKS: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
/// Offset of `child_pid` in sched:sched_process_fork (from its format file).
#[unsafe(no_mangle)]
static PGBPF_FORK_CHILD_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(20);

/// sched:sched_process_fork: a child of a traced process is traced from its first instruction.
/// (Threads are added too, by tid; harmless, and removed when they exit.)
#[tracepoint]
pub fn pgbpf_follow_fork(ctx: TracePointContext) -> u32 {
    if PGBPF_FOLLOW_FORKS.load() == 0 {
        return 0;
    }
    // The forking task is current; its process (not the thread in `parent_pid`) is what the
    // filter holds.
    let parent = ctx.tgid();
    // SAFETY: offset from the tracepoint's format file.
    let child: u32 = unsafe { ctx.read_at(PGBPF_FORK_CHILD_OFFSET.load() as usize) }.unwrap_or(0);
    // SAFETY: presence test only.
    if child != 0 && unsafe { PGBPF_TARGET_TGIDS.get(&parent) }.is_some() {
        let _ = PGBPF_TARGET_TGIDS.insert(&child, &1, 0);
    }
    0
}

/// sched:sched_process_exit: forget an exiting task so its pid can be reused safely.
#[tracepoint]
pub fn pgbpf_forget_exit(ctx: TracePointContext) -> u32 {
    if PGBPF_FOLLOW_FORKS.load() != 0 {
        let _ = PGBPF_TARGET_TGIDS.remove(&ctx.pid());
    }
    // A backend that exits leaves its query context behind otherwise.
    crate::query::query_forget(ctx.pid());
    0
}
