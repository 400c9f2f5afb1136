//! Stack ids for `--stack`: the current task's user or kernel stack stored in the shared
//! stack map [`PGBPF_STACKS`] (the kernel dedups identical stacks and hands back one id for
//! each), taken only when userspace turned it on ([`PGBPF_STACK_MODE`]). Userspace reads the
//! frames by id and symbolizes them (`pgbpf_common::stacks`).
//!
//! The kernel walks frame pointers: Debian's PostgreSQL is built with them; a library
//! without them (libc's syscall wrappers) hides its caller's frame, no more.

/// A record's stack id when no stack was asked for.
pub const NONE: i32 = -1;
/// A record's stack id when the kernel could not store the stack (the map is full, or the
/// stack could not be walked).
pub const LOST: i32 = -2;

/// `PGBPF_STACK_MODE` bits.
pub mod mode {
    /// Take user stacks.
    pub const USER: u32 = 1;
    /// Take kernel stacks.
    pub const KERNEL: u32 = 2;
}

/// The name of the stack map (userspace sizes it; 1 entry when stacks are off).
pub const MAP: &str = "PGBPF_STACKS";
/// The name of the mode global.
pub const MODE_GLOBAL: &str = "PGBPF_STACK_MODE";

#[cfg(target_arch = "bpf")]
mod kernel {
    use aya_ebpf::{
        bindings::BPF_F_USER_STACK, macros::map, maps::StackTrace,
        programs::tracing::StackIdContext,
    };

    use super::{LOST, NONE, mode};

    /// Which stacks to take ([`mode`] bits); 0 = none (the default).
    #[unsafe(no_mangle)]
    static PGBPF_STACK_MODE: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);

    /// Stacks by id (userspace sets the size).
    #[map]
    pub static PGBPF_STACKS: StackTrace = StackTrace::with_max_entries(1, 0);

    fn take<C: StackIdContext>(ctx: &C, bit: u32, flags: u64) -> i32 {
        if PGBPF_STACK_MODE.load() & bit == 0 {
            return NONE;
        }
        match ctx.get_stackid(&PGBPF_STACKS, flags) {
            Ok(id) => id as i32,
            Err(_) => LOST,
        }
    }

    /// The current task's user stack id, [`NONE`] or [`LOST`].
    #[inline(always)]
    pub fn user_stack<C: StackIdContext>(ctx: &C) -> i32 {
        take(ctx, mode::USER, u64::from(BPF_F_USER_STACK))
    }

    /// The current kernel stack id, [`NONE`] or [`LOST`].
    #[inline(always)]
    pub fn kernel_stack<C: StackIdContext>(ctx: &C) -> i32 {
        take(ctx, mode::KERNEL, 0)
    }
}

#[cfg(target_arch = "bpf")]
pub use kernel::{PGBPF_STACKS, kernel_stack, user_stack};
