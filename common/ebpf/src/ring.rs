//! Ring buffer flags, by name (the kernel's `BPF_RB_*`), and the wake-up policy every tool
//! follows: no wake-up per record (it costs more than the record), userspace drains at its
//! own cadence.

use aya_ebpf::bindings;

/// Submit without waking userspace.
pub const NO_WAKEUP: u64 = bindings::BPF_RB_NO_WAKEUP as u64;
/// Submit and wake userspace now.
pub const FORCE_WAKEUP: u64 = bindings::BPF_RB_FORCE_WAKEUP as u64;
/// `bpf_ringbuf_query`: bytes waiting to be read.
pub const AVAIL_DATA: u64 = bindings::BPF_RB_AVAIL_DATA as u64;
