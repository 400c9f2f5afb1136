//! wal_per_query against a real PostgreSQL with pg_stat_statements: pgbench -N's statements
//! wrote, per statement, the WAL records, full-page images and bytes pg_stat_statements counts
//! for them; the commits' records come outside the statements, one per transaction.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use pgbpf_testkit::{exclusive, postgres::Postgres, require_root, schema, tool::Traced};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_wal_per_query");

/// (records, fpi, bytes) per statement text.
type Wal = BTreeMap<String, (u64, u64, u64)>;

#[test]
fn pgbench_statements_wal_equals_pg_stat_statements() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::with_pgss_and_pgbench().unwrap();
    let pm = pg.postmaster_pid().unwrap().to_string();
    pg.psql(
        "create table wt (a int); create function f() returns void language plpgsql as \
         $$ begin insert into wt select generate_series(1, 10); end $$",
    )
    .unwrap();
    // Full-page images too: the first change of each page after a checkpoint.
    pg.psql("checkpoint").unwrap();
    pg.psql("select pg_stat_statements_reset()").unwrap();
    let tool = Traced::start(BIN, &["-p", &pm, "--json"]).unwrap();
    // A statement that fails (its execution never ends), then one that writes; a function's
    // statements count in the statement that called it.
    let script = "insert into wt values (1 / 0);\n\
                  insert into wt select generate_series(1, 100);\n\
                  select f();\n";
    // One session, going on after the error (psql without ON_ERROR_STOP).
    let mut psql = std::process::Command::new("psql")
        .args(pg.conn_args())
        .args(["-X", "-q", "-d", "postgres"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    psql.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = psql.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("division by zero"), "{stderr}");
    pg.pgbench(&["-N", "-n", "-c", "2", "-j", "2", "-t", "500"])
        .unwrap();
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    let kinds = schema::validate("wal_per_query", &records);
    assert_eq!(
        kinds,
        ["statement", "backend", "rmgr", "summary"],
        "record kinds"
    );
    let ours: Wal = records
        .iter()
        .filter(|r| r["type"] == "statement")
        .map(|r| {
            let n = |f: &str| r[f].as_u64().unwrap();
            (
                r["query"].as_str().unwrap().to_string(),
                (n("wal_records"), n("wal_fpi"), n("wal_bytes")),
            )
        })
        .collect();
    let theirs: Wal = pg
        .psql(
            // Top-level statements: a function's own are counted in the statement that
            // called it (the test server tracks nested statements apart too).
            "select query, wal_records, wal_fpi, wal_bytes from pg_stat_statements \
             where toplevel and wal_records > 0 and query not like '%pg_stat_statements%'",
        )
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let n = |i: usize| f[i].parse::<u64>().unwrap();
            (f[0].to_string(), (n(1), n(2), n(3)))
        })
        .collect();
    eprintln!("ours {ours:#?}\npg_stat_statements {theirs:#?}");
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "the statements that wrote WAL"
    );
    assert_eq!(ours["select f()"].0, 10, "the function's ten inserts");
    assert_eq!(
        ours["insert into wt select generate_series($1, $2)"].0, 100,
        "counted after the failed statement"
    );
    for (q, (records, fpi, bytes)) in &ours {
        let (r, f, b) = theirs[q];
        assert_eq!((*records, *fpi), (r, f), "{q}");
        assert!(
            bytes.abs_diff(b) * 50 <= b,
            "{q}: {bytes} bytes, {b} in pgss"
        );
    }
    let update = ours
        .iter()
        .find(|(q, _)| q.starts_with("UPDATE pgbench_accounts"))
        .unwrap();
    assert!(update.1.1 > 0, "no full-page images after the checkpoint");
    // Each of the 1000 transactions commits outside its statements: a Transaction record.
    let rmgr = |name: &str| -> &Value {
        records
            .iter()
            .find(|r| r["type"] == "rmgr" && r["rmgr"] == name)
            .unwrap_or_else(|| panic!("no {name} row"))
    };
    let commits = rmgr("Transaction")["outside_statements"].as_u64().unwrap();
    assert!((1000..1010).contains(&commits), "{commits} commit records");
    // The records per resource manager add up to the statements'.
    let in_statements: u64 = records
        .iter()
        .filter(|r| r["type"] == "rmgr")
        .map(|r| r["in_statements"].as_u64().unwrap())
        .sum();
    let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(summary["wal_records"].as_u64(), Some(in_statements));
    assert_eq!(summary["lost"]["ringbuf_full"], 0);
    assert_eq!(summary["not_located"], 0);
}
