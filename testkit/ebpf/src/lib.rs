//! Indexes of the selftest's COUNTS array, shared with tests/loader.rs.
#![no_std]

/// sys_enter_getpid by a target task.
pub const GETPID: u32 = 0;
/// Calls of the uprobed marker function.
pub const MARKER: u32 = 1;
/// cpu-clock samples of a target task.
pub const CPU_SAMPLES: u32 = 2;
/// Firings of the USDT probe with probe id [`PROBE_GUARDED`] / [`PROBE_PLAIN`].
pub const GUARDED_FIRED: u32 = 3;
pub const PLAIN_FIRED: u32 = 4;
/// Sums of the first argument of each.
pub const GUARDED_ARG0_SUM: u32 = 5;
pub const PLAIN_ARG0_SUM: u32 = 6;
pub const COUNT: u32 = 7;

/// probe ids given to attach_usdt.
pub const PROBE_GUARDED: u32 = 1;
pub const PROBE_PLAIN: u32 = 2;
