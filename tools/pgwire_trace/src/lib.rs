//! pgwire_trace: every request and response between PostgreSQL clients and servers, from
//! socket (or syscall) tracepoints and a userspace protocol decoder. Manual:
//! docs/pgwire_trace.md.
//!
//! - [`trace`]: the shared capture (`pgbpf_capture`: kernel programs, sockets from /proc,
//!   ring buffer, capture files) of PostgreSQL connections into the decoder (and `--record`).
//! - [`decode`]: records → requests, one wire-protocol decoder per connection.
//! - [`offline`]: decoding a capture file (`--read`).
//! - [`report`]: request lines and the per-statement summary.
//! - [`records`]: the NDJSON records (docs/schema/pgwire_trace.json).

pub mod decode;
pub mod offline;
pub mod records;
pub mod report;
pub mod trace;

use std::path::PathBuf;

use clap::Parser;
use pgbpf_common::{cli::OutputArgs, output::Output, runtime::Attached, target::TargetArgs};

const EXAMPLES: &str = "\
Examples:
  pgwire_trace                          # every PostgreSQL server on this machine
  pgwire_trace -p 4242                  # a postmaster (all its backends) or one backend
  pgwire_trace --container 3f2a -T      # the server in a container, with times
  pgwire_trace -p 5150                  # an application's connections (client side)
  pgwire_trace --summary 10             # per-statement table every 10 seconds
  pgwire_trace --json --redact          # NDJSON without parameters or literals
  pgwire_trace --record cap.pgw -d 60   # keep a capture; later:
  pgwire_trace --read cap.pgw --summary # decode it (no root needed)";

/// Trace PostgreSQL's wire protocol from the kernel: each statement with its parameters,
/// duration, rows and status (SQLSTATE), for simple and extended protocol, pipelining and
/// prepared statements, on the server side or the client side.
#[derive(Parser, Debug)]
#[command(name = "pgwire_trace", version, after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Server port to trace (repeatable; default: the ports PostgreSQL listens on here, and 5432)
    #[arg(long, value_name = "PORT")]
    pub port: Vec<u16>,
    /// Print a table per normalized statement (every INTERVAL and at the end) instead of lines
    #[arg(long)]
    pub summary: bool,
    /// Hide parameters, literals (statements normalized) and error messages
    #[arg(long)]
    pub redact: bool,
    /// Bytes captured per read or write (the rest of bigger ones is skipped, framing kept)
    #[arg(long, value_name = "BYTES", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(64..=16384))]
    pub capture: u32,
    /// Ring buffer size in MiB (a power of two)
    #[arg(long, value_name = "MIB", default_value_t = 16,
          value_parser = parse_buffer_mb)]
    pub buffer_mb: u32,
    /// Also write every captured record to FILE (read it back with --read)
    #[arg(long, value_name = "FILE", conflicts_with = "read")]
    pub record: Option<PathBuf>,
    /// Decode a capture written by --record instead of tracing (no root needed)
    #[arg(long, value_name = "FILE")]
    pub read: Option<PathBuf>,
    /// Show at most this many statements in each summary table
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Capture reads and writes at the exits of the read and write syscalls instead of the
    /// socket layer's sock_recv_length/sock_send_length tracepoints (the default from Linux
    /// 6.4; older kernels always use the syscalls)
    #[arg(long)]
    pub syscall_hooks: bool,
}

fn parse_buffer_mb(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(1..=1024).contains(&n) || !n.is_power_of_two() {
        return Err("the ring buffer size must be a power of two from 1 to 1024 MiB".into());
    }
    Ok(n)
}

/// The output options of `args`.
pub fn style(args: &Args) -> report::Style {
    report::Style {
        summary: args.summary,
        intervals: args.out.interval().is_some(),
        redact: args.redact,
        top: args.top,
    }
}

pgbpf_common::tool!(Args, "pgwire_trace", start);

/// Decodes the capture file of `--read`, or attaches.
fn start<'a>(args: &'a Args, out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    match &args.read {
        Some(path) => offline::run(args, path, out).map(|()| None),
        None => trace::start(args, out).map(Some),
    }
}
