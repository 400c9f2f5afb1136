//! The connection capture under the wire-protocol tools (pgwire_trace, redis_trace), one
//! layer for every protocol: which sockets are a protocol's connections (servers' listeners
//! and accepted connections, clients' connects to server ports, connections open at start
//! from /proc), their bytes from the socket layer's tracepoints (or the syscall exits)
//! through one ring buffer, losses counted per connection, and the `--record` file. What a
//! tool adds is its decoder and its report.
//!
//! - [`live`]: load, attach, join the connections open now, drain the ring buffer.
//! - [`conns`]: records → a protocol's decoder per connection (live and `--read`).
//! - [`wire`]: a tool's life over the capture: decode, report, record, finish (live and
//!   `--read`), around the tool's [`wire::Wire`].
//! - [`sockets`]: the sockets of processes, from /proc.
//! - [`cli`]: the options every wire tool takes.
//! - [`lines`]: the live line per request both tools print.
//! - [`file`]: the capture records and the `--record` / `--read` file format.
//! - [`mapped`]: `--read`'s file through a memory mapping.

pub mod cli;
pub mod conns;
pub mod file;
pub mod lines;
pub mod live;
pub mod mapped;
pub mod sockets;
pub mod tls;
pub mod wire;

pub use file::{Kind, Reader, Record, Writer};

/// Adds each named counter of `$from` (a `$Type`, destructured whole: a counter added to the
/// type later must be named here, or this does not compile) to the same field of `$into`.
/// For the `absorb` of the decoders' totals, when `--read` decodes on several threads.
#[macro_export]
macro_rules! add_counts {
    ($into:expr, $Type:ident { $($field:ident),* $(,)? } = $from:expr) => {{
        let $Type { $($field),* } = $from;
        $($into.$field += $field;)*
    }};
}
pub use live::{Capture, Options};
pub use pgbpf_capture_ebpf::{DIR_READ, DIR_WRITE, ROLE_CLIENT, ROLE_SERVER, counter};

/// What the kernel side could not capture since the tool attached (the `lost` object of the
/// wire tools' records).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Lost {
    /// Records dropped because the ring buffer was full.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Connections not tracked because the kernel's socket table was full.
    pub sockets_table_full: u64,
    /// TLS reads and writes whose plaintext was dropped because their connection could not
    /// be told (the call did no socket I/O and its SSL object had done none before).
    pub tls_unplaced: u64,
}

impl Lost {
    /// From the kernel's counters (an offline capture without them: zeros).
    pub fn of(kernel: &[u64]) -> Lost {
        let at = |i: u32| kernel.get(i as usize).copied().unwrap_or(0);
        Lost {
            records: at(counter::LOST_RECORDS),
            bytes: at(counter::LOST_BYTES),
            sockets_table_full: at(counter::SOCKETS_FULL),
            tls_unplaced: at(counter::TLS_UNMAPPED),
        }
    }

    /// For the wire tools' totals line: "3 records (120 bytes)", and what else was lost
    /// when anything was.
    pub fn text(&self) -> String {
        let mut t = format!("{} records ({} bytes)", self.records, self.bytes);
        if self.sockets_table_full != 0 {
            t += &format!(
                ", {} connections (socket table full)",
                self.sockets_table_full
            );
        }
        if self.tls_unplaced != 0 {
            t += &format!(
                ", {} TLS reads and writes of unknown connections",
                self.tls_unplaced
            );
        }
        t
    }
}

/// What the capture needs to know of a protocol.
#[derive(Debug)]
pub struct Protocol {
    /// As people call it: "PostgreSQL".
    pub name: &'static str,
    /// The tool that decodes it.
    pub tool: &'static str,
    /// Its number in capture files.
    pub code: u32,
    /// The port assumed when no server is found listening.
    pub default_port: u16,
    /// Whether a process is one of its servers.
    pub is_server: fn(u32) -> bool,
    /// The port a server's Unix socket path stands for (PostgreSQL's .s.PGSQL.NNNN); 0 for a
    /// protocol whose socket paths carry none; None: not a server's socket.
    pub unix_port: fn(&str) -> Option<u16>,
    /// The kernel recognizes connect() and bind() to .s.PGSQL.NNNN paths.
    pub kernel_pg_paths: bool,
    /// Servers fork right after accept() to hand the connection to the child (a postmaster).
    pub accept_fork: bool,
}

impl Protocol {
    /// The protocol of a capture file's code.
    pub fn of_code(code: u32) -> Option<&'static Protocol> {
        [&POSTGRES, &REDIS].into_iter().find(|p| p.code == code)
    }
}

pub static POSTGRES: Protocol = Protocol {
    name: "PostgreSQL",
    tool: "pgwire_trace",
    code: 1,
    default_port: 5432,
    is_server: |pid| {
        pgbpf_common::postgres::binary_of_pid(pid)
            .is_ok_and(|(exe, _)| pgbpf_common::postgres::is_postgres_binary(&exe))
    },
    unix_port: sockets::pg_socket_port,
    kernel_pg_paths: true,
    accept_fork: true,
};

pub static REDIS: Protocol = Protocol {
    name: "Redis",
    tool: "redis_trace",
    code: 2,
    default_port: 6379,
    is_server: is_redis_server,
    // A redis-server's Unix socket (`unixsocket`) is wherever its configuration says.
    unix_port: |_| Some(0),
    kernel_pg_paths: false,
    accept_fork: false,
};

/// redis-server (or its fork Valkey), by the name it was started as: Debian's
/// /usr/bin/redis-server is a link to redis-check-rdb (one binary that acts by its name), so
/// /proc/PID/exe does not tell.
fn is_redis_server(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| matches!(c.trim_end(), "redis-server" | "valkey-server"))
}
