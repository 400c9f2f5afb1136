//! redis_trace: every Redis command and its reply, between clients and servers, from socket
//! (or syscall) tracepoints and a RESP2/RESP3 decoder. Manual: docs/redis_trace.md.
//!
//! - [`trace`]: the decoder and report as the shared capture (`pgbpf_capture`) drives them,
//!   live and `--read`.
//! - [`decode`]: records → commands, one `pgbpf_resp::Connection` per connection.
//! - [`report`]: command lines, the per-command summary, top keys.
//! - [`records`]: the NDJSON records (docs/schema/redis_trace.json).

pub mod decode;
pub mod records;
pub mod report;
pub mod trace;

use clap::Parser;
use pgbpf_capture::cli::CaptureArgs;
use pgbpf_common::{cli::OutputArgs, output::Output, runtime::Attached, target::TargetArgs};

const EXAMPLES: &str = "\
Examples:
  redis_trace                           # every Redis server on this machine
  redis_trace -p 4242 -T                # a redis-server (or an application: client side)
  redis_trace --container 3f2a          # the server in a container
  redis_trace --summary 10              # per-command table every 10 seconds
  redis_trace --summary --keys          # with the top keys and key prefixes
  redis_trace --json --redact           # NDJSON with command and key only
  redis_trace --record cap.pgw -d 60    # keep a capture (passwords overwritten); later:
  redis_trace --read cap.pgw --summary  # decode it (no root needed)";

/// Trace Redis' protocol (RESP2 and RESP3) from the kernel: each command with its key,
/// arguments, reply size, latency and error, pipelining, transactions (MULTI/EXEC), pub/sub
/// and CLIENT REPLY included, on the server side or the client side.
#[derive(Parser, Debug)]
// --pgdata names a PostgreSQL server: not an option here (refused if given anyway).
#[command(name = "redis_trace", version, after_help = EXAMPLES,
          mut_arg("pgdata", |a| a.hide(true)))]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Print a table per command (GET, SET, ...) every INTERVAL and at the end instead of lines
    #[arg(long)]
    pub summary: bool,
    /// With --summary: also the top keys and key prefixes (up to the first ':')
    #[arg(long, requires = "summary")]
    pub keys: bool,
    /// Show the command and its key only (no other arguments, no error messages)
    #[arg(long)]
    pub redact: bool,
    /// Show at most this many rows in each summary table
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
}

/// The output options of `args`.
pub fn style(args: &Args) -> report::Style {
    report::Style {
        summary: args.summary,
        keys: args.keys,
        intervals: args.out.interval().is_some(),
        redact: args.redact,
        top: args.top,
    }
}

pgbpf_common::tool!(Args, "redis_trace", start);

/// Decodes the capture file of `--read`, or attaches.
fn start<'a>(args: &'a Args, out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    if args.target.pgdata.is_some() {
        anyhow::bail!("--pgdata names a PostgreSQL server; a Redis server is named by --port");
    }
    pgbpf_capture::wire::start(
        &pgbpf_capture::REDIS,
        &args.target,
        &args.capture,
        args.out.verbose,
        out,
        |wall| trace::redis_wire(args, wall),
    )
}
