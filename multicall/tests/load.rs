//! Load every connection-keeping tool must hold (issue 23): a minute of 500 clients each
//! opening a new connection per transaction (pgbench -C, redis-benchmark -k 0), with
//! query_latency, pgwire_trace and redis_trace attached together. Per-connection state must
//! be freed as connections end: each tool's resident memory at the end within 2 MiB of what
//! it was after 10 s (its BPF ring buffers' mapping aside: their pages are resident as far as
//! the kernel ever filled them, bounded by their size), its kernel hash maps no fuller at the end than then (no entry leaked
//! per connection), and its counts still equal the servers' own (pg_stat_statements, INFO
//! commandstats) with nothing lost.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use support::{pgss_calls, summary, tool_link};

use std::time::{Duration, Instant};

use pgbpf_testkit::{
    bpf_objects::{BpfObjects, hash_map_entries},
    exclusive,
    postgres::{PgOptions, Postgres},
    redis::Redis,
    require_root,
    tool::Traced,
};

/// How long the load runs; memory and maps are first read at `SETTLED`.
const LOAD: Duration = Duration::from_secs(60);
const SETTLED: Duration = Duration::from_secs(10);
const CLIENTS: &str = "500";

/// A traced tool and what it loaded into the kernel.
struct Under {
    name: &'static str,
    traced: Traced,
    maps: Vec<(u32, String)>,
}

/// Entries of each of the tool's hash maps now: (map name, entries).
fn occupancy(maps: &[(u32, String)]) -> Vec<(String, u64)> {
    maps.iter()
        .filter_map(|(id, name)| Some((name.clone(), hash_map_entries(*id)?)))
        .collect()
}

