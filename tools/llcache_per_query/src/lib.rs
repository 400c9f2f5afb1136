//! llcache_per_query: last-level cache references and misses (or other CPU events) per
//! PostgreSQL statement, backend and CPU, from perf_event sampling joined with the query
//! context (postgres-bcc's llcache_per_query, bcc's llcstat). Manual: docs/llcache_per_query.md.
//!
//! - [`events`]: the CPU events that can be sampled, and `--event` parsing.
//! - [`trace`]: where statements come from, load, attach the perf events, drain the maps.
//! - [`report`]: sample tables by (process, statement, CPU).
//! - [`records`]: the NDJSON records (docs/schema/llcache_per_query.json).

pub mod events;
pub mod records;
pub mod report;
pub mod trace;

use std::path::PathBuf;

use clap::Parser;
use pgbpf_common::{cli::OutputArgs, target::TargetArgs};

const EXAMPLES: &str = "\
Examples:
  llcache_per_query                      # every postgres process, table at Ctrl-C
  llcache_per_query -p 4242 5            # a postmaster and its backends, every 5 seconds
  llcache_per_query -c 1000 -d 30        # one sample per 1000 events, for 30 seconds
  llcache_per_query -e cpu-clock         # CPU time per statement (works in VMs without a PMU)
  llcache_per_query -e dTLB-load-misses -e dTLB-store-misses --container 3f2a --json";

/// Cache references and misses (and other CPU events) per PostgreSQL statement, backend and
/// CPU: one sample every N events, each charged to the statement its backend was running.
#[derive(Parser, Debug)]
#[command(name = "llcache_per_query", version, after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Trace only tasks with this name (default: postgres, unless --pid, --container or
    /// --cgroup is given)
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub redact: pgbpf_common::cli::RedactArg,
    /// Event to sample (repeatable; default cache-references and cache-misses): cache-references,
    /// cache-misses, dTLB-load-misses, dTLB-store-misses, cpu-migrations, context-switches,
    /// page-faults, cpu-clock. NAME:N gives the event its own sample period
    #[arg(short = 'e', long = "event", value_name = "NAME[:N]")]
    pub events: Vec<String>,
    /// Sample one in N events (default: 100 for hardware events, as bcc's llcstat; 1 for
    /// context-switches, cpu-migrations and page-faults; for cpu-clock N is nanoseconds of
    /// CPU time, default 1000000)
    #[arg(short = 'c', long = "sample-period", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub period: Option<u64>,
    /// The postgres binary to probe with --usdt (default: the target's, or the installed one)
    #[arg(long, value_name = "PATH")]
    pub postgres: Option<PathBuf>,
    /// Bytes of statement text to capture (at most 256)
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(16..=256))]
    pub text_bytes: u32,
    /// Take statements from PostgreSQL's USDT statement probes (the query context
    /// query_latency keeps) instead of reading each process's debug_query_string at the
    /// sample: an extended-protocol statement then counts from PortalRun only, and every
    /// statement pays four probe hits
    #[arg(long)]
    pub usdt: bool,
    /// With --usdt semantics, from uprobes on PortalRun (for builds without USDT probes)
    #[arg(long)]
    pub uprobes: bool,
    /// Show at most this many rows in each table (the totals count every row)
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub top: usize,
}

pgbpf_common::tool!(Args, "llcache_per_query", trace::start);
