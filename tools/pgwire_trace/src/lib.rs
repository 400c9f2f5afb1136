//! pgwire_trace: every request and response between PostgreSQL clients and servers, from
//! socket (or syscall) tracepoints and a userspace protocol decoder. Manual:
//! docs/pgwire_trace.md.
//!
//! - [`trace`]: the decoder and report as the shared capture (`pgbpf_capture`: kernel
//!   programs, sockets from /proc, ring buffer, capture files) drives them, live and `--read`.
//! - [`decode`]: records → requests, one wire-protocol decoder per connection.
//! - [`report`]: request lines and the per-statement summary.
//! - [`records`]: the NDJSON records (docs/schema/pgwire_trace.json).

pub mod decode;
pub mod records;
pub mod report;
pub mod trace;

use clap::Parser;
use pgbpf_capture::cli::CaptureArgs;
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
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Print a table per normalized statement (every INTERVAL and at the end) instead of lines
    #[arg(long)]
    pub summary: bool,
    /// Hide parameters, literals and comments (statements normalized, comments dropped) and
    /// error messages
    #[arg(long)]
    pub redact: bool,
    /// Show at most this many statements in each summary table
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
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
    pgbpf_capture::wire::start(
        &pgbpf_capture::POSTGRES,
        &args.target,
        &args.capture,
        args.out.verbose,
        out,
        |wall| trace::pg_wire(args, wall),
    )
}
