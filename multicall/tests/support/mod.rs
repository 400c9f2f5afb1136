//! What the multicall tests share: the tools run by links named after them, their `--json`
//! output read back, pg_stat_statements' count of calls.

// Each test binary uses some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use pgbpf_testkit::postgres::Postgres;

pub const BIN: &str = env!("CARGO_BIN_EXE_pgbpf");

/// A link named `tool` to the multicall binary, in `dir` (made once).
pub fn tool_link(dir: &Path, tool: &str) -> PathBuf {
    let link = dir.join(tool);
    if !link.exists() {
        std::os::unix::fs::symlink(BIN, &link).unwrap();
    }
    link
}

/// The JSON records of a `--json` run's stdout.
pub fn records(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The `summary` record of a `--json` run.
pub fn summary(stdout: &str) -> serde_json::Value {
    records(stdout)
        .into_iter()
        .find(|r| r["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary in {stdout}"))
}

/// A count field of the run's `summary` record.
pub fn summary_count(stdout: &str, field: &str) -> u64 {
    summary(stdout)[field].as_u64().unwrap()
}

/// Every call pg_stat_statements has counted.
pub fn pgss_calls(pg: &Postgres) -> u64 {
    pg.psql("select sum(calls) from pg_stat_statements")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
