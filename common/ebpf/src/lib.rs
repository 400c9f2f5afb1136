//! no_std helpers shared by every tool's kernel programs.
//!
//! - [`target`]: the in-kernel target filter (tgid set, cgroup subtree, comm), set up by the
//!   userspace loader before load (globals) and after load (the tgid map).
//! - [`query`]: the query context, each backend's current statement.
//! - [`query_string`]: the statement a process runs, read from its debug_query_string.
//! - [`usdt`]: USDT argument specs (shared with userspace) and their evaluation.
//! - [`counters`]: the per-CPU counters of what a tool lost (`COUNTERS`, `bump`, `add`).
//! - [`ring`]: ring buffer flags by name.
//! - [`stacks`]: user and kernel stack ids for `--stack` (one shared stack map).
//! - [`syscall`]: arguments and results of the syscall tracepoints.
//! - [`regs`]: the current task's syscall number and arguments from its saved registers.
//! - [`log2_slot`]: bcc-style power-of-two histogram slots.
//! - `atomic_add` (BPF target only): `lock xadd` on the BPF target, which lacks `AtomicU64::fetch_add`.
#![no_std]
// `atomic_xadd` is the only way to emit BPF `lock xadd` from Rust today.
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]

#[cfg(target_arch = "bpf")]
pub mod counters;
pub mod query;
pub mod query_string;
#[cfg(target_arch = "bpf")]
pub mod regs;
#[cfg(target_arch = "bpf")]
pub mod ring;
pub mod stacks;
#[cfg(target_arch = "bpf")]
pub mod syscall;
// Kernel-only: its #[no_mangle] globals must not end up in host binaries (they would be
// exported and break static-pie start-up).
#[cfg(target_arch = "bpf")]
pub mod target;
pub mod usdt;

/// Number of slots in a log2 histogram (covers the whole u64 range).
pub const LOG2_SLOTS: usize = 64;

/// Index of the power-of-two bucket of `v`: 0 for 0 and 1, 1 for 2..=3, 2 for 4..=7, ...
/// (bcc's `bpf_log2l`, written without loops so the verifier sees a straight line).
#[inline(always)]
pub fn log2_slot(v: u64) -> u32 {
    if v <= 1 { 0 } else { 63 - v.leading_zeros() }
}

/// Atomically adds `v` to `*dst` (BPF `lock xadd`).
///
/// # Safety
/// `dst` must point into a map value (or other memory the program may write).
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn atomic_add(dst: *mut u64, v: u64) {
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            dst, v,
        );
    }
}

/// What every tool's kernel object needs besides its programs: the license section (GPL
/// compatible, for GPL-only helpers) and a panic handler (panics cannot happen in verified
/// code, but `no_std` binaries must name one). Invoke once in each eBPF `main.rs`.
#[macro_export]
macro_rules! program_support {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
