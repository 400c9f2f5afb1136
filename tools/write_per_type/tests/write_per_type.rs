//! write_per_type against a real PostgreSQL (fsync on): a 200 MB COPY, a CHECKPOINT and a
//! sort spilling to a temp file. The checkpointer's relation bytes equal
//! pg_stat_bgwriter.buffers_checkpoint × 8 KiB, every process's bytes equal what its
//! /proc/PID/io counts as written by syscalls (wchar), the temp bytes equal
//! pg_stat_database.temp_bytes.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use pgbpf_testkit::{
    exclusive,
    postgres::{PgOptions, Postgres},
    require_root, schema,
    tool::Traced,
    wchar,
};

const BIN: &str = env!("CARGO_BIN_EXE_write_per_type");

fn number(pg: &Postgres, sql: &str) -> u64 {
    pg.psql(sql).unwrap().trim().parse().unwrap()
}

#[test]
fn bytes_per_backend_type_and_kind_equal_postgres_and_proc_counts() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with(&PgOptions {
        settings: vec![
            ("fsync".into(), "on".into()),
            ("autovacuum".into(), "off".into()),
        ],
        ..Default::default()
    })
    .unwrap();
    let pm = pg.postmaster_pid().unwrap().to_string();
    pg.psql("create table big (a int, b text)").unwrap();
    pg.psql("checkpoint").unwrap();
    let checkpointer = number(
        &pg,
        "select pid from pg_stat_activity where backend_type = 'checkpointer'",
    ) as u32;
    let buffers_before = number(&pg, "select buffers_checkpoint from pg_stat_bgwriter");
    let temp_before = number(
        &pg,
        "select temp_bytes from pg_stat_database where datname = 'postgres'",
    );
    // The COPY reads a file (a program's writes would count in its parent's /proc/PID/io
    // once reaped): 1.5 million rows of ~130 bytes, some 200 MB of table, as much WAL.
    let csv = pg.dir.path().join("big.csv");
    {
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
        let b = "x".repeat(100);
        for i in 1..=1_500_000 {
            writeln!(f, "{i},{b}").unwrap();
        }
    }
    std::fs::set_permissions(&csv, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut session = pg.session().unwrap();
    let (backend, backend_wchar) = (session.backend_pid, wchar(session.backend_pid));
    let checkpointer_wchar = wchar(checkpointer);
    // Reports every second: files closed in between (the WAL segments' temporary files, the
    // hash join's batches) are dropped from the kernel's table after each reading.
    let tool = Traced::start(BIN, &["-p", &pm, "--json", "1"]).unwrap();
    session
        .run(&format!(
            "copy big from '{}' with (format csv)",
            csv.display()
        ))
        .unwrap();
    session.run("checkpoint").unwrap();
    session.run("set work_mem = '64kB'").unwrap();
    // A hash join in batches: each batch file written once (a sort's merge passes would
    // write more than its files' size, which temp_bytes counts).
    session.run("set enable_mergejoin = off").unwrap();
    session.run("set enable_nestloop = off").unwrap();
    session
        .run(
            "select count(*) from (select g, md5(g::text) from generate_series(1, 200000) g) a \
             join (select g from generate_series(1, 200000) g) b using (g)",
        )
        .unwrap();
    let backend_written = wchar(backend) - backend_wchar;
    let checkpointer_written = wchar(checkpointer) - checkpointer_wchar;
    drop(session);
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    pg.wait_other_backends_gone();
    let buffers = number(&pg, "select buffers_checkpoint from pg_stat_bgwriter") - buffers_before;
    let temp = number(
        &pg,
        "select temp_bytes from pg_stat_database where datname = 'postgres'",
    ) - temp_before;
    let records = out.json();
    let kinds = schema::validate("write_per_type", &records);
    assert_eq!(kinds, ["write", "interval", "summary"], "record kinds");
    let mut ours: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r["type"] == "write" && r["scope"] == "total")
    {
        let key = (
            r["backend_type"].as_str().unwrap().to_string(),
            r["kind"].as_str().unwrap().to_string(),
        );
        ours.insert(
            key,
            (r["bytes"].as_u64().unwrap(), r["fsyncs"].as_u64().unwrap()),
        );
    }
    eprintln!(
        "ours {ours:#?}\nbuffers_checkpoint {buffers}, temp_bytes {temp}, wchar: backend \
         {backend_written}, checkpointer {checkpointer_written}"
    );
    let of = |backend: &str, kind: &str| {
        ours.get(&(backend.to_string(), kind.to_string()))
            .copied()
            .unwrap_or_default()
    };
    let sum_of = |backend: &str| -> u64 {
        ours.iter()
            .filter(|((b, _), _)| b == backend)
            .map(|(_, (bytes, _))| bytes)
            .sum()
    };
    assert!(buffers > 100, "{buffers} buffers written by the checkpoint");
    assert_eq!(of("checkpointer", "relation").0, buffers * 8192);
    assert!(
        of("checkpointer", "relation").1 > 0,
        "the checkpoint's fsyncs"
    );
    assert_eq!(sum_of("checkpointer"), checkpointer_written, "checkpointer");
    // The COPY's backend: the table through its ring of buffers, the WAL when its buffers
    // filled and at commit, the sort's temp file. Other client backends (the test's psql
    // calls) write a little (a relation cache file): within 1 %.
    let client = sum_of("client backend");
    assert!(
        client >= backend_written && client - backend_written <= backend_written / 100,
        "client backends {client}, the COPY's backend {backend_written}"
    );
    assert!(of("client backend", "relation").0 > 100 << 20, "the table");
    assert!(of("client backend", "wal").0 > 100 << 20, "the table's WAL");
    assert!(temp > 1 << 20, "{temp} temp bytes");
    assert_eq!(of("client backend", "temp").0, temp, "temp_bytes");
    let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
    for lost in ["ringbuf_full", "files_full", "pending_full", "fds_full"] {
        assert_eq!(summary["lost"][lost], 0, "{lost}");
    }
    let all: u64 = ours
        .iter()
        .filter(|((_, k), _)| k != "not_file")
        .map(|(_, (b, _))| b)
        .sum();
    assert_eq!(summary["bytes"].as_u64(), Some(all));
    // The intervals add up to the run (the last partial interval is in the summary only).
    let intervals: u64 = records
        .iter()
        .filter(|r| r["type"] == "interval")
        .map(|r| r["bytes"].as_u64().unwrap())
        .sum();
    assert!(intervals <= all && intervals > 0, "{intervals} of {all}");
}
