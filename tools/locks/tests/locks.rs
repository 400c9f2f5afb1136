//! locks against a real PostgreSQL: a row held by one transaction while another updates it
//! (the wait timed against the test's own clock, the lock checked against pg_locks while it
//! waits), and a deadlock of two transactions (the finder and the other waiter checked
//! against the server log's DETAIL, which names both processes).

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pgbpf_testkit::{
    exclusive,
    postgres::{PgOptions, Postgres},
    require_root, schema, stacks,
    tool::{Traced, run_tool},
};

const BIN: &str = env!("CARGO_BIN_EXE_locks");
const UPDATE_1: &str = "update pgbench_accounts set abalance = abalance + 1 where aid = 1";
const UPDATE_2: &str = "update pgbench_accounts set abalance = abalance + 1 where aid = 2";

fn cluster() -> Postgres {
    let settings = vec![("log_line_prefix".to_string(), "%p ".to_string())];
    Postgres::start_with_pgbench(
        &PgOptions {
            settings,
            ..Default::default()
        },
        1,
    )
    .unwrap()
}

#[test]
fn a_row_lock_wait_is_timed_and_named_as_pg_locks_shows_it() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let pm = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(BIN, &["-p", &pm, "--each", "--json"]).unwrap();
    let with_stacks = Traced::start(BIN, &["-p", &pm, "--json", "--stack"]).unwrap();
    let mut holder = pg.session().unwrap();
    holder.run("begin").unwrap();
    holder.run(UPDATE_1).unwrap();
    // The waiter's backend lives on until the tools have stopped (its stack is read then).
    let mut waiting = pg.session().unwrap();
    let (waiter, xid, seen, released) = std::thread::scope(|s| {
        let blocked = s.spawn(|| waiting.run(UPDATE_1));
        // The waiter as pg_locks shows it: a ShareLock on the holder's transaction id.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (waiter, xid, seen) = loop {
            let row = pg
                .psql(
                    "select pid, transactionid, mode from pg_locks \
                     where not granted and locktype = 'transactionid'",
                )
                .unwrap();
            if let Some(line) = row.lines().next() {
                let f: Vec<&str> = line.split('|').collect();
                assert_eq!(f[2], "ShareLock", "{line}");
                break (
                    f[0].parse::<u32>().unwrap(),
                    f[1].parse::<u32>().unwrap(),
                    Instant::now(),
                );
            }
            assert!(Instant::now() < deadline, "the update never waited");
        };
        std::thread::sleep(Duration::from_secs(1));
        holder.run("commit").unwrap();
        let released = Instant::now();
        blocked.join().unwrap().unwrap();
        (waiter, xid, seen, released)
    });
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    let kinds = schema::validate("locks", &records);
    assert_eq!(kinds, ["lock_wait", "wait", "summary"], "record kinds");
    let waits: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "lock_wait")
        .collect();
    assert_eq!(waits.len(), 1, "{waits:?}");
    let w = waits[0];
    assert_eq!(w["pid"].as_u64(), Some(u64::from(waiter)));
    assert_eq!(w["lock_type"], "transactionid");
    assert_eq!(w["mode"], "ShareLock");
    assert_eq!(
        w["fields"][0].as_u64(),
        Some(u64::from(xid)),
        "the xid pg_locks shows"
    );
    assert_eq!(w["lock"], format!("transaction {xid}"));
    assert!(
        w["query"]
            .as_str()
            .unwrap()
            .starts_with("update pgbench_accounts set abalance"),
        "{w}"
    );
    // It began before pg_locks showed it and ended when the holder committed: at least the
    // second the holder kept the row after that, at most until its commit returned.
    let ns = w["duration_ns"].as_u64().unwrap();
    let most = (released - seen).as_nanos() as u64 + 50_000_000;
    assert!(
        (1_000_000_000..=most).contains(&ns),
        "waited {ns} ns; 1 s to {most} ns expected"
    );
    let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(summary["waits"], 1);
    assert_eq!(summary["deadlocks"], 0);
    assert_eq!(summary["lost"]["ringbuf_full"], 0);
    // Where it waited: the update's wait for the holder's transaction.
    let records = with_stacks.stop().unwrap().json();
    let kinds = schema::validate("locks", &records);
    assert_eq!(kinds, ["wait", "stack", "summary"], "record kinds");
    stacks::assert_stacks_cover(&records, "wait", "lock_type", "waits", &[]);
    let stack = stacks::frames(stacks::heaviest(&records, "transactionid"), "user_stack");
    stacks::assert_in_order(
        &stack,
        &["XactLockTableWait", "heap_update", "standard_ExecutorRun"],
    );
}

