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

/// Sends the first `size_of::<T>()` bytes of `value` (an event built in map memory, too big
/// for the stack) as one record of `ring`, without a wake-up; false when the ring is full.
/// `T` is the record's type, or a byte array for a record cut short before its text.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn send_copy<T: 'static, V>(ring: &aya_ebpf::maps::RingBuf, value: &V) -> bool {
    let Some(mut slot) = ring.reserve::<T>(0) else {
        return false;
    };
    // SAFETY: copies `size_of::<T>()` bytes (at most `value`'s size, the callers' types say
    // so) from map memory into the reserved record.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            slot.as_mut_ptr() as *mut _,
            core::mem::size_of::<T>() as u32,
            value as *const V as *const _,
        );
    }
    slot.submit(NO_WAKEUP);
    true
}
