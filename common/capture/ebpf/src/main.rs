//! The capture's kernel programs, shared by pgwire_trace and redis_trace: tracepoints that
//! copy the bytes of a protocol's server connections to a ring buffer. Reads and writes are caught at the socket layer (sock_recv_length,
//! sock_send_length: socket I/O only, raw tracepoints) or, on kernels before 6.4, at the exits
//! of the read and write syscalls; connections come and go at accept, connect, close and fork.
//!
//! - [`conns`]: the connection table (SOCKS, keyed by (tgid, fd)) and the programs that keep it.
//! - [`capture`]: the data path, from a read or write to a DATA record.
//! - [`emit`]: the records and the ring buffer they go through.
//! - [`tls`]: TLS plaintext from uprobes on libssl, on the same connections.
//!
//! A read or write of a process that holds no traced connection costs one array load
//! (HAS_SOCKS); any other costs one hash lookup.
#![no_std]
#![no_main]

mod capture;
mod conns;
mod emit;
mod tls;

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use pgbpf_capture_ebpf::counter;

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

/// Bytes copied per syscall (set by the loader from --capture).
#[unsafe(no_mangle)]
pub static CAPTURE_LIMIT: aya_ebpf::Global<u32> = aya_ebpf::Global::new(8192);
/// 1: track connect() of target processes to PostgreSQL ports (client side).
#[unsafe(no_mangle)]
pub static TRACK_CLIENTS: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
/// 1: track bind() of target processes to PostgreSQL ports (servers started later).
#[unsafe(no_mangle)]
pub static TRACK_SERVERS: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
/// 1: a Unix socket path ending in .s.PGSQL.NNNN is a server's, of port NNNN (PostgreSQL).
#[unsafe(no_mangle)]
pub static UNIX_PG_PATHS: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
/// 1: a process that forks right after accept() hands the connection to the child (the
/// postmaster's model); 0 for servers whose children never take a connection (Redis forks
/// only to save).
#[unsafe(no_mangle)]
pub static FOLLOW_ACCEPT_FORK: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
/// Offset of child_pid in sched_process_fork (from tracefs).
#[unsafe(no_mangle)]
pub static FORK_CHILD_PID_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(44);
/// 1: libssl's uprobes are attached; socket I/O inside a TLS call is not copied.
#[unsafe(no_mangle)]
pub static TLS_HOOKS: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
/// Ring buffer size: past a quarter full, a record wakes userspace up.
#[unsafe(no_mangle)]
pub static RING_BYTES: aya_ebpf::Global<u64> = aya_ebpf::Global::new(16 << 20);

#[inline(always)]
pub fn ids() -> (u64, u32) {
    let id = bpf_get_current_pid_tgid();
    (id, (id >> 32) as u32)
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

pgbpf_common_ebpf::program_support!();
