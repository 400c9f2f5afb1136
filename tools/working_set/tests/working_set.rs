//! working_set against a real PostgreSQL: a sequential scan of a table and a pgbench -S run;
//! hits and reads per relation equal pg_statio's deltas, the scan's distinct blocks equal
//! the table's relpages, shared_buffers is the server's; a second run sampling one access in
//! ten estimates the same accesses; with a block table smaller than the table, the accesses
//! past it are counted as lost, not dropped.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use pgbpf_testkit::{exclusive, postgres::Postgres, require_root, schema, tool::Traced};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_working_set");

/// (hits, reads) per relation name.
type Statio = BTreeMap<String, (u64, u64)>;

/// pg_statio's heap and index block counts of the user relations, once every other backend
/// has left (a backend flushes its counts as it exits, before leaving pg_stat_activity).
fn statio(pg: &Postgres) -> Statio {
    pg.wait_other_backends_gone();
    pg.psql(
        "select relname, heap_blks_hit, heap_blks_read from pg_statio_user_tables \
         union all select indexrelname, idx_blks_hit, idx_blks_read from pg_statio_user_indexes",
    )
    .unwrap()
    .lines()
    .map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        let n = |i: usize| f[i].parse::<u64>().unwrap_or(0);
        (f[0].to_string(), (n(1), n(2)))
    })
    .collect()
}

/// (hits, reads, blocks of the main fork) per named relation, summed over forks.
fn ours(records: &[Value]) -> BTreeMap<String, (u64, u64, u64)> {
    let mut m = BTreeMap::new();
    for r in records.iter().filter(|r| r["type"] == "relation") {
        let Some(name) = r["name"].as_str() else {
            continue;
        };
        let e: &mut (u64, u64, u64) = m.entry(name.to_string()).or_default();
        e.0 += r["hits"].as_u64().unwrap();
        e.1 += r["reads"].as_u64().unwrap();
        if r["fork"] == "main" {
            e.2 += r["blocks"].as_u64().unwrap();
        }
    }
    m
}

/// The server's shared_buffers in bytes, as pg_settings has it.
fn shared_buffers_bytes(pg: &Postgres) -> u64 {
    pg.psql("select setting::bigint * 8192 from pg_settings where name = 'shared_buffers'")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn accesses_equal_pg_statio_and_a_scan_touches_relpages_blocks() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::with_pgss_and_pgbench().unwrap();
    let pm = pg.postmaster_pid().unwrap().to_string();
    // Autovacuum would add accesses pg_statio may not have yet when it is read.
    pg.psql("alter system set autovacuum = off").unwrap();
    pg.psql("select pg_reload_conf()").unwrap();
    pg.psql(
        "create table ws as select g as a, repeat('x', 200) as b from generate_series(1, 20000) g",
    )
    .unwrap();
    pg.psql("vacuum analyze ws").unwrap();
    let relpages: u64 = pg
        .psql("select relpages from pg_class where relname = 'ws'")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let shared_buffers = shared_buffers_bytes(&pg);
    let before = statio(&pg);
    let dsn = pg.tcp_conninfo("disable");
    let tool = Traced::start(BIN, &["-p", &pm, "--dsn", &dsn, "--json"]).unwrap();
    let sampled = Traced::start(BIN, &["-p", &pm, "--sample", "10", "--json"]).unwrap();
    pg.psql("set max_parallel_workers_per_gather = 0; select count(*) from ws")
        .unwrap();
    pg.pgbench(&["-S", "-n", "-c", "2", "-j", "2", "-t", "2000"])
        .unwrap();
    let sampled = sampled.stop().unwrap();
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(sampled.status.success(), "{}", sampled.stderr);
    let after = statio(&pg);
    let records = out.json();
    let kinds = schema::validate("working_set", &records);
    assert_eq!(kinds, ["bucket", "relation", "summary"], "record kinds");
    let ours = ours(&records);
    eprintln!("ours {ours:#?}\nstatio before {before:#?}\nafter {after:#?}");
    for name in ["ws", "pgbench_accounts", "pgbench_accounts_pkey"] {
        let (h0, r0) = before.get(name).copied().unwrap_or_default();
        let (h1, r1) = after[name];
        let (hits, reads, _) = ours[name];
        assert_eq!((hits, reads), (h1 - h0, r1 - r0), "{name}: (hits, reads)");
    }
    assert_eq!(ours["ws"].2, relpages, "the scan's distinct blocks");
    assert!(
        ours["pgbench_accounts"].0 + ours["pgbench_accounts"].1 >= 4000,
        "pgbench -S reads an account per transaction"
    );
    let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
    let n = |r: &Value, f: &str| r[f].as_u64().unwrap();
    assert_eq!(n(summary, "shared_buffers_bytes"), shared_buffers);
    assert_eq!(n(summary, "block_size"), 8192);
    let buckets: Vec<&Value> = records.iter().filter(|r| r["type"] == "bucket").collect();
    assert_eq!(buckets.len(), 5);
    let blocks: u64 = buckets.iter().map(|b| n(b, "blocks")).sum();
    let accesses: u64 = buckets.iter().map(|b| n(b, "accesses")).sum();
    assert_eq!(blocks, n(summary, "blocks"));
    assert_eq!(n(summary, "bytes"), blocks * 8192);
    assert_eq!(accesses, n(summary, "hits") + n(summary, "reads"));
    assert_eq!(summary["lost"]["blocks_full"], 0);
    // The scan's blocks were accessed once each (or a few times: hint bits, the catalog):
    // the table alone fills most of the first bucket.
    assert!(n(buckets[0], "blocks") >= relpages * 9 / 10, "{buckets:?}");
    // The sampled run, started after and stopped before, estimates about as many accesses.
    let sampled = sampled.json();
    schema::validate("working_set", &sampled);
    let estimate = sampled.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(n(estimate, "sample"), 10);
    let (exact, estimated) = (n(summary, "accesses"), n(estimate, "accesses"));
    eprintln!("accesses: {exact} counted, {estimated} estimated from one in ten");
    assert!(
        estimated <= exact + 20 && estimated * 10 >= exact * 8,
        "{estimated} accesses estimated from the sample, {exact} counted"
    );
}

