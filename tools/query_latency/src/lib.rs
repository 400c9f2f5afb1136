//! query_latency: how long PostgreSQL statements take, from the server's own USDT probes
//! (postgres-bcc's latency, bcc's dbslower/dbstat). Manual: docs/query_latency.md.
//!
//! - [`trace`]: find the postgres binary and its probes, attach, drain the ring buffer.
//! - [`stats`]: latency per statement and the overall histogram.
//! - [`report`]: slow-statement lines, interval and final tables.
//! - [`records`]: the NDJSON records (docs/schema/query_latency.json).

pub mod records;
pub mod report;
pub mod stats;
pub mod trace;

use std::path::PathBuf;

use clap::Parser;
use pgbpf_common::{cli::OutputArgs, target::TargetArgs};

const EXAMPLES: &str = "\
Examples:
  query_latency -p 4242                # a postmaster and all its backends, summary at Ctrl-C
  query_latency -p 4242 5              # a report every 5 seconds
  query_latency --container 3f2a -m 100  # print every statement slower than 100 ms
  query_latency -p 4242 --per-backend --json -d 60
  query_latency --postgres /usr/local/pgsql/bin/postgres   # every server run from that binary";

/// Latency of PostgreSQL statements: an overall histogram, and per normalized statement the
/// calls, mean, p50, p95, p99 and max; simple and extended protocol, from USDT probes.
#[derive(Parser, Debug)]
#[command(name = "query_latency", version, after_help = EXAMPLES)]
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
    /// Print each statement slower than MS milliseconds as it finishes
    #[arg(short = 'm', long = "min-ms", value_name = "MS")]
    pub min_ms: Option<f64>,
    /// Break the statement table down by backend
    #[arg(long)]
    pub per_backend: bool,
    /// Bytes of statement text to capture (at most 512)
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(16..=512))]
    pub text_bytes: u32,
    /// With each report, list the statements running at that moment (from the query context)
    #[arg(long)]
    pub active: bool,
    /// Use uprobes on PortalRun even where USDT probes exist (both protocols, execution only)
    #[arg(long)]
    pub uprobes: bool,
    /// Time whole requests, from their first byte to their ReadyForQuery (commit and results
    /// included), with socket tracepoints and one USDT hit per statement
    #[arg(long, conflicts_with_all = ["active", "uprobes"])]
    pub requests: bool,
    /// Show at most this many statements in each table
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
}

pgbpf_common::tool!(Args, "query_latency", trace::start);
