//! One workload logged by a real server as stderr, csvlog and jsonlog at once
//! (log_statement = 'all', log_min_duration_statement = 0, connections and disconnections),
//! each log replayed by pg_replay into a second cluster: the same pg_stat_statements calls
//! as the original. Debian's pgreplay on the same csvlog: the same counts, except the typed
//! `$1 + $2` statement, which it sends untyped and the server refuses.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, path::Path, process::Command};

use pgbpf_testkit::{
    exclusive,
    postgres::{PgOptions, Postgres},
    require_root,
    tool::{Finished, run_tool},
};

const PG_REPLAY: &str = env!("CARGO_BIN_EXE_pg_replay");

/// psql as the cluster's superuser with nothing of this session logged.
fn unlogged_psql(pg: &Postgres, sql: &str) -> String {
    let out = Command::new("psql")
        .args(pg.conn_args())
        .args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .env(
            "PGOPTIONS",
            "-c log_statement=none -c log_min_duration_statement=-1",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn statement_calls(pg: &Postgres) -> BTreeMap<String, u64> {
    unlogged_psql(
        pg,
        "select regexp_replace(query, '\\s+', ' ', 'g') || E'\\x1f' || calls \
         from pg_stat_statements where query not like '%pg_stat_statements%' \
         and query not like '%pg_reload_conf%' and query not like 'alter system%'",
    )
    .lines()
    .filter_map(|l| l.split_once('\u{1f}'))
    .map(|(q, c)| (q.to_string(), c.trim().parse().unwrap()))
    .collect()
}

fn conninfo(pg: &Postgres) -> String {
    format!(
        "host={} port={} user=postgres dbname=postgres",
        pg.socket_dir.display(),
        pg.port
    )
}

fn replay(args: &[&str]) -> Finished {
    let out = run_tool(PG_REPLAY, args);
    eprintln!("pg_replay {args:?}:\n{}\n{}", out.stdout, out.stderr);
    out
}

const PSQL_SCRIPT: &str = "\
begin;
select 1;
savepoint s1;
select 1/0;
rollback to savepoint s1;
select
  2;
commit;
";

/// Typed parameters in text format (psycopg declares the types of Python ints).
const PSYCOPG_CLIENT: &str = "
import psycopg, sys
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    for i in range(3):
        c.execute('select %s + %s as sum', (i, 2)).fetchone()
    c.execute('select %s::text', ('it''s\\nmulti-line',)).fetchone()
";

#[test]
fn stderr_csvlog_and_jsonlog_replay_to_the_same_statements_and_pgreplay_fails_the_typed_one() {
    require_root();
    let _lock = exclusive();
    let setting = |k: &str, v: &str| (k.to_string(), v.to_string());
    let original = Postgres::start_with_pgbench(
        &PgOptions {
            pg_stat_statements: true,
            settings: vec![
                setting("logging_collector", "on"),
                setting("log_destination", "stderr,csvlog,jsonlog"),
                setting("log_filename", "pg"),
                setting("log_line_prefix", "%m|%u|%d|%c|"),
                setting("lc_messages", "C"),
            ],
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let target = Postgres::start_with_pgbench(
        &PgOptions {
            pg_stat_statements: true,
            ..Default::default()
        },
        1,
    )
    .unwrap();
    for set in [
        "log_statement = 'all'",
        "log_min_duration_statement = 0",
        "log_connections = on",
        "log_disconnections = on",
    ] {
        unlogged_psql(&original, &format!("alter system set {set}"));
    }
    unlogged_psql(&original, "select pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(500));
    unlogged_psql(&original, "select pg_stat_statements_reset()");
    // Select-only: pgreplay, which keeps the log's global order, stalls on TPC-B's row
    // locks between two clients (the capture tests replay TPC-B with pg_replay).
    for mode in ["simple", "extended", "prepared"] {
        original
            .pgbench(&["-n", "-S", "-M", mode, "-c", "2", "-t", "20"])
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("s.sql");
    std::fs::write(&script, PSQL_SCRIPT).unwrap();
    let psql = Command::new("psql")
        .args(original.conn_args())
        .args(["-X", "-q", "-d", "postgres", "-f"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(psql.status.success());
    let py = Command::new("/usr/bin/python3")
        .args(["-c", PSYCOPG_CLIENT, &conninfo(&original)])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let expected = statement_calls(&original);
    assert_eq!(expected.get("select $1 + $2 as sum"), Some(&3));
    // The collector writes behind.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let logs = original.dir.path().join("data/log");
    let target_s = conninfo(&target);
    for (file, format) in [
        ("pg", "stderr"),
        ("pg.csv", "csvlog"),
        ("pg.json", "jsonlog"),
    ] {
        unlogged_psql(&target, "select pg_stat_statements_reset()");
        let path = logs.join(file).display().to_string();
        let out = replay(&[
            "--target",
            &target_s,
            "--log-line-prefix",
            "%m|%u|%d|%c|",
            "--speed",
            "max",
            "--json",
            &path,
        ]);
        assert!(out.status.success(), "{format}");
        let records = out.json();
        let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
        assert_eq!(summary["input"]["format"], format);
        assert_eq!(summary["input"]["bad_lines"], 0, "{format}: {summary}");
        assert_eq!(summary["errors_original"], 1, "{format}: {summary}");
        assert_eq!(summary["errors_replay"], 1, "{format}: {summary}");
        assert_eq!(summary["new_errors"], 0, "{format}");
        assert_eq!(
            statement_calls(&target),
            expected,
            "{format}: pg_stat_statements calls"
        );
        // --check reads the same sessions and statements without a target.
        let check = replay(&[
            "--check",
            "--log-line-prefix",
            "%m|%u|%d|%c|",
            "--json",
            &path,
        ]);
        assert!(check.status.success(), "{format}: --check");
        let checked = check.json();
        let check_summary = checked.iter().find(|r| r["type"] == "summary").unwrap();
        assert_eq!(check_summary["check"], true);
        for field in ["sessions", "statements_original", "errors_original"] {
            assert_eq!(check_summary[field], summary[field], "{format}: {field}");
        }
        assert_eq!(check_summary["statements_replay"], 0);
        let original_calls = |records: &[serde_json::Value]| -> BTreeMap<String, u64> {
            records
                .iter()
                .filter(|r| r["type"] == "statement")
                .map(|r| {
                    let q = r["query"].as_str().unwrap().to_string();
                    (q, r["original"]["calls"].as_u64().unwrap())
                })
                .collect()
        };
        assert_eq!(
            original_calls(&checked),
            original_calls(&records),
            "{format}"
        );
    }

    // Debian's pgreplay on the csvlog into a third cluster (at its own pace: with -s 100 it
    // stalls "behind schedule" and never ends).
    let third = Postgres::start_with_pgbench(
        &PgOptions {
            pg_stat_statements: true,
            ..Default::default()
        },
        1,
    )
    .unwrap();
    unlogged_psql(&third, "select pg_stat_statements_reset()");
    let csv = logs.join("pg.csv");
    let out = Command::new("timeout")
        .args(["120", "pgreplay", "-c", "-h"])
        .arg(&third.socket_dir)
        .args(["-p", &third.port.to_string()])
        .arg(Path::new(&csv))
        .output()
        .unwrap();
    eprintln!(
        "pgreplay: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "pgreplay failed or did not end in 120 s"
    );
    let theirs = statement_calls(&third);
    let mut ours_without_typed = expected.clone();
    ours_without_typed.remove("select $1 + $2 as sum");
    assert_eq!(
        theirs, ours_without_typed,
        "pgreplay: the same statements but the typed one"
    );
    assert!(
        third.server_log().contains("operator is not unique"),
        "pgreplay's untyped $1 + $2 fails"
    );
}
