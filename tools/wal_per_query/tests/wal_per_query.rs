//! wal_per_query against a real PostgreSQL with pg_stat_statements: pgbench -N's statements
//! wrote, per statement, the WAL records, full-page images and bytes pg_stat_statements counts
//! for them; the commits' records come outside the statements, one per transaction.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use pgbpf_testkit::{exclusive, postgres::Postgres, require_root, schema, tool::Traced, wchar};
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

/// pg_stat_wal's (wal_bytes, wal_write, wal_sync).
fn pg_stat_wal(pg: &Postgres) -> (u64, u64, u64) {
    let row = pg
        .psql("select wal_bytes, wal_write, wal_sync from pg_stat_wal")
        .unwrap();
    let f: Vec<u64> = row.trim().split('|').map(|v| v.parse().unwrap()).collect();
    (f[0], f[1], f[2])
}

#[test]
fn system_wal_writes_equal_the_walwriters_io_and_cover_pg_stat_wal() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with_pgbench(
        &pgbpf_testkit::postgres::PgOptions {
            settings: vec![("fsync".into(), "on".into())],
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let pm = pg.postmaster_pid().unwrap().to_string();
    let walwriter: u32 = pg
        .psql("select pid from pg_stat_activity where backend_type = 'walwriter'")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (bytes0, writes0, syncs0) = pg_stat_wal(&pg);
    let walwriter0 = wchar(walwriter);
    let tool = Traced::start(BIN, &["-p", &pm, "--system", "--json"]).unwrap();
    pg.pgbench(&["-N", "-n", "-c", "2", "-j", "2", "-t", "250"])
        .unwrap();
    // Asynchronous commits: the walwriter writes and syncs their WAL.
    pg.psql("alter database postgres set synchronous_commit = off")
        .unwrap();
    pg.pgbench(&["-N", "-n", "-c", "2", "-j", "2", "-t", "250"])
        .unwrap();
    // The walwriter reports its WAL statistics every cycle (wal_writer_delay, 200 ms).
    std::thread::sleep(std::time::Duration::from_millis(600));
    let walwriter_written = wchar(walwriter) - walwriter0;
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let (bytes1, writes1, syncs1) = pg_stat_wal(&pg);
    let records = out.json();
    let kinds = schema::validate("wal_per_query", &records);
    assert!(kinds.contains(&"wal_io".to_string()), "{kinds:?}");
    let io = |backend: &str, f: &str| -> u64 {
        records
            .iter()
            .filter(|r| r["type"] == "wal_io" && r["scope"] == "total")
            .filter(|r| r["backend_type"] == backend)
            .map(|r| r[f].as_u64().unwrap())
            .sum()
    };
    let all = |f: &str| -> u64 {
        records
            .iter()
            .filter(|r| r["type"] == "wal_io" && r["scope"] == "total")
            .map(|r| r[f].as_u64().unwrap())
            .sum()
    };
    eprintln!(
        "wal_io: {:#?}\npg_stat_wal: bytes {}, writes {}, syncs {}; walwriter wchar {}",
        records
            .iter()
            .filter(|r| r["type"] == "wal_io")
            .collect::<Vec<_>>(),
        bytes1 - bytes0,
        writes1 - writes0,
        syncs1 - syncs0,
        walwriter_written
    );
    // The walwriter writes nothing but WAL.
    assert!(walwriter_written > 0, "the asynchronous commits' WAL");
    assert_eq!(io("walwriter", "bytes"), walwriter_written, "walwriter");
    // Each synchronous commit flushes its WAL: the backends' syncs, 500 at most (group
    // commits), and a few of the asynchronous ones' (a full WAL buffer page).
    let commits = io("client backend", "fsyncs");
    assert!((250..=550).contains(&commits), "{commits} commit syncs");
    // pg_stat_wal counts XLogWrite's writes and syncs; the syscalls add new segments'
    // zeroing (and its sync), and a write that wraps around the WAL buffers is two.
    let (syncs, writes) = (all("fsyncs"), all("writes"));
    assert!(
        syncs >= syncs1 - syncs0 && syncs - (syncs1 - syncs0) <= io("walwriter", "fsyncs") + 5,
        "{syncs} syncs, pg_stat_wal {}",
        syncs1 - syncs0
    );
    assert!(writes >= writes1 - writes0, "{writes} writes");
    assert!(all("bytes") >= bytes1 - bytes0, "whole pages written");
}
