//! lwlocks' NDJSON records (docs/schema/lwlocks.json): in each report a `wait` row per
//! (tranche, mode, backend type, statement) and a `tranche` row per tranche; then the report's
//! `interval` or the run's `summary`. Field names follow `pgbpf_common::records`.

use lwlocks_ebpf::counter;
use pgbpf_common::{pg_probes::Lost, records::Scope};
use schemars::JsonSchema;
use serde::Serialize;

/// Every line lwlocks prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// The waits of one (tranche, mode, backend type, statement).
    Wait(Wait<'a>),
    /// The waits on one tranche, all modes, backends and statements together.
    Tranche(Tranche<'a>),
    /// `--hold`: the holds of one tranche and mode, every backend together.
    Hold(Hold<'a>),
    /// The waits from one stack (`--stack`), every mode, backend and statement together.
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
    /// The LWLock tranche's name (WALWrite, BufferContent, LockManager, ...).
    pub tranche: &'a str,
    /// The mode asked for, as the probe passes it: exclusive or shared.
    pub mode: &'a str,
    pub backend_type: &'a str,
    /// The statement its process was running (normalized), or "[no statement: <kind>]".
    pub query: &'a str,
    /// Sleeps on the lock.
    pub waits: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Wait durations: a log2 histogram of microseconds.
    pub hist_log2_us: Vec<u64>,
}

#[derive(Serialize, JsonSchema)]
pub struct Tranche<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// The LWLock tranche's name.
    pub tranche: &'a str,
    /// Sleeps on its locks, every mode, backend and statement together.
    pub waits: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Wait durations: a log2 histogram of microseconds.
    pub hist_log2_us: Vec<u64>,
}

#[derive(Serialize, JsonSchema)]
pub struct Hold<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// The LWLock tranche's name.
    pub tranche: &'a str,
    /// The mode it was taken in: exclusive or shared (wait_until_free is never a hold).
    pub mode: &'a str,
    /// Holds that ended in the period (from acquisition to release).
    pub holds: u64,
    pub total_ns: u64,
    /// The longest since the tool attached (the kernel keeps no per-period maximum).
    pub max_ns: u64,
    /// Hold durations: a log2 histogram of microseconds.
    pub hist_log2_us: Vec<u64>,
}

/// `--hold`: acquisitions and releases that could not be paired, since the tool attached.
#[derive(Serialize, JsonSchema)]
pub struct HoldLost {
    /// Locks taken while 20 were already held by the thread: not timed.
    pub held_full: u64,
    /// Releases without an open hold of their tranche (taken before the tool attached).
    pub release_unmatched: u64,
    /// Threads whose held locks could not be kept (the table of holders was full).
    pub holders_full: u64,
    /// Holds of a tranche and mode met when the table of hold times was full.
    pub holds_full: u64,
}

impl HoldLost {
    pub fn from_counters(kernel: &[u64]) -> HoldLost {
        let at = |i: u32| kernel.get(i as usize).copied().unwrap_or(0);
        HoldLost {
            held_full: at(counter::HELD_FULL),
            release_unmatched: at(counter::RELEASE_UNMATCHED),
            holders_full: at(counter::HOLDERS_FULL),
            holds_full: at(counter::HOLDS_FULL),
        }
    }

    /// The report's line.
    pub fn line(&self) -> String {
        format!(
            "holds not timed: {} (too many held at once), {} releases without their \
             acquisition, {} threads (too many holders), {} (hold table full)\n",
            self.held_full, self.release_unmatched, self.holders_full, self.holds_full
        )
    }
}

#[derive(Serialize, JsonSchema)]
pub struct Totals {
    pub ts_ns: u64,
    /// The report's period: the interval, or the whole run in the summary.
    pub interval_ns: u64,
    /// LWLock waits in the period.
    pub waits: u64,
    /// Their time together.
    pub total_ns: u64,
    /// Waits received from the kernel since the tool attached.
    pub events: u64,
    pub lost: Lost,
    /// `--hold`'s unpaired acquisitions and releases (null without it).
    pub holds_not_timed: Option<HoldLost>,
}
