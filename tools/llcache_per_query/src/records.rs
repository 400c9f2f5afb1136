//! llcache_per_query's NDJSON records (docs/schema/llcache_per_query.json): a `row` per
//! (process, statement, CPU) in each report, then the report's `interval` or the run's
//! `summary`. Field names follow `pgbpf_common::records`.

use std::collections::BTreeMap;

use pgbpf_common::records::Scope;
use schemars::JsonSchema;
use serde::Serialize;

/// Every line llcache_per_query prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// The samples of one process, running one statement (or between statements), on one CPU.
    Row(Row<'a>),
    /// The end of an interval report.
    Interval(Totals),
    /// The end of the run.
    Summary(Totals),
}

/// Samples of one event, by the event's name (`cache-misses`, `cpu-clock`, ...).
pub type EventCounts = BTreeMap<&'static str, EventCount>;

#[derive(Serialize, JsonSchema)]
pub struct EventCount {
    /// Samples taken.
    pub samples: u64,
    /// One sample was taken every `period` events (nanoseconds of CPU time for cpu-clock).
    pub period: u64,
    /// samples × period: the events (or, for cpu-clock, nanoseconds of CPU time) estimated.
    pub estimate: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Row<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub pid: u32,
    /// The CPU the samples were taken on.
    pub cpu: u32,
    /// The statement, normalized; "[no statement: <process kind>]" between statements,
    /// "[statement not read]" before the process's statement could be located.
    pub query: &'a str,
    /// The samples fell inside a statement (not between statements).
    pub statement: bool,
    /// The statement's text was cut at `--text-bytes`.
    pub truncated: bool,
    /// Per sampled event: samples, period and estimate.
    pub events: EventCounts,
    /// The cache hit ratio in percent, when cache-references and cache-misses are sampled.
    pub hit_pct: Option<f64>,
}

#[derive(Serialize, JsonSchema)]
pub struct Totals {
    pub ts_ns: u64,
    /// The report's period: the interval, or the whole run in the summary.
    pub interval_ns: u64,
    /// Samples of every event in the period.
    pub samples: u64,
    /// Per sampled event: samples, period and estimate.
    pub events: EventCounts,
    /// The cache hit ratio in percent, when cache-references and cache-misses are sampled.
    pub hit_pct: Option<f64>,
    pub lost: Lost,
}

/// Samples and statements not counted since the tool attached.
#[derive(Serialize, JsonSchema)]
pub struct Lost {
    /// The kernel's sample map was full.
    pub map_full: u64,
    /// `--usdt`: the table of running statements was full.
    pub context_full: u64,
    /// `--usdt`: the statement had begun before the tool attached.
    pub began_before_attach: u64,
    /// The process's statement could not be read at the sample.
    pub statement_not_read: u64,
}
