//! shmem against real PostgreSQL servers: the classic parallel-query ENOSPC in a podman
//! container with the default 64 MB /dev/shm (cross-checked with the server log and df in the
//! container), the snapshot against smaps, df and SHOW shared_memory_size, backends started
//! after attach (cross-checked with EXPLAIN ANALYZE's workers launched), a postmaster that
//! exits during the trace, and a process that is not PostgreSQL.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pgbpf_testkit::{
    container::ContainerSpec,
    exclusive,
    postgres::{PgOptions, Postgres},
    require_root,
    tool::{Traced, run_tool},
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_shmem");

/// Server settings that make any join parallel and let its hash table grow past 64 MB (set
/// for the server, so the statement text is the join alone).
fn parallel_hash() -> Vec<(String, String)> {
    [
        ("work_mem", "1GB"),
        ("parallel_setup_cost", "0"),
        ("parallel_tuple_cost", "0"),
        ("min_parallel_table_scan_size", "0"),
        ("max_parallel_workers_per_gather", "2"),
        ("enable_mergejoin", "off"),
        ("enable_nestloop", "off"),
        ("log_line_prefix", "%p %b "),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
const BIG_JOIN: &str =
    "select count(*) from pgbench_accounts a join pgbench_accounts b on a.aid = b.aid";

fn events(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["type"] == "event").collect()
}

/// "1234 parallel worker ERROR:  could not resize shared memory segment "/PostgreSQL.N" to
/// B bytes: No space left on device" → (pid, backend type, segment, bytes).
fn resize_error(log: &str) -> Option<(u32, String, String, u64)> {
    log.lines().find_map(|l| {
        let (head, msg) = l.split_once(" ERROR:  could not resize shared memory segment \"")?;
        let (pid, backend) = head.split_once(' ')?;
        let (segment, rest) = msg.split_once("\" to ")?;
        let bytes = rest.split_once(" bytes")?.0.parse().ok()?;
        Some((pid.parse().ok()?, backend.to_string(), segment.to_string(), bytes))
    })
}

/// `df -B1 /dev/shm` as (size, used).
fn df(output: &str) -> (u64, u64) {
    let f: Vec<&str> = output.lines().nth(1).unwrap().split_whitespace().collect();
    (f[1].parse().unwrap(), f[2].parse().unwrap())
}

#[test]
fn parallel_hash_join_enospc_in_a_container_is_reported_like_the_server_log() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with(&PgOptions {
        settings: parallel_hash(),
        container: Some(ContainerSpec::default()),
        ..Default::default()
    })
    .expect("a PostgreSQL in a podman container");
    pg.pgbench(&["-i", "-s", "20", "-q"]).unwrap();
    let container = pg.container.as_ref().unwrap();
    let id = &container.id[..12];

    let tool = Traced::start(BIN, &["--container", id, "--json"]).unwrap();
    let err = pg
        .psql(BIG_JOIN)
        .expect_err("the join must fail for lack of /dev/shm");
    assert!(
        format!("{err:#}").contains("No space left on device"),
        "{err:#}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();

    let log = pg.server_log();
    let (log_pid, log_backend, segment, bytes) =
        resize_error(&log).unwrap_or_else(|| panic!("no resize ERROR in the server log:\n{log}"));
    let failed: Vec<&Value> = events(&records)
        .into_iter()
        .filter(|e| e["failed"] == true)
        .collect();
    let f = failed
        .iter()
        .find(|e| e["call"] == "fallocate" && e["segment"] == segment.as_str())
        .unwrap_or_else(|| panic!("no failed fallocate of {segment}: {failed:#?}"));
    assert_eq!(f["result"], "ENOSPC");
    assert_eq!(f["size"], bytes, "bytes asked, as in the server log");
    assert_eq!(f["ns_pid"], log_pid, "the pid the server log names");
    assert_eq!(f["backend"], log_backend.as_str());
    assert_eq!(f["query"], BIG_JOIN);
    // The container's /dev/shm, as df inside it reports it.
    let (size, _) = df(&container.exec("postgres", "df -B1 /dev/shm").unwrap());
    // podman's default: 64000 KiB.
    assert!((60 << 20..=64 << 20).contains(&size), "{size}");
    assert_eq!(f["dev_shm_size"], size);
    let free = f["dev_shm_free"].as_u64().unwrap();
    assert!(free < bytes, "free {free} must be less than the {bytes} asked");
    // The snapshot saw the same /dev/shm.
    let snap = records.iter().find(|r| r["type"] == "snapshot").unwrap();
    assert_eq!(snap["dev_shm"]["size"], size);
    // The summary counts it.
    let total = records
        .iter()
        .find(|r| r["type"] == "summary" && r["scope"] == "total")
        .unwrap();
    assert!(!total["failures"].as_array().unwrap().is_empty());
    assert_eq!(total["lost"]["ringbuf_full"], 0);
}
