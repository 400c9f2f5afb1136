//! locks' NDJSON records (docs/schema/locks.json): with `--each` a `lock_wait` per wait as it
//! ends; a `deadlock` as it is found; in each report a `wait` row per (lock type, relation,
//! mode, backend type, statement); then the report's `interval` or the run's `summary`. Field
//! names follow `pgbpf_common::records`.

use pgbpf_common::{pg_probes::Lost, records::Scope};
use schemars::JsonSchema;
use serde::Serialize;

/// Every line locks prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// One wait, as it ended (`--each`).
    LockWait(LockWait<'a>),
    /// A deadlock, as the backend that found it reported it.
    Deadlock(Deadlock<'a>),
    /// The waits of one (lock type, relation, mode, backend type, statement).
    Wait(Wait<'a>),
    /// The waits from one stack (`--stack`), every lock, mode, backend and statement
    /// together.
    Stack(pgbpf_common::stacks::StackRow<'a>),
    /// The end of an interval report.
    Interval(Totals),
    /// The end of the run.
    Summary(Totals),
}

#[derive(Serialize, JsonSchema)]
pub struct LockWait<'a> {
    pub ts_ns: u64,
    pub pid: u32,
    pub backend_type: &'a str,
    /// pg_locks' locktype: relation, tuple, transactionid, advisory, ...
    pub lock_type: &'a str,
    /// The lock in full: "transaction 1234", "tuple (0,1) of relation 5/16397", ...
    pub lock: &'a str,
    /// pg_locks' mode: AccessShareLock ... AccessExclusiveLock.
    pub mode: &'a str,
    /// The LOCKTAG's four fields as the probe gave them (their meaning depends on the type:
    /// database and relation OIDs, block and offset, transaction id, ...).
    pub fields: [u32; 4],
    pub duration_ns: u64,
    pub query: &'a str,
}

/// A wait in progress when a deadlock was found.
#[derive(Serialize, JsonSchema)]
pub struct Waiter<'a> {
    pub pid: u32,
    pub backend_type: &'a str,
    pub lock: &'a str,
    pub mode: &'a str,
    /// How long it had waited when the deadlock was found.
    pub elapsed_ns: u64,
    pub query: &'a str,
}

#[derive(Serialize, JsonSchema)]
pub struct Deadlock<'a> {
    pub ts_ns: u64,
    /// The backend that found the deadlock (its statement is cancelled with an error).
    pub pid: u32,
    pub backend_type: &'a str,
    pub query: &'a str,
    /// The lock it was waiting for.
    pub lock: &'a str,
    pub mode: &'a str,
    /// The other waits in progress at that moment (the other members of the cycle among
    /// them), longest first.
    pub waiting: Vec<Waiter<'a>>,
}

#[derive(Serialize, JsonSchema)]
pub struct Wait<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub lock_type: &'a str,
    /// The database's OID, for relation, extend, page and tuple locks.
    pub database: Option<u32>,
    /// The relation's OID, for relation, extend, page and tuple locks.
    pub relation: Option<u32>,
    /// Its name (schema-qualified outside public) with --dsn, for relations of the
    /// connection's database.
    pub relation_name: Option<String>,
    pub mode: &'a str,
    pub backend_type: &'a str,
    pub query: &'a str,
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
    /// Lock waits that ended in the period.
    pub waits: u64,
    /// Their time together.
    pub total_ns: u64,
    /// Deadlocks found in the period.
    pub deadlocks: u64,
    /// Events received from the kernel since the tool attached.
    pub events: u64,
    pub lost: Lost,
}
