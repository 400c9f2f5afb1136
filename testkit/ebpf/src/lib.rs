//! Indexes of the selftest's COUNTS array, shared with tests/loader.rs.
#![no_std]

/// sys_enter_getpid by a target task.
pub const GETPID: u32 = 0;
/// Calls of the uprobed marker function.
pub const MARKER: u32 = 1;
/// cpu-clock samples of a target task.
pub const CPU_SAMPLES: u32 = 2;
pub const COUNT: u32 = 3;
