//! pgbpf_exporter: the tools' kernel programs running continuously on a node, their numbers
//! served on `/metrics` for Prometheus (ebpf_exporter's and coroot-node-agent's job, for
//! PostgreSQL). Manual: docs/pgbpf_exporter.md.
//!
//! - [`collectors`]: one per tool (statements, reclaim, throttling, shared-memory calls,
//!   wire requests), run
//!   with the tools' own code, and the exporter's self-metrics.
//! - [`statements`]: per-statement latency histograms with a bounded number of series.
//! - [`families`]: metric families as a scrape builds them, encoded by `prometheus-client`.
//! - [`placement`]: which container and pod a process is in (labels).
//! - [`serve`]: the HTTP server and the loop that drains the kernel's buffers.

pub mod collectors;
pub mod families;
pub mod placement;
pub mod serve;
pub mod statements;

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  pgbpf_exporter                               # every collector, /metrics on port 9435
  pgbpf_exporter --listen 127.0.0.1:9435 --collect query_latency
  pgbpf_exporter --collect page_reclaim,io_timeouts --statements 50
  pgbpf_exporter --collect query_latency,pgwire_trace   # also requests and errors by SQLSTATE class
  pgbpf_exporter --collect redis_trace                  # Redis commands and errors by code
  pgbpf_exporter --postgres /usr/local/pgsql/bin/postgres   # a custom build, before it runs
  curl -s localhost:9435/metrics | grep pgbpf_statement_duration_seconds_count";

/// Serves PostgreSQL statement latency, memory reclaim and write throttling per container on
/// /metrics for Prometheus, from the pgbpf tools' kernel programs running continuously.
#[derive(Parser, Debug)]
#[command(name = "pgbpf_exporter", version, after_help = EXAMPLES)]
pub struct Args {
    /// Where to serve /metrics: [HOST]:PORT (no host: every address)
    #[arg(long, value_name = "ADDR", default_value = ":9435", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// The collectors to run, comma separated (pgwire_trace and redis_trace, which copy every
    /// request and response of every server to decode them, are not among the default ones)
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "query_latency,page_reclaim,io_timeouts,shmem"
    )]
    pub collect: Vec<CollectorName>,
    /// A postgres binary to trace from the start (repeatable; default: the installed
    /// server's); servers of other binaries are found as they run
    #[arg(long, value_name = "PATH")]
    pub postgres: Vec<std::path::PathBuf>,
    /// Statements with series of their own; the others are counted as statement="other"
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub statements: u32,
    /// Minutes without a call after which a statement's series gives its place to another
    #[arg(long, value_name = "MIN", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub statement_idle: u32,
    /// Drop comments from the statement labels (they are normalized either way: literals as
    /// $n); a comment may carry what a label must not
    #[arg(long)]
    pub redact: bool,
    /// Do not have the kernel time our programs (no pgbpf_bpf_program_run_seconds; saves
    /// two clock reads per program run)
    #[arg(long)]
    pub no_bpf_stats: bool,
    /// Log each attachment and rescan on stderr
    #[arg(short, long)]
    pub verbose: bool,
}

/// The collectors, named after the tools whose programs they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CollectorName {
    /// Statement latency histograms (query_latency's USDT probes)
    #[value(name = "query_latency")]
    QueryLatency,
    /// Memory reclaim bytes, episodes and stall time per container (page_reclaim)
    #[value(name = "page_reclaim")]
    PageReclaim,
    /// Dirty-page and reclaim throttling, writeback per device (io_timeouts)
    #[value(name = "io_timeouts")]
    IoTimeouts,
    /// Shared-memory calls of postgres processes by call and result, failures (ENOSPC of
    /// /dev/shm) included (shmem's syscall programs)
    #[value(name = "shmem")]
    Shmem,
    /// PostgreSQL requests and errors by SQLSTATE class, from the wire (pgwire_trace's
    /// capture: every read and write of every server connection is copied and decoded)
    #[value(name = "pgwire_trace")]
    PgwireTrace,
    /// Redis commands per name and errors per code, from the wire (redis_trace's capture)
    #[value(name = "redis_trace")]
    RedisTrace,
}

impl CollectorName {
    pub fn name(self) -> &'static str {
        match self {
            CollectorName::QueryLatency => "query_latency",
            CollectorName::PageReclaim => "page_reclaim",
            CollectorName::IoTimeouts => "io_timeouts",
            CollectorName::Shmem => "shmem",
            CollectorName::PgwireTrace => "pgwire_trace",
            CollectorName::RedisTrace => "redis_trace",
        }
    }
}

/// ":9435" is every address; "host:port" as given.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse().map_err(|_| {
        format!("'{s}' is not an address: give [HOST]:PORT, e.g. :9435 or 127.0.0.1:9435")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_without_a_host_are_every_address() {
        assert_eq!(parse_listen(":9435").unwrap().to_string(), "0.0.0.0:9435");
        assert_eq!(
            parse_listen("127.0.0.1:1").unwrap().to_string(),
            "127.0.0.1:1"
        );
        assert!(parse_listen("9435").unwrap_err().contains("[HOST]:PORT"));
        let args = Args::try_parse_from(["pgbpf_exporter", "--collect", "page_reclaim"]).unwrap();
        assert_eq!(args.collect, vec![CollectorName::PageReclaim]);
        assert!(Args::try_parse_from(["pgbpf_exporter", "--collect", "nope"]).is_err());
    }
}
