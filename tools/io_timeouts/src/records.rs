//! io_timeouts' NDJSON records (docs/schema/io_timeouts.json): with `--each` a `pause` per
//! throttling pause or wait as it happens; in each report a `dirty` and a `reclaim` row per
//! (process, statement), a `writeback` row per (device, reason), with `--block` a `block` row
//! per process; then the report's `interval` or the run's `summary`. Field names follow
//! `pgbpf_common::records`.

use pgbpf_common::records::Scope;
use schemars::JsonSchema;
use serde::Serialize;

/// Every line io_timeouts prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// One dirty-page pause or reclaim throttling wait, as it happened (`--each`).
    Pause(Pause<'a>),
    /// Dirty-page throttling of one process while it ran one statement.
    Dirty(Dirty<'a>),
    /// Reclaim throttling of one process while it ran one statement.
    Reclaim(Reclaim<'a>),
    /// Pages the flusher threads wrote to one device for one reason (all processes).
    Writeback(Writeback<'a>),
    /// Block requests of one process (`--block`).
    Block(Block<'a>),
    /// The end of an interval report.
    Interval(Totals),
    /// The end of the run.
    Summary(Totals),
}

/// Why a task was put to sleep.
#[derive(Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PauseCause {
    /// balance_dirty_pages: the task dirtied pages faster than they were written back.
    DirtyPages,
    /// Reclaim throttling (mm_vmscan_throttled).
    Reclaim,
}

#[derive(Serialize, JsonSchema)]
pub struct Pause<'a> {
    pub ts_ns: u64,
    pub cause: PauseCause,
    pub pid: u32,
    pub tid: u32,
    pub comm: &'a str,
    pub duration_ns: u64,
    /// The statement its process was running (normalized), or "[no statement: <kind>]".
    pub query: &'a str,
}

#[derive(Serialize, JsonSchema)]
pub struct Dirty<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub pid: u32,
    pub comm: &'a str,
    pub query: &'a str,
    /// Dirty-page throttling pauses.
    pub pauses: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// The sum of the kernel's estimated dirtying periods (`period` of each pause).
    pub period_sum_ns: u64,
    /// The most dirty pages the kernel saw at a pause.
    pub max_dirty_pages: u64,
    /// The dirty limit at the last pause.
    pub limit_pages: u64,
    /// The backing device (major:minor) of the last pause.
    pub bdi: &'a str,
}

#[derive(Serialize, JsonSchema)]
pub struct Reclaim<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub pid: u32,
    pub comm: &'a str,
    pub query: &'a str,
    /// Reclaim throttling waits.
    pub waits: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// The throttling reasons seen, `|`-separated: writeback, isolated, noprogress, congested.
    pub reasons: String,
}

#[derive(Serialize, JsonSchema)]
pub struct Writeback<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// The backing device (major:minor).
    pub bdi: &'a str,
    /// The kernel's reason: background, vmscan, sync, periodic, ...
    pub reason: &'a str,
    /// Writeback works done.
    pub works: u64,
    /// Pages written.
    pub pages: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Block<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub pid: u32,
    pub comm: &'a str,
    /// Block requests completed.
    pub requests: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Requests that completed with an error.
    pub errors: u64,
    /// Request latency (issue to completion): a log2 histogram of microseconds.
    pub hist_log2_us: Vec<u64>,
}

#[derive(Serialize, JsonSchema)]
pub struct Totals {
    pub ts_ns: u64,
    /// The report's period: the interval, or the whole run in the summary.
    pub interval_ns: u64,
    /// Dirty-page throttling pauses.
    pub pauses: u64,
    /// Reclaim throttling waits.
    pub reclaim_waits: u64,
    /// Pages the flusher threads wrote.
    pub writeback_pages: u64,
    /// Events received from the kernel since the tool attached.
    pub events: u64,
    pub lost: Lost,
}

/// Events not received since the tool attached.
#[derive(Serialize, JsonSchema)]
pub struct Lost {
    /// The ring buffer was full.
    pub ringbuf_full: u64,
}
