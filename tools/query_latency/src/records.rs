//! query_latency's NDJSON records (docs/schema/query_latency.json): `slow` statements as they
//! finish (`--min-ms`), `active` statements at each report (`--active`), a `statement` row per
//! normalized statement in each report, each interval's `interval` and the run's `summary`.
//! Field names follow `pgbpf_common::records`.

use pgbpf_common::records::Scope;
use schemars::JsonSchema;
use serde::Serialize;

/// Every line query_latency prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// A statement slower than `--min-ms`, as it finished.
    Slow(Slow<'a>),
    /// A statement running when a report was made (`--active`).
    Active(Active<'a>),
    /// One normalized statement's latency in a report.
    Statement(StatementRow<'a>),
    /// The end of an interval report.
    Interval(Totals),
    /// The end of the run.
    Summary(Totals),
}

#[derive(Serialize, JsonSchema)]
pub struct Slow<'a> {
    /// When the statement finished.
    pub ts_ns: u64,
    pub pid: u32,
    pub duration_ns: u64,
    /// `simple` (Query message), `extended` (Parse/Bind/Execute), `tls` (a TLS connection,
    /// whose messages cannot be seen) or `unknown` (`--uprobes`).
    pub protocol: &'a str,
    pub query: &'a str,
    /// The text was cut at `--text-bytes`.
    pub truncated: bool,
}

#[derive(Serialize, JsonSchema)]
pub struct Active<'a> {
    pub ts_ns: u64,
    pub pid: u32,
    /// How long it has been running.
    pub elapsed_ns: u64,
    /// `simple` (Query message), `extended` (Parse/Bind/Execute) or `unknown` (`--uprobes`).
    pub protocol: &'a str,
    pub query: &'a str,
    pub truncated: bool,
}

#[derive(Serialize, JsonSchema)]
pub struct StatementRow<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// The statement normalized: constants replaced by `$n`, as pg_stat_statements shows it.
    pub query: &'a str,
    /// The backend, with `--per-backend`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub calls: u64,
    pub total_ns: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p95_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// Some call's text was cut at `--text-bytes` (statements sharing a prefix may be merged).
    pub truncated: bool,
}

#[derive(Serialize, JsonSchema)]
pub struct Totals {
    pub ts_ns: u64,
    /// The report's period: the interval, or the whole run in the summary.
    pub interval_ns: u64,
    /// Statements that finished in the period.
    pub calls: u64,
    /// Their latencies: a log2 histogram of microseconds.
    pub hist_log2_us: Vec<u64>,
    pub lost: Lost,
}

/// Statements not counted since the tool attached.
#[derive(Serialize, JsonSchema)]
pub struct Lost {
    /// The ring buffer was full when the statement finished.
    pub ringbuf_full: u64,
    /// The table of running statements was full when it began.
    pub context_full: u64,
    /// It had begun before the tool attached.
    pub began_before_attach: u64,
}