#[test]
fn with_dsn_a_table_lock_wait_names_the_table_pg_locks_points_at() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let pm = pg.postmaster_pid().unwrap().to_string();
    let args = pg.conn_args();
    let dsn = format!(
        "host={} port={} user=postgres dbname=postgres",
        args[1], args[3]
    );
    let tool = Traced::start(BIN, &["-p", &pm, "--each", "--json", "--dsn", &dsn]).unwrap();
    let mut holder = pg.session().unwrap();
    holder.run("begin").unwrap();
    holder
        .run("lock table pgbench_branches in access exclusive mode")
        .unwrap();
    let oid = std::thread::scope(|s| {
        let blocked = s.spawn(|| pg.psql("select count(*) from pgbench_branches"));
        let deadline = Instant::now() + Duration::from_secs(10);
        let oid = loop {
            let row = pg
                .psql("select relation from pg_locks where not granted and locktype = 'relation'")
                .unwrap();
            if let Some(line) = row.lines().next() {
                break line.trim().parse::<u64>().unwrap();
            }
            assert!(Instant::now() < deadline, "the select never waited");
        };
        std::thread::sleep(Duration::from_millis(200));
        holder.run("commit").unwrap();
        blocked.join().unwrap().unwrap();
        oid
    });
    let by_name = pg.psql("select 'pgbench_branches'::regclass::oid").unwrap();
    assert_eq!(by_name.trim(), oid.to_string(), "pg_locks' relation");
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    schema::validate("locks", &records);
    let rows: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "wait" && r["lock_type"] == "relation")
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["relation"].as_u64(), Some(oid));
    assert_eq!(rows[0]["relation_name"], "pgbench_branches");
    assert_eq!(rows[0]["mode"], "AccessShareLock");
    // The wait as it ended names the table too.
    let each = records
        .iter()
        .find(|r| r["type"] == "lock_wait" && r["lock_type"] == "relation")
        .unwrap();
    assert_eq!(each["lock"], "relation pgbench_branches");

    // A --dsn that leads nowhere is an error before anything is attached.
    let bad = run_tool(BIN, &["--dsn", "host=/nonexistent port=1", "-d", "1"]);
    assert_eq!(bad.status.code(), Some(1), "{}", bad.stderr);
    assert!(bad.stderr.contains("--dsn"), "{}", bad.stderr);
}

/// "Process A waits for ShareLock on transaction X; blocked by process B." lines of the
/// server log's deadlock DETAIL, as (A, B).
fn deadlock_detail(log: &str) -> Vec<(u32, u32)> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("Process ")? + 8..];
            let (a, rest) = rest.split_once(" waits for ")?;
            let b = rest
                .split_once("blocked by process ")?
                .1
                .trim_end_matches('.');
            Some((a.parse().ok()?, b.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn a_deadlock_names_the_finder_and_the_other_waiter_as_the_server_log_does() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let pm = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(BIN, &["-p", &pm, "--json"]).unwrap();
    let mut a = pg.session().unwrap();
    let mut b = pg.session().unwrap();
    for (s, sql) in [(&mut a, UPDATE_1), (&mut b, UPDATE_2)] {
        s.run("begin").unwrap();
        s.run(sql).unwrap();
    }
    let (a_pid, b_pid) = (a.backend_pid, b.backend_pid);
    let (ra, rb) = std::thread::scope(|s| {
        let first = s.spawn(|| a.run(UPDATE_2));
        std::thread::sleep(Duration::from_millis(200));
        let second = b.run(UPDATE_1);
        (first.join().unwrap(), second)
    });
    // One of them is cancelled by the deadlock check (deadlock_timeout, 1 s).
    assert!(ra.is_err() != rb.is_err(), "{ra:?} {rb:?}");
    let _ = b.run("rollback");
    std::thread::sleep(Duration::from_millis(200));
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    schema::validate("locks", &records);
    let log = pg.server_log();
    let detail = deadlock_detail(&log);
    assert_eq!(detail.len(), 2, "{log}");
    let deadlocks: Vec<_> = records.iter().filter(|r| r["type"] == "deadlock").collect();
    assert_eq!(deadlocks.len(), 1, "{records:?}");
    let d = deadlocks[0];
    // The DETAIL begins with the finder's own wait; the other process blocks it.
    let (finder, other) = detail[0];
    assert_eq!(d["pid"].as_u64(), Some(u64::from(finder)), "{d}\n{log}");
    assert!([a_pid, b_pid].contains(&finder) && [a_pid, b_pid].contains(&other));
    let finder_sql = if finder == a_pid { UPDATE_2 } else { UPDATE_1 };
    let other_sql = if finder == a_pid { UPDATE_1 } else { UPDATE_2 };
    let normalized = |sql: &str| pgbpf_common::sql::normalize(sql);
    assert_eq!(d["query"], normalized(finder_sql).as_str(), "{d}");
    // Its type was read while it waited (it is gone right after its error).
    assert_eq!(d["backend_type"], "client backend", "{d}");
    assert_eq!(d["mode"], "ShareLock");
    let waiting = d["waiting"].as_array().unwrap();
    let o = waiting
        .iter()
        .find(|w| w["pid"].as_u64() == Some(u64::from(other)))
        .unwrap_or_else(|| panic!("the other waiter is missing: {d}"));
    assert_eq!(o["query"], normalized(other_sql).as_str());
    assert_eq!(o["backend_type"], "client backend");
    let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(summary["deadlocks"], 1);
    // The other waiter got its lock once the finder's transaction was rolled back.
    assert_eq!(summary["waits"], 1);
}

#[test]
fn a_binary_without_the_probes_is_a_clear_error() {
    require_root();
    let out = run_tool(BIN, &["--postgres", "/bin/true"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("has no USDT probes lock__wait__start")
            && out.stderr.lines().count() == 1,
        "{}",
        out.stderr
    );
}