#[test]
fn a_minute_of_500_clients_reconnecting_leaves_memory_and_maps_flat() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with_pgbench(
        &PgOptions {
            pg_stat_statements: true,
            settings: vec![("max_connections".into(), "600".into())],
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let redis = Redis::start().unwrap();
    let pm = pg.postmaster_pid().unwrap().to_string();
    let redis_pid = redis.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let redis_calls = |r: &Redis| -> u64 { r.command_calls().unwrap().values().sum() };
    let (pg_before, redis_before) = (pgss_calls(&pg), redis_calls(&redis));
    let mut tools: Vec<Under> = vec![];
    for (name, args) in [
        ("query_latency", vec!["-p", &pm, "--json"]),
        ("pgwire_trace", vec!["-p", &pm, "--json", "--summary"]),
        ("redis_trace", vec!["-p", &redis_pid, "--json", "--summary"]),
    ] {
        let before = BpfObjects::now();
        let traced = Traced::start(tool_link(dir.path(), name).to_str().unwrap(), &args).unwrap();
        let maps = BpfObjects::now()
            .added_since(&before)
            .maps
            .into_iter()
            .collect();
        tools.push(Under { name, traced, maps });
    }
    let seconds = LOAD.as_secs().to_string();
    let pgbench = {
        let conn = pg.conn_args();
        let seconds = seconds.clone();
        std::thread::spawn(move || {
            std::process::Command::new("pgbench")
                .args(&conn)
                .args([
                    "-S", "-C", "-n", "-c", CLIENTS, "-j", "2", "-T", &seconds, "postgres",
                ])
                .output()
                .unwrap()
        })
    };
    let port = redis.port.to_string();
    let started = Instant::now();
    let benchmark = std::thread::spawn(move || {
        let mut runs = 0;
        // redis-benchmark takes a request count: runs until the minute is over.
        while started.elapsed() < LOAD {
            let out = std::process::Command::new("redis-benchmark")
                .args(["-h", "127.0.0.1", "-p", &port, "-c", CLIENTS, "-k", "0"])
                .args(["-t", "get", "-n", "20000", "-q"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            runs += 1;
        }
        runs
    });
    std::thread::sleep(SETTLED);
    let settled: Vec<(u64, Vec<(String, u64)>)> = tools
        .iter()
        .map(|t| {
            (
                t.traced.rss_without_bpf_maps_kib().unwrap(),
                occupancy(&t.maps),
            )
        })
        .collect();
    let pgbench = pgbench.join().unwrap();
    assert!(
        pgbench.status.success(),
        "{}",
        String::from_utf8_lossy(&pgbench.stderr)
    );
    let runs = benchmark.join().unwrap();
    // The last connections' ends reach the tools.
    std::thread::sleep(Duration::from_secs(2));
    // The first reading's own statement is counted by the second, not traced; the second's
    // is traced (the tools are still attached), not counted by itself: even.
    let (pg_truth, redis_truth) = (
        pgss_calls(&pg) - pg_before,
        redis_calls(&redis) - redis_before,
    );
    let tps = String::from_utf8_lossy(&pgbench.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("tps = ").map(str::to_string))
        .unwrap_or_default();
    eprintln!(
        "pgbench -C -c {CLIENTS}: {pg_truth} statements (tps = {tps}); redis-benchmark -k 0 -c \
         {CLIENTS}: {runs} runs, {redis_truth} commands"
    );
    let mut failures = vec![];
    for (t, (rss_settled, maps_settled)) in tools.into_iter().zip(settled) {
        let rss_end = t.traced.rss_without_bpf_maps_kib().unwrap();
        let maps_end = occupancy(&t.maps);
        let out = t.traced.stop().unwrap();
        assert!(out.status.success(), "{}: {}", t.name, out.stderr);
        let s = summary(&out.stdout);
        let (ours, truth) = match t.name {
            "query_latency" => (s["calls"].as_u64().unwrap(), pg_truth),
            "pgwire_trace" => (s["requests"].as_u64().unwrap(), pg_truth),
            _ => (s["commands"].as_u64().unwrap(), redis_truth),
        };
        eprintln!(
            "{}: RSS {rss_settled} KiB at {} s, {rss_end} KiB at the end; maps {maps_settled:?} \
             then {maps_end:?}; counted {ours} of {truth}; lost {}",
            t.name,
            SETTLED.as_secs(),
            s["lost"]
        );
        if rss_end > rss_settled + 2048 {
            failures.push(format!(
                "{}: RSS grew from {rss_settled} to {rss_end} KiB",
                t.name
            ));
        }
        for (name, then) in &maps_settled {
            let Some((_, now)) = maps_end.iter().find(|(n, _)| n == name) else {
                continue;
            };
            // Entries in flight at either moment (a few per client) are not a leak; one left
            // per connection would be thousands.
            if *now > then + 2 * 500 {
                failures.push(format!("{}: map {name} grew from {then} to {now}", t.name));
            }
        }
        if ours != truth {
            failures.push(format!("{}: counted {ours}, the server {truth}", t.name));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The rows of a `--json` run's total scope of `kind` (statement rows), and their calls.
fn statement_rows(stdout: &str, kind: &str) -> Vec<(String, u64)> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["type"] == kind && r["scope"] == "total")
        .map(|r| {
            (
                r["query"].as_str().unwrap_or_default().to_string(),
                r["calls"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn ten_thousand_distinct_statements_and_a_1_mb_one_keep_tables_bounded() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with(&PgOptions {
        pg_stat_statements: true,
        settings: vec![("pg_stat_statements.max".into(), "20000".into())],
        ..Default::default()
    })
    .unwrap();
    let pm = pg.postmaster_pid().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut tools = vec![];
    for (name, args, kind) in [
        ("query_latency", vec!["-p", &pm, "--json"], "statement"),
        (
            "pgwire_trace",
            vec!["-p", &pm, "--json", "--summary"],
            "statement",
        ),
        ("net_per_query", vec!["-p", &pm, "--json"], "statement"),
    ] {
        let traced = Traced::start(tool_link(dir.path(), name).to_str().unwrap(), &args).unwrap();
        let rss = traced.rss_without_bpf_maps_kib().unwrap();
        tools.push((name, traced, kind, rss));
    }
    let before = pgss_calls(&pg);
    // Ten thousand statements whose normalized texts differ (an alias each), one session.
    let script: String = (0..10_000)
        .map(|i| format!("select {i} as c{i};\n"))
        .collect();
    let big = format!("select length('{}');\n", "x".repeat(1 << 20));
    let file = dir.path().join("statements.sql");
    std::fs::write(&file, format!("{script}{big}")).unwrap();
    let out = std::process::Command::new("psql")
        .args(pg.conn_args())
        .args([
            "-X",
            "-q",
            "-o",
            "/dev/null",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "postgres",
            "-f",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let truth = pgss_calls(&pg) - before;
    let mut failures = vec![];
    for (name, traced, kind, rss_start) in tools {
        let rss_end = traced.rss_without_bpf_maps_kib().unwrap();
        let out = traced.stop().unwrap();
        assert!(out.status.success(), "{name}: {}", out.stderr);
        let rows = statement_rows(&out.stdout, kind);
        let calls: u64 = rows.iter().map(|(_, c)| c).sum();
        let other = rows
            .iter()
            .find(|(q, _)| q == pgbpf_common::bounded::OTHER_STATEMENTS)
            .map_or(0, |(_, c)| *c);
        let big_row = rows.iter().any(|(q, _)| q.starts_with("select length("));
        eprintln!(
            "{name}: {} rows, {calls} calls ({other} in {:?}), the 1 MB statement's row: {big_row}; \
             RSS {rss_start} -> {rss_end} KiB (ring buffers aside)",
            rows.len(),
            pgbpf_common::bounded::OTHER_STATEMENTS
        );
        if rows.len() > pgbpf_common::bounded::MAX_ROWS + 1 {
            failures.push(format!("{name}: {} rows", rows.len()));
        }
        if other == 0 || !big_row {
            failures.push(format!("{name}: no other row or no 1 MB statement row"));
        }
        // Every call is in a row: the server's count holds the file's statements and the
        // first reading of pg_stat_statements; the tools saw the second reading too (it is
        // not in its own count); net_per_query also has a row of each of the three
        // connections' own traffic.
        let connections = if name == "net_per_query" { 3 } else { 0 };
        if calls != truth + 1 + connections {
            failures.push(format!(
                "{name}: {calls} calls in the rows, the server {truth}"
            ));
        }
        if rss_end > rss_start + 8 * 1024 {
            failures.push(format!(
                "{name}: RSS grew from {rss_start} to {rss_end} KiB"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
