//! spin_sema's NDJSON records (docs/schema/spin_sema.json): in each report a `wait` row per
//! (kind, site, backend type, statement) and a `kind` row per kind; then the report's
//! `interval` or the run's `summary`. Field names follow `pgbpf_common::records`.

use pgbpf_common::{pg_probes::Lost, records::Scope};
use schemars::JsonSchema;
use serde::Serialize;

/// Every line spin_sema prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// The waits of one (kind, site, backend type, statement).
    Wait(Wait<'a>),
    /// The waits of one kind, every site, backend and statement together.
    Kind(Kind<'a>),
    /// The waits from one stack (`--stack`), every site, backend and statement together.
    Stack(pgbpf_common::stacks::StackRow<'a>),
    /// The end of an interval report.
    Interval(Totals),
    /// The end of the run.
    Summary(Totals),
}

#[derive(Serialize, JsonSchema)]
pub struct Wait<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// spinlock (s_lock: spun until free), semaphore (PGSemaphoreLock: slept on the
    /// process's semaphore) or futex (a futex(2) wait).
    pub kind: &'a str,
    /// spinlock: the function, source file and line that took it ("StartupXLOG xlog.c:123");
    /// futex: the operation (FUTEX_WAIT_BITSET_PRIVATE, ...); semaphore: PGSemaphoreLock.
    pub site: &'a str,
    pub backend_type: &'a str,
    /// The statement its process was running (normalized), or "[no statement: <kind>]".
    pub query: &'a str,
    pub waits: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// spinlock: the sleeps between spin rounds (s_lock's delays), all waits together.
    pub delays: u64,
    /// Wait durations: a log2 histogram of microseconds.
    pub hist_log2_us: Vec<u64>,
}

#[derive(Serialize, JsonSchema)]
pub struct Kind<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// spinlock, semaphore or futex.
    pub kind: &'a str,
    pub waits: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Wait durations: a log2 histogram of microseconds.
    pub hist_log2_us: Vec<u64>,
}

#[derive(Serialize, JsonSchema)]
pub struct Totals {
    pub ts_ns: u64,
    /// The report's period: the interval, or the whole run in the summary.
    pub interval_ns: u64,
    /// Waits of every kind in the period.
    pub waits: u64,
    /// Their time together.
    pub total_ns: u64,
    /// Waits received from the kernel since the tool attached.
    pub events: u64,
    pub lost: Lost,
}
