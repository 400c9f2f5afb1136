//! Capture files of real pgbench sessions (pgwire_trace --record) into sessions to replay:
//! every Execute of the pgbench sessions kept, in order, none of the credentials, and the
//! original completions; counts against pg_stat_statements.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use pg_replay::sessions;
use pgbpf_testkit::{
    exclusive,
    postgres::{PgOptions, Postgres},
    require_root,
    tool::Traced,
};

/// pgwire_trace, built beside this test by the workspace's `cargo test`.
fn pgwire_trace() -> String {
    let exe = std::env::current_exe().unwrap();
    let bin: PathBuf = exe.parent().unwrap().parent().unwrap().join("pgwire_trace");
    assert!(
        bin.exists(),
        "{} not built: run the workspace's cargo test",
        bin.display()
    );
    bin.display().to_string()
}

#[test]
fn a_pgbench_capture_becomes_its_sessions() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with_pgbench(
        &PgOptions {
            pg_stat_statements: true,
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.pgw");
    let file_s = file.display().to_string();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(
        &pgwire_trace(),
        &["-p", &postmaster, "--summary", "--record", &file_s],
    )
    .unwrap();
    pg.psql("select pg_stat_statements_reset()").unwrap();
    pg.pgbench(&["-n", "-S", "-M", "extended", "-c", "2", "-t", "100"])
        .unwrap();
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let calls: u64 = pg
        .psql("select calls from pg_stat_statements where query like 'SELECT abalance%'")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(calls, 200);
    let all = sessions::read(&file).unwrap();
    let bench: Vec<&sessions::Session> = all
        .iter()
        .filter(|s| {
            s.messages
                .iter()
                .any(|m| m.tag == b'P' && m.body.windows(8).any(|w| w == b"abalance"))
        })
        .collect();
    assert_eq!(bench.len(), 2, "two pgbench clients");
    let executes: usize = bench
        .iter()
        .map(|s| s.messages.iter().filter(|m| m.tag == b'E').count())
        .sum();
    assert_eq!(executes as u64, calls);
    for s in &bench {
        assert!(s.from_start && s.incomplete == 0 && !s.encrypted);
        assert!(
            s.startup
                .iter()
                .any(|(k, v)| k == "user" && v == "postgres")
        );
        assert!(s.messages.iter().all(|m| m.tag != b'p'));
        assert!(s.messages.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
        let selects = s
            .original
            .iter()
            .filter(|c| c.sql.starts_with("SELECT abalance"))
            .count();
        assert_eq!(selects, s.messages.iter().filter(|m| m.tag == b'E').count());
        // Re-encoded, the first message is what the client sent: a Parse.
        let mut wire = vec![];
        s.messages[0].encode(&mut wire);
        assert_eq!(wire[0], b'P');
        assert_eq!(
            u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize,
            wire.len() - 1
        );
    }
}
