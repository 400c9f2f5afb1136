//! working_set's NDJSON records (docs/schema/working_set.json): in each report a `bucket`
//! row per range of access counts and a `relation` row per relation fork; then the report's
//! `interval` or the run's `summary`. Field names follow `pgbpf_common::records`.

use pgbpf_common::records::Scope;
use schemars::JsonSchema;
use serde::Serialize;

/// Every line working_set prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// The blocks accessed a number of times in a range (1, 2-4, 5-49, 50-599, 600+).
    Bucket(Bucket),
    /// The accesses of one relation fork.
    Relation(Relation<'a>),
    /// The end of an interval report.
    Interval(Totals),
    /// The end of the run.
    Summary(Totals),
}

#[derive(Serialize, JsonSchema)]
pub struct Bucket {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// Fewest accesses of a block in the range.
    pub min_accesses: u64,
    /// Most accesses of a block in the range; absent for the last, open range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_accesses: Option<u64>,
    /// Distinct blocks accessed that many times.
    pub blocks: u64,
    /// Their size (blocks × block size).
    pub bytes: u64,
    /// Their accesses together.
    pub accesses: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Relation<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// Tablespace OID.
    pub tablespace: u32,
    /// Database OID (0: a shared catalog).
    pub database: u32,
    /// The relation's file node (its pg_class.relfilenode; 0 there for mapped catalogs).
    pub filenode: u32,
    /// Its name with --dsn, for relations of that database that still exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// main, fsm, vm or init.
    pub fork: &'a str,
    /// Found in the buffer pool (pg_statio's *_blks_hit).
    pub hits: u64,
    /// Read in or added (pg_statio's *_blks_read).
    pub reads: u64,
    /// Blocks added among the reads (the relation grew).
    pub extends: u64,
    /// Accesses through local buffers (a temporary table).
    pub local: u64,
    /// Distinct blocks accessed.
    pub blocks: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Totals {
    pub ts_ns: u64,
    /// The report's period: the interval, or the whole run in the summary.
    pub interval_ns: u64,
    /// Distinct blocks accessed: the working set.
    pub blocks: u64,
    /// The working set's size (blocks × block size).
    pub bytes: u64,
    /// Block size in bytes (the server's with --dsn, else PostgreSQL's default 8192).
    pub block_size: u64,
    /// shared_buffers in bytes, summed over the traced servers, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_buffers_bytes: Option<u64>,
    /// One access in this many was counted and the counts multiplied by it (`--sample`; 1:
    /// every access); blocks are then those the sample met.
    pub sample: u32,
    /// Accesses: hits and reads.
    pub accesses: u64,
    pub hits: u64,
    pub reads: u64,
    pub lost: Lost,
}

/// What the kernel side could not count, since the tool attached.
#[derive(Serialize, JsonSchema)]
pub struct Lost {
    /// Accesses to blocks past --max-blocks: in their relation's counts, not in the buckets.
    pub blocks_full: u64,
    /// Accesses past --max-blocks to relation forks past the relation table's size, and
    /// extends or local accesses of those: not counted at all.
    pub relations_full: u64,
}
