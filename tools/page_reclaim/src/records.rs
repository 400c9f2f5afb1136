//! page_reclaim's NDJSON records (docs/schema/page_reclaim.json): a `process` and a `cgroup`
//! row per reporting process and cgroup, each interval's `interval` record, and the run's
//! `summary`. Field names follow `pgbpf_common::records`.

use pgbpf_common::records::Scope;
use schemars::JsonSchema;
use serde::Serialize;

/// Every line page_reclaim prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// Reclaim by one process in one cgroup.
    Process(ProcessRow<'a>),
    /// Reclaim by the traced processes of one cgroup.
    Cgroup(CgroupRow<'a>),
    /// The end of an interval report: its totals.
    Interval(Totals<'a>),
    /// The end of the run: its totals, stall histograms and losses.
    Summary(Totals<'a>),
}

#[derive(Serialize, JsonSchema)]
pub struct ProcessRow<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    /// The report's period (the whole run for `total`).
    pub interval_ns: u64,
    pub pid: u32,
    pub comm: &'a str,
    /// The cgroup (v2 path) the process reclaimed in.
    pub cgroup: &'a str,
    pub cgroup_id: u64,
    /// Memory reclaimed: pages freed × the page size.
    pub reclaimed_bytes: u64,
    /// Pages freed by reclaim.
    pub reclaimed_pages: u64,
    /// Reclaim episodes: memory-cgroup plus direct.
    pub episodes: u64,
    /// Memory-cgroup reclaim episodes (a cgroup at its memory limit).
    pub memcg_episodes: u64,
    /// Direct reclaim episodes (the machine short of free memory).
    pub direct_episodes: u64,
    /// Time the process stalled in reclaim.
    pub stall_ns: u64,
    /// Its longest single stall since the tool attached.
    pub max_stall_ns: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct CgroupRow<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub cgroup: &'a str,
    pub cgroup_id: u64,
    /// Traced processes that reclaimed in it.
    pub processes: u64,
    /// Memory reclaimed: pages freed × the page size.
    pub reclaimed_bytes: u64,
    /// Pages freed by reclaim.
    pub reclaimed_pages: u64,
    /// Reclaim episodes: memory-cgroup plus direct.
    pub episodes: u64,
    /// Time tasks stalled in reclaim.
    pub stall_ns: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Totals<'a> {
    pub ts_ns: u64,
    /// The report's period: the interval, or the whole run in the summary.
    pub interval_ns: u64,
    /// What was traced: "all processes", "PID 4242", "container 3f2a... (podman, ...)".
    pub target: &'a str,
    /// Memory reclaimed: pages freed × the page size.
    pub reclaimed_bytes: u64,
    /// Pages freed by reclaim.
    pub reclaimed_pages: u64,
    /// Reclaim episodes: memory-cgroup plus direct.
    pub episodes: u64,
    /// Memory-cgroup reclaim episodes (a cgroup at its memory limit).
    pub memcg_episodes: u64,
    /// Direct reclaim episodes (the machine short of free memory).
    pub direct_episodes: u64,
    /// Time tasks stalled in reclaim.
    pub stall_ns: u64,
    /// The longest single stall since the tool attached.
    pub max_stall_ns: u64,
    /// The period's stall times: log2 histograms of microseconds.
    pub stall_hist_log2_us: StallHistograms,
    /// kswapd wake-ups on the whole machine in the period.
    pub kswapd_wakes: u64,
    /// Of those, the ones a traced task's allocation caused.
    pub kswapd_wakeups_by_target: u64,
    pub lost: Lost,
}

#[derive(Serialize, JsonSchema)]
pub struct StallHistograms {
    /// Memory-cgroup reclaim stalls.
    pub memcg: Vec<u64>,
    /// Direct reclaim stalls.
    pub direct: Vec<u64>,
}

/// Episodes not counted since the tool attached (in every record: losses accumulate).
#[derive(Serialize, JsonSchema)]
pub struct Lost {
    /// The kernel's tables were full.
    pub map_full: u64,
    /// The episode had begun before the tool attached.
    pub began_before_attach: u64,
}
