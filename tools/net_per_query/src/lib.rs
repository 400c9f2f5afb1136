//! net_per_query: the network traffic of each PostgreSQL statement: bytes received (its
//! request, COPY data) and sent (its response) per statement, backend type and client, from
//! the socket layer's tracepoints (transferred bytes, not requested) and the
//! query__execute__start USDT probe (postgres-bcc's net_per_query). Manual: docs/net_per_query.md.
//!
//! - [`trace`]: find the binary's probe sites, load, attach, drain the ring buffer.
//! - [`report`]: the tables per period.
//! - [`devices`]: `--dev`, the bytes per network device and direction.
//! - [`records`]: the NDJSON records (docs/schema/net_per_query.json).

pub mod devices;
pub mod records;
pub mod report;
pub mod trace;

use std::path::PathBuf;

use clap::Parser;
use pgbpf_common::{cli::OutputArgs, target::TargetArgs};

const EXAMPLES: &str = "\
Examples:
  net_per_query                      # every PostgreSQL of the installed binary, a table at Ctrl-C
  net_per_query -p 4242 10           # a postmaster and its backends, a table every 10 seconds
  net_per_query --container 3f2a -d 30   # a containerized server for 30 seconds
  net_per_query --json -d 60         # NDJSON rows
  net_per_query --dev 10             # and the bytes of each network device, PostgreSQL's part";

/// Bytes received and sent per PostgreSQL statement (its request and its whole response),
/// per backend type and per client, with each connection's own traffic (startup,
/// authentication, termination) apart.
#[derive(Parser, Debug)]
#[command(name = "net_per_query", version, after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub redact: pgbpf_common::cli::RedactArg,
    /// The postgres binary to probe (default: the target's, or the installed one)
    #[arg(long, value_name = "PATH")]
    pub postgres: Option<PathBuf>,
    /// Show at most this many rows in each table
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Also the packets and bytes of each network device and direction, and PostgreSQL's
    /// part of them (TCP to and from the traced servers' listening ports)
    #[arg(long)]
    pub dev: bool,
}

pgbpf_common::tool!(Args, "net_per_query", trace::start);
