//! The NDJSON vocabulary every tool shares. Every line is one record of a tool's
//! `#[derive(Serialize, JsonSchema)]` types, tagged by `type`; the same name means the same
//! thing in every tool:
//!
//! - `type`: the record's kind; a run's last record is `summary`, an interval's `interval`.
//! - `ts_ns`: when it happened (or the report was made), in nanoseconds since the Unix epoch.
//! - every duration is an integer number of nanoseconds, named `*_ns` (`interval_ns`: the
//!   period a report covers, the whole run in a `summary`); log2 histograms are arrays of counts
//!   whose slot i holds values in [2^i, 2^(i+1)) of the unit their name ends in (`_log2_us`).
//! - sizes are bytes (`*_bytes`), or pages where the kernel counts pages (`*_pages`).
//! - `pid` is the process id (thread-group id) on the host, `tid` the thread's, `comm` the
//!   kernel's task name, `backend_type` PostgreSQL's process kind (`client backend`,
//!   `checkpointer`, ...), `query` a statement's text (`truncated` when it was cut),
//!   `container` a container's id, `cgroup` a cgroup path.
//! - `scope`: `interval` for a row of an interval report, `total` for the whole run.
//! - `lost`: what the kernel side could not record, by cause; never left out.

use schemars::JsonSchema;
use serde::Serialize;

/// What the names every tool shares mean: a field without a description of its own is
/// documented with these (the manuals' field tables, docs/schema/README.md).
pub const VOCABULARY: &[(&str, &str)] = &[
    ("type", "The record's kind."),
    (
        "ts_ns",
        "When it happened, or when the report was made: nanoseconds since the Unix epoch.",
    ),
    (
        "interval_ns",
        "The period the report covers: the interval, or the whole run (in a summary and in total rows).",
    ),
    (
        "scope",
        "`interval`: a row of an interval report; `total`: a row of the whole run's report.",
    ),
    ("pid", "The process id (thread-group id) on the host."),
    ("tid", "The thread id on the host."),
    (
        "comm",
        "The task's name as the kernel keeps it (15 characters at most).",
    ),
    (
        "backend_type",
        "PostgreSQL's kind of process (client backend, checkpointer, autovacuum worker, ...), or the process's name when it is not PostgreSQL.",
    ),
    ("query", "The statement's text."),
    ("truncated", "The text was cut."),
    ("container", "The container's id."),
    ("cgroup", "The cgroup v2 path (a container as runtime:id)."),
    (
        "cgroup_id",
        "The cgroup's v2 id (the inode of its directory).",
    ),
    ("duration_ns", "How long it took."),
    ("elapsed_ns", "How long it has been running."),
    ("total_ns", "The time of all of them together."),
    ("mean_ns", "The mean time."),
    ("max_ns", "The longest one."),
    ("p50_ns", "The median time."),
    ("p95_ns", "The 95th percentile."),
    ("p99_ns", "The 99th percentile."),
    ("calls", "How many there were."),
    (
        "lost",
        "What could not be counted since the tool attached, by cause (never left out).",
    ),
];

/// Which report a row belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The interval that just ended.
    Interval,
    /// The whole run.
    Total,
}

/// A `std::time::Duration` as the records' unit (integer nanoseconds).
pub fn ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A log2 histogram without its trailing empty slots.
pub fn trim_hist(slots: &[u64]) -> Vec<u64> {
    let used = slots.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
    slots[..used].to_vec()
}

/// The JSON Schema of a tool's records (`docs/schema/<tool>.json`), as pretty JSON. It
/// describes what the tool writes: an `Option` field is always there, null or not.
pub fn schema_of<T: JsonSchema>() -> String {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<T>();
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_lose_only_trailing_zeros() {
        assert_eq!(trim_hist(&[0, 3, 0, 1, 0, 0]), vec![0, 3, 0, 1]);
        assert!(trim_hist(&[0; 64]).is_empty());
    }

    #[test]
    fn scopes_are_lowercase() {
        assert_eq!(
            serde_json::to_string(&[Scope::Interval, Scope::Total]).unwrap(),
            r#"["interval","total"]"#
        );
    }
}
