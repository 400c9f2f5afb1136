//! cpu_wait's NDJSON records (docs/schema/cpu_wait.json): in each report a `backend` row per
//! process, a `statement` row per statement, a `reason` row per why and a `cgroup` row per
//! cgroup; then the report's `interval` or the run's `summary`. Field names follow
//! `pgbpf_common::records`.

use pgbpf_common::{pg_probes::Lost, records::Scope};
use schemars::JsonSchema;
use serde::Serialize;

/// Every line cpu_wait prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// One process's waits for a CPU.
    Backend(Backend<'a>),
    /// The waits of the processes while they ran one statement (or none).
    Statement(Statement<'a>),
    /// Stretches off the CPU by why they began.
    Reason(Reason<'a>),
    /// The waits of the processes in one cgroup (a container).
    Cgroup(Cgroup<'a>),
    /// Time off the CPU from one pair of stacks (`--stack`), per reason.
    Stack(pgbpf_common::stacks::StackRow<'a>),
    /// The end of an interval report.
    Interval(Totals),
    /// The end of the run.
    Summary(Totals),
}

/// Waits for a CPU and what goes with them, in every row kind but `reason`.
#[derive(Serialize, JsonSchema)]
pub struct Waits {
    /// Times a task was runnable (woken or preempted) and waited to run.
    pub runq_waits: u64,
    /// Their time together: run-queue latency.
    pub runq_ns: u64,
    /// The longest of them.
    pub runq_max_ns: u64,
    /// Run-queue latencies: a log2 histogram of microseconds.
    pub hist_log2_us: Vec<u64>,
    /// Preemptions: the task left the CPU while it could still run.
    pub involuntary: u64,
    /// Moves to another CPU.
    pub migrations: u64,
    /// Time off the CPU: asleep plus on a run queue.
    pub off_cpu_ns: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Backend<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub pid: u32,
    pub backend_type: &'a str,
    #[serde(flatten)]
    pub waits: Waits,
}

#[derive(Serialize, JsonSchema)]
pub struct Statement<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// The statement the process had when it left the CPU (normalized), or
    /// "[no statement: <kind>]".
    pub query: &'a str,
    #[serde(flatten)]
    pub waits: Waits,
}

#[derive(Serialize, JsonSchema)]
pub struct Reason<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// Why the task left the CPU: "preempted", "new process", the class of the wait event
    /// PostgreSQL had set (LWLock, Lock, BufferPin, Activity, Client, Extension, IPC, Timeout,
    /// IO), or without one "sleep" / "uninterruptible sleep".
    pub reason: &'a str,
    /// Stretches off the CPU that began so.
    pub times: u64,
    /// Their time asleep (until woken).
    pub asleep_ns: u64,
    /// Their time on a run queue after that (until running).
    pub runq_ns: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Cgroup<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// "podman:3f2a1b2c3d4e" for a container, else the cgroup v2 path.
    pub cgroup: &'a str,
    pub cgroup_id: u64,
    #[serde(flatten)]
    pub waits: Waits,
}

#[derive(Serialize, JsonSchema)]
pub struct Totals {
    pub ts_ns: u64,
    /// The report's period: the interval, or the whole run in the summary.
    pub interval_ns: u64,
    #[serde(flatten)]
    pub waits: Waits,
    /// Events received from the kernel since the tool attached.
    pub events: u64,
    pub lost: Lost,
    /// Tasks that ran again without their wakeup seen (that wait is not counted).
    pub wakeup_unseen: u64,
}