#[test]
fn blocks_past_the_table_are_counted_as_lost() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start().unwrap();
    let pm = pg.postmaster_pid().unwrap().to_string();
    pg.psql(
        "create table ws as select g as a, repeat('x', 200) as b from generate_series(1, 5000) g",
    )
    .unwrap();
    let tool = Traced::start(BIN, &["-p", &pm, "--max-blocks", "50", "--json"]).unwrap();
    pg.psql("set max_parallel_workers_per_gather = 0; select count(*) from ws")
        .unwrap();
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    schema::validate("working_set", &records);
    let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
    let n = |r: &Value, f: &str| r[f].as_u64().unwrap();
    assert_eq!(n(summary, "blocks"), 50, "the block table's size");
    let lost = summary["lost"]["blocks_full"].as_u64().unwrap();
    let in_buckets: u64 = records
        .iter()
        .filter(|r| r["type"] == "bucket")
        .map(|b| n(b, "accesses"))
        .sum();
    assert!(lost > 100, "{lost} accesses past the table");
    assert_eq!(
        in_buckets + lost,
        n(summary, "hits") + n(summary, "reads"),
        "every access is in a bucket or lost"
    );
}

/// A server named by its data directory restarts with more shared buffers: once it is ready,
/// the summary sets the working set against the new server's shared_buffers (pg_settings),
/// not the one it had at attach.
#[test]
fn a_restarted_servers_shared_buffers_replace_the_old_ones() {
    require_root();
    let _lock = exclusive();
    let mut pg = Postgres::start().unwrap();
    let data = pg.dir.path().join("data");
    let mut tool = Traced::start(BIN, &["-D", data.to_str().unwrap(), "--json"]).unwrap();
    pg.restart_under(&mut tool, pg.port, &[("shared_buffers", "64MB")])
        .unwrap();
    let shared_buffers = shared_buffers_bytes(&pg);
    assert_eq!(shared_buffers, 64 << 20);
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    schema::validate("working_set", &records);
    let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(summary["shared_buffers_bytes"], shared_buffers);
}
