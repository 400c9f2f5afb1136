//! write_per_type's NDJSON records (docs/schema/write_per_type.json): in each report a
//! `write` row per backend type and kind of file; then the report's `interval` or the run's
//! `summary`. Field names follow `pgbpf_common::records`.

use pgbpf_common::records::Scope;
use schemars::JsonSchema;
use serde::Serialize;

use crate::kind::Kind;

/// Every line write_per_type prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// What one backend type wrote to one kind of file.
    Write(Write<'a>),
    /// The end of an interval report.
    Interval(Totals),
    /// The end of the run.
    Summary(Totals),
}

/// Writes and syncs of a set of files.
#[derive(Serialize, JsonSchema, Default)]
pub struct Io {
    /// Write syscalls (write, pwrite64, writev, pwritev, pwritev2) that wrote something.
    pub writes: u64,
    /// Bytes written: the syscalls' results (transferred, not requested).
    pub bytes: u64,
    /// fsync and fdatasync calls.
    pub fsyncs: u64,
    /// Their time together.
    pub fsync_ns: u64,
    /// The longest fsync of the files synced in the period (since the file was opened
    /// under trace).
    pub fsync_max_ns: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Write<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub backend_type: &'a str,
    pub kind: Kind,
    #[serde(flatten)]
    pub io: Io,
}

#[derive(Serialize, JsonSchema)]
pub struct Totals {
    pub ts_ns: u64,
    /// The report's period: the interval, or the whole run in the summary.
    pub interval_ns: u64,
    /// Every kind of file together (pipes and sockets apart: `not_file_bytes`).
    #[serde(flatten)]
    pub io: Io,
    /// Bytes written to pipes and sockets with write(2) (the logging collector's pipe).
    pub not_file_bytes: u64,
    /// Files opened by the traced processes since the tool attached (open events).
    pub events: u64,
    pub lost: Lost,
}

/// What the kernel side could not count, since the tool attached.
#[derive(Serialize, JsonSchema)]
pub struct Lost {
    /// Opens not sent (ring buffer full): their files' writes are classified by their
    /// descriptor's path at the report, or `unknown`.
    pub ringbuf_full: u64,
    /// Writes and syncs of files past the file table's size: not counted.
    pub files_full: u64,
    /// Syscalls whose entry could not be remembered: not counted.
    pub pending_full: u64,
    /// Opens not remembered (descriptor table full): classified as for ringbuf_full.
    pub fds_full: u64,
}
