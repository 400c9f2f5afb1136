//! The current task's saved user registers (`struct pt_regs`, by field name), and the
//! syscall numbers that matter to the tools, for the architectures they know (pgbpf-build sets
//! `bpf_target_arch` to the host's). Exit and socket tracepoints carry no syscall detail:
//! reading it from the registers spares an enter program and a map update per call.

use aya_ebpf::helpers::generated::{bpf_get_current_task_btf, bpf_task_pt_regs};

#[cfg(bpf_target_arch = "aarch64")]
mod arch {
    use core::mem::offset_of;

    use aya_ebpf::bindings::user_pt_regs;

    /// The kernel's arm64 `struct pt_regs` (arch/arm64/include/asm/ptrace.h) up to the
    /// syscall number: aya's bindings have only its user part.
    #[repr(C)]
    pub struct PtRegs {
        pub user: user_pt_regs,
        /// x0 as the syscall received it (x0 itself is overwritten by the result).
        pub orig_x0: u64,
        pub syscallno: i32,
    }

    pub const NR: usize = offset_of!(PtRegs, syscallno);
    pub const ARG0: usize = offset_of!(PtRegs, orig_x0);
    pub const ARG1: usize = offset_of!(PtRegs, user) + offset_of!(user_pt_regs, regs) + 8;
    pub const ARG2: usize = offset_of!(PtRegs, user) + offset_of!(user_pt_regs, regs) + 16;

    /// include/uapi/asm-generic/unistd.h
    pub mod nr {
        pub const READ: u32 = 63;
        pub const WRITE: u32 = 64;
        pub const READV: u32 = 65;
        pub const WRITEV: u32 = 66;
        pub const SENDTO: u32 = 206;
        pub const RECVFROM: u32 = 207;
        pub const SENDMSG: u32 = 211;
        pub const RECVMSG: u32 = 212;
    }
}

#[cfg(not(bpf_target_arch = "aarch64"))]
mod arch {
    use core::mem::offset_of;

    pub use aya_ebpf::bindings::pt_regs as PtRegs;

    /// The syscall number survives in orig_ax (ax is overwritten by the result).
    pub const NR: usize = offset_of!(PtRegs, orig_rax);
    pub const ARG0: usize = offset_of!(PtRegs, rdi);
    pub const ARG1: usize = offset_of!(PtRegs, rsi);
    pub const ARG2: usize = offset_of!(PtRegs, rdx);

    /// arch/x86/entry/syscalls/syscall_64.tbl
    pub mod nr {
        pub const READ: u32 = 0;
        pub const WRITE: u32 = 1;
        pub const READV: u32 = 19;
        pub const WRITEV: u32 = 20;
        pub const SENDTO: u32 = 44;
        pub const RECVFROM: u32 = 45;
        pub const SENDMSG: u32 = 46;
        pub const RECVMSG: u32 = 47;
    }
}

pub use arch::nr;

/// The current syscall's number and first three arguments, from the task's saved user
/// registers; None when the task has none (a kernel thread).
#[inline(always)]
pub fn current_syscall() -> Option<(u32, [u64; 3])> {
    // SAFETY: helpers on the current task. The verifier types `regs` as the kernel's struct
    // pt_regs (BTF), so plain loads of its fields at constant offsets are allowed and
    // checked; they cost far less than a probe_read per register.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        if regs.is_null() {
            return None;
        }
        let load = |offset: usize| core::ptr::read_volatile(regs.add(offset).cast::<u64>());
        Some((
            core::ptr::read_volatile(regs.add(arch::NR).cast::<u32>()),
            [load(arch::ARG0), load(arch::ARG1), load(arch::ARG2)],
        ))
    }
}
