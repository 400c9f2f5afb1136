//! wal_per_query's NDJSON records (docs/schema/wal_per_query.json): in each report a
//! `statement` row per statement, a `backend` row per backend type and an `rmgr` row per
//! resource manager; then the report's `interval` or the run's `summary`. Field names follow
//! `pgbpf_common::records`.

use pgbpf_common::records::Scope;
use schemars::JsonSchema;
use serde::Serialize;

/// Every line wal_per_query prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// The WAL of one statement (normalized), every backend together.
    Statement(Statement<'a>),
    /// The WAL of one backend type's statements.
    Backend(Backend<'a>),
    /// The records of one resource manager.
    Rmgr(Rmgr<'a>),
    /// `--system`: the WAL one backend type wrote to pg_wal and synced.
    WalIo(WalIo<'a>),
    /// The end of an interval report.
    Interval(Totals),
    /// The end of the run.
    Summary(Totals),
}

/// WAL written by statements, as pg_stat_statements counts it (its wal_records, wal_fpi,
/// wal_bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Wal {
    /// Executions that wrote WAL.
    pub calls: u64,
    pub wal_records: u64,
    /// Full-page images among the records.
    pub wal_fpi: u64,
    pub wal_bytes: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Statement<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// The statement (normalized as pg_stat_statements does).
    pub query: &'a str,
    #[serde(flatten)]
    pub wal: Wal,
}

#[derive(Serialize, JsonSchema)]
pub struct Backend<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub backend_type: &'a str,
    #[serde(flatten)]
    pub wal: Wal,
}

#[derive(Serialize, JsonSchema)]
pub struct Rmgr<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// The resource manager (Heap, Btree, Transaction, ...; `other` for ids past the built-in
    /// ones).
    pub rmgr: &'a str,
    /// Its records written by statements (wal__insert during their execution).
    pub in_statements: u64,
    /// Its records written outside any statement's execution by the traced processes:
    /// commit records, vacuum, checkpoints.
    pub outside_statements: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct WalIo<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub backend_type: &'a str,
    /// write, pwrite64, writev, pwritev, pwritev2 calls on pg_wal files (segments being
    /// filled, and new segments zeroed) that wrote something.
    pub writes: u64,
    /// Bytes they wrote: whole pages, a partly filled page again at each flush.
    pub bytes: u64,
    pub write_ns: u64,
    /// The longest write in the period (since the process was first seen, for one whose
    /// longest is older).
    pub write_max_ns: u64,
    /// fsync and fdatasync calls on pg_wal files.
    pub fsyncs: u64,
    pub fsync_ns: u64,
    pub fsync_max_ns: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Totals {
    pub ts_ns: u64,
    /// The report's period: the interval, or the whole run in the summary.
    pub interval_ns: u64,
    /// All statements of the period together.
    #[serde(flatten)]
    pub wal: Wal,
    /// WAL records written outside statements in the period.
    pub outside_records: u64,
    /// Statements received from the kernel since the tool attached.
    pub events: u64,
    /// Statements of processes not located yet (their WAL is not counted).
    pub not_located: u64,
    pub lost: Lost,
}

/// What the kernel side could not count, since the tool attached.
#[derive(Serialize, JsonSchema)]
pub struct Lost {
    /// A statement's WAL did not fit in the ring buffer.
    pub ringbuf_full: u64,
    /// Too many statements executing at once to remember their start.
    pub running_full: u64,
    /// `--system`: pg_wal files whose open had no room in the table (their writes not
    /// counted).
    pub wal_fds_full: u64,
    /// `--system`: WAL writes and syncs of processes past the table of processes.
    pub wal_io_full: u64,
}
