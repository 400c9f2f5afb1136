//! No secret and no literal of the workload in any statement tool's output under `--redact`
//! (issue 23): a password set with CREATE ROLE, used to log in over TCP (sent in the clear),
//! and statements with distinctive literals (quoted, dollar-quoted, numbers) and comments run
//! under the tools that show statements, text and JSON, those that print single statements
//! as they ran too (query_latency's slow statements, shmem's events). Each tool must show
//! the statement (redacted: the check is not vacuous) and neither the password, nor a
//! literal, nor a comment. The wire tools' capture files are checked in their own tests
//! (pgwire_trace, redis_trace: the password exchange overwritten).

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use support::tool_link;

use std::process::Command;

use pgbpf_testkit::{exclusive, postgres::Postgres, require_root, tool::Traced};

const PASSWORD: &str = "pgbpf-Secret-Pw-7731";
/// Literals of the workload: a string and a number no normalized text contains.
const LITERALS: [&str; 2] = ["pgbpf-literal-5519", "918273645"];
/// What the workload's comments say (no digits: normalizing would replace them, hiding a comment left in).
const COMMENT: &str = "pgbpf-comment-xyzzy";

/// psql as `user` over TCP with the password, running `sql`.
fn psql_tcp(pg: &Postgres, user: &str, sql: &str) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", user])
        .args(["-d", "postgres", "-X", "-q", "-c", sql])
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_password_literal_or_comment_in_any_statement_tools_redacted_output() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with_pgbench(&Default::default(), 1).unwrap();
    // The password in the clear on the wire (method `password`): what pgwire_trace meets.
    pg.add_hba_rules("host all alice 127.0.0.1/32 password")
        .unwrap();
    let pm = pg.postmaster_pid().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let [text, number] = LITERALS;
    // (tool, its arguments, the redacted statement it must show)
    let tools: &[(&str, &[&str], &str)] = &[
        (
            "query_latency",
            &["-p", &pm, "--min-ms", "0"],
            "insert into lit values ($1, $2)",
        ),
        (
            "net_per_query",
            &["-p", &pm],
            "create role alice login password $1",
        ),
        (
            "wal_per_query",
            &["-p", &pm],
            "insert into lit values ($1, $2)",
        ),
        (
            "llcache_per_query",
            &["-p", &pm, "--event", "cpu-clock"],
            "select count(*) from generate_series($1, $2) g",
        ),
        // The parallel scan's leader sleeps waiting for its workers: an off-CPU stretch under
        // that statement, every time (a statement alone on its CPU may have none).
        (
            "cpu_wait",
            &["-p", &pm],
            "from pgbench_accounts where abalance <> $",
        ),
        (
            "shmem",
            &["-p", &pm],
            "from pgbench_accounts where abalance <> $",
        ),
        (
            "pgwire_trace",
            &["-p", &pm],
            "insert into lit values ($1, $2)",
        ),
    ];
    let mut failures = vec![];
    for (round, json) in [false, true].into_iter().enumerate() {
        for (tool, args, shown) in tools {
            let mut args: Vec<&str> = args.to_vec();
            args.push("--redact");
            if json {
                args.push("--json");
            }
            let traced = Traced::start(tool_link(dir.path(), tool).to_str().unwrap(), &args)
                .unwrap_or_else(|e| panic!("{tool}: {e:#}"));
            pg.psql("drop role if exists alice").unwrap();
            pg.psql(&format!("create role alice login password '{PASSWORD}'"))
                .unwrap();
            psql_tcp(&pg, "alice", "select 1");
            // One statement each: each is shown whole (normalized).
            pg.psql("drop table if exists lit").unwrap();
            pg.psql("create table lit (a text, b bigint)").unwrap();
            pg.psql(&format!(
                "/* {COMMENT} */ insert into lit values ('{text}', {number}) -- {COMMENT}"
            ))
            .unwrap();
            pg.psql(&format!(
                "select count(*) from generate_series(1, 3000000) g where $q${text}$q$ <> \
                 g::text and g <> {number}"
            ))
            .unwrap();
            // A parallel scan: its workers' shared memory is what shmem shows.
            pg.psql(&format!(
                "set max_parallel_workers_per_gather = 2; set parallel_setup_cost = 0; \
                 set parallel_tuple_cost = 0; set min_parallel_table_scan_size = 0; \
                 select /* {COMMENT} */ count(*) from pgbench_accounts where abalance <> \
                 {number} and filler <> '{text}'"
            ))
            .unwrap();
            let out = traced.stop().unwrap();
            assert!(out.status.success(), "{tool}: {}", out.stderr);
            let all = format!("{}{}", out.stdout, out.stderr);
            for secret in [PASSWORD, text, number, COMMENT] {
                if all.contains(secret) {
                    failures.push(format!("{tool} (json: {json}) printed {secret:?}"));
                }
            }
            // JSON escapes nothing in these texts: the normalized statement is there as is.
            if !all.contains(shown) {
                failures.push(format!(
                    "{tool} (round {round}) did not show {shown:?}: the check saw nothing:\n{all}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
