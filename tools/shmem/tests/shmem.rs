//! shmem against real PostgreSQL servers: the classic parallel-query ENOSPC in a podman
//! container with the default 64 MB /dev/shm (cross-checked with the server log and df in the
//! container), the snapshot against smaps, df and SHOW shared_memory_size, backends started
//! after attach (cross-checked with EXPLAIN ANALYZE's workers launched), a postmaster that
//! exits during the trace, and a process that is not PostgreSQL.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pgbpf_testkit::{
    dsm::{BIG_JOIN, ResizeError, parallel_hash_settings, resize_errors, server_short_of_shm},
    exclusive,
    postgres::{PgOptions, Postgres},
    require_root, schema, stacks,
    tool::{Traced, assert_quiet_in_head, run_tool},
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_shmem");

fn events(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["type"] == "event").collect()
}

/// A parallel scan (the server's settings make every scan parallel).
const PARALLEL_COUNT: &str = "select count(*) from pgbench_accounts";

/// `df -B1 /dev/shm` as (size, used).
fn df(output: &str) -> (u64, u64) {
    let f: Vec<&str> = output.lines().nth(1).unwrap().split_whitespace().collect();
    (f[1].parse().unwrap(), f[2].parse().unwrap())
}

#[test]
fn parallel_hash_join_enospc_in_a_container_is_reported_like_the_server_log() {
    require_root();
    let _lock = exclusive();
    let pg = server_short_of_shm().expect("a PostgreSQL in a podman container");
    let container = pg.container.as_ref().unwrap();
    let id = &container.id[..12];

    let tool = Traced::start(BIN, &["--container", id, "--json", "--stack"]).unwrap();
    // The same trace as a user reads it: failures only, highlighted, with time and stack.
    let human = Traced::start(BIN, &["--container", id, "-T", "--failures", "--stack"]).unwrap();
    let err = pg
        .psql(BIG_JOIN)
        .expect_err("the join must fail for lack of /dev/shm");
    assert!(
        format!("{err:#}").contains("No space left on device"),
        "{err:#}"
    );
    // The seed's failure (strace -k's stack of it): /dev/shm full before a parallel query
    // starts, its first DSM segment cannot be made.
    container
        .exec(
            "postgres",
            "head -c $(( $(df -k --output=avail /dev/shm | tail -1) * 1024 - 16384 )) \
             /dev/zero > /dev/shm/pgbpf_fill",
        )
        .unwrap();
    let err = pg
        .psql(PARALLEL_COUNT)
        .expect_err("the parallel query must fail for lack of /dev/shm");
    assert!(
        format!("{err:#}").contains("No space left on device"),
        "{err:#}"
    );
    container
        .exec("postgres", "rm /dev/shm/pgbpf_fill")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    let kinds = schema::validate("shmem", &records);
    assert_eq!(kinds, ["snapshot", "event", "summary"], "record kinds");
    let human = human.stop().unwrap();
    // Kept for the manual's example.
    let _ = std::fs::write(
        pgbpf_testkit::repo_root().join("target/shmem-enospc-example.txt"),
        &human.stdout,
    );

    let log = pg.server_log();
    let ResizeError {
        pid: log_pid,
        backend_type: log_backend,
        segment,
        bytes,
    } = resize_errors(&log)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no resize ERROR in the server log:\n{log}"));
    let failed: Vec<&Value> = events(&records)
        .into_iter()
        .filter(|e| e["failed"] == true)
        .collect();
    let f = failed
        .iter()
        .find(|e| e["call"] == "fallocate" && e["segment"] == segment.as_str())
        .unwrap_or_else(|| panic!("no failed fallocate of {segment}: {failed:#?}"));
    assert_eq!(f["result"], "ENOSPC");
    assert_eq!(f["size_bytes"], bytes, "bytes asked, as in the server log");
    assert_eq!(f["ns_pid"], log_pid, "the pid the server log names");
    assert_eq!(f["backend_type"], log_backend.as_str());
    assert_eq!(f["query"], BIG_JOIN);
    // Where the call was made, as strace -k shows it: from the DSM segment's creation for
    // the parallel query's shared state (PostgreSQL 15's exported functions; its static ones
    // show as postgres+0xOFFSET in Debian's stripped binary).
    let stack_of = |e: &Value| stacks::frames(e, "user_stack");
    // The hash table's growth: a new DSA segment (its static make_new_segment shows as
    // postgres+0xOFFSET in Debian's stripped binary).
    let stack = stack_of(f);
    stacks::assert_in_order(
        &stack,
        &[
            "posix_fallocate",
            "dsm_create",
            "dsa_allocate_extended",
            "ExecParallelHashTableInsert",
            // (A parallel worker's runs under ParallelQueryMain, the leader's PortalRun.)
            "standard_ExecutorRun",
        ],
    );
    // The parallel query's start, as in the seed.
    let start = failed
        .iter()
        .find(|e| e["query"] == PARALLEL_COUNT)
        .unwrap_or_else(|| panic!("no failure of the parallel count: {failed:#?}"));
    assert_eq!(start["result"], "ENOSPC");
    stacks::assert_in_order(
        &stack_of(start),
        &[
            "dsm_create",
            "InitializeParallelDSM",
            "ExecInitParallelPlan",
            "standard_ExecutorRun",
        ],
    );
    let line = human
        .stdout
        .lines()
        .find(|l| l.contains(&segment) && l.contains("fallocate"))
        .unwrap_or_else(|| panic!("no failure line for {segment}:\n{}", human.stdout));
    assert!(line.contains("ENOSPC") && line.contains(BIG_JOIN), "{line}");
    assert!(
        human.stdout.contains("    > dsm_create+"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("fallocate asked for")
            && human.stdout.contains("free when the call began"),
        "{}",
        human.stdout
    );
    // The container's /dev/shm, as df inside it reports it.
    let (size, _) = df(&container.exec("postgres", "df -B1 /dev/shm").unwrap());
    // podman's default: 64000 KiB.
    assert!((60 << 20..=64 << 20).contains(&size), "{size}");
    assert_eq!(f["dev_shm_size_bytes"], size);
    let free = f["dev_shm_free_bytes"].as_u64().unwrap();
    assert!(
        free < bytes,
        "free {free} must be less than the {bytes} asked"
    );
    // The snapshot saw the same /dev/shm.
    let snap = records.iter().find(|r| r["type"] == "snapshot").unwrap();
    assert_eq!(snap["dev_shm"]["size_bytes"], size);
    // The summary counts it.
    let total = records.iter().find(|r| r["type"] == "summary").unwrap();
    assert!(!total["failures"].as_array().unwrap().is_empty());
    assert_eq!(total["lost"]["ringbuf_full"], 0);
}

/// Resident bytes of the postmaster's main segment, read from smaps by hand.
fn main_segment_from_smaps(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut lines = smaps.lines();
    while let Some(l) = lines.next() {
        if l.contains(" rw-s ") && l.ends_with("/dev/zero (deleted)") {
            let range = l.split_whitespace().next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let size = u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
            let rss = lines
                .find_map(|l| l.strip_prefix("Rss:"))
                .unwrap()
                .trim()
                .trim_end_matches(" kB")
                .parse::<u64>()
                .unwrap();
            return (size, rss * 1024);
        }
    }
    panic!("no main segment in /proc/{pid}/smaps");
}

#[test]
fn snapshot_agrees_with_show_shared_memory_size_smaps_and_df() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start().unwrap();
    let pm = pg.postmaster_pid().unwrap();
    let out = run_tool(BIN, &["-p", &pm.to_string(), "--snapshot", "--json"]);
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    assert_eq!(schema::validate("shmem", &records), ["snapshot"]);
    assert_eq!(records.len(), 1, "one instance: {records:#?}");
    let s = &records[0];
    assert_eq!(s["postgres"], true);
    assert_eq!(s["pid"], pm);
    // SHOW shared_memory_size is the main segment in MB, rounded up.
    let shown = pg.psql("show shared_memory_size").unwrap();
    let mb: u64 = shown.trim().trim_end_matches("MB").parse().unwrap();
    let main = s["main_segment"]["size_bytes"].as_u64().unwrap();
    assert_eq!(main.div_ceil(1 << 20), mb, "main segment {main} vs {shown}");
    let (smaps_size, smaps_rss) = main_segment_from_smaps(pm);
    assert_eq!(main, smaps_size);
    let postmaster = &s["processes"][0];
    assert_eq!(postmaster["pid"], pm);
    assert_eq!(postmaster["backend_type"], "postmaster");
    // Resident pages move a little between the two reads: within 1 MiB.
    let ours = postmaster["main_rss_bytes"].as_u64().unwrap();
    assert!(ours.abs_diff(smaps_rss) <= 1 << 20, "{ours} vs {smaps_rss}");
    let types: Vec<&str> = s["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["backend_type"].as_str().unwrap())
        .collect();
    for t in ["checkpointer", "background writer", "walwriter"] {
        assert!(types.contains(&t), "{types:?}");
    }
    // PostgreSQL's SysV header segment: 56 bytes on 64-bit Linux (sizeof(PGShmemHeader)).
    assert_eq!(s["sysv"]["size_bytes"], 56);
    // /dev/shm as df sees it.
    let df_out =
        pgbpf_testkit::run(std::process::Command::new("df").args(["-B1", "/dev/shm"])).unwrap();
    let (size, used) = df(&df_out);
    assert_eq!(s["dev_shm"]["size_bytes"], size);
    let ours = s["dev_shm"]["used_bytes"].as_u64().unwrap();
    assert!(ours.abs_diff(used) <= 1 << 20, "{ours} vs df {used}");
    // The DSM control segment every instance has is listed.
    assert!(!s["dsm"].as_array().unwrap().is_empty(), "{s}");
}

/// A server named by its data directory restarts with more shared buffers: once it is
/// ready, a snapshot of the new postmaster follows the first, its main segment as smaps
/// shows it.
#[test]
fn a_restarted_server_gets_a_snapshot_of_its_own() {
    require_root();
    let _lock = exclusive();
    let mut pg = Postgres::start().unwrap();
    let first = pg.postmaster_pid().unwrap();
    let data = pg.dir.path().join("data");
    let mut tool = Traced::start(BIN, &["-D", data.to_str().unwrap(), "--json"]).unwrap();
    let second = pg
        .restart_under(&mut tool, pg.port, &[("shared_buffers", "64MB")])
        .unwrap();
    let (smaps_size, _) = main_segment_from_smaps(second);
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    schema::validate("shmem", &records);
    let snapshots: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "snapshot" && r["postgres"] == true)
        .collect();
    let pids: Vec<u64> = snapshots
        .iter()
        .map(|s| s["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(
        pids,
        [u64::from(first), u64::from(second)],
        "{snapshots:#?}"
    );
    let size = |s: &Value| s["main_segment"]["size_bytes"].as_u64().unwrap();
    assert_eq!(size(snapshots[1]), smaps_size);
    // 32 MB more of buffers, and their descriptors.
    assert!(
        size(snapshots[1]) > size(snapshots[0]) + (32 << 20),
        "{} then {}",
        size(snapshots[0]),
        size(snapshots[1])
    );
}

#[test]
fn pid_covers_backends_started_later_and_a_postmaster_that_exits() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with(&PgOptions {
        settings: parallel_hash_settings(),
        ..Default::default()
    })
    .unwrap();
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    let pm = pg.postmaster_pid().unwrap();
    let tool = Traced::start(BIN, &["-p", &pm.to_string(), "--json"]).unwrap();
    // A new connection, whose parallel workers are forked after the tool attached.
    let plan = pg
        .psql("explain (analyze, costs off, timing off) select count(*) from pgbench_accounts")
        .unwrap();
    let launched: usize = plan
        .lines()
        .find_map(|l| l.trim().strip_prefix("Workers Launched: "))
        .unwrap_or_else(|| panic!("not a parallel plan:\n{plan}"))
        .parse()
        .unwrap();
    assert!(launched > 0);
    std::thread::sleep(Duration::from_millis(300));
    // Fast shutdown: the tool notices and ends with what it saw.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pm as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = tool.wait(Duration::from_secs(20)).unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("PID {pm} exited")),
        "{}",
        out.stderr
    );
    let records = out.json();
    let evs = events(&records);
    let mut workers: Vec<u64> = evs
        .iter()
        .filter(|e| e["backend_type"] == "parallel worker" && e["call"] == "open")
        .map(|e| e["pid"].as_u64().unwrap())
        .collect();
    workers.sort_unstable();
    workers.dedup();
    assert_eq!(
        workers.len(),
        launched,
        "EXPLAIN ANALYZE's Workers Launched"
    );
    // The leader created the query's segment, with the statement attached.
    let created = evs
        .iter()
        .find(|e| e["call"] == "dsm_create" && e["backend_type"] == "client backend")
        .unwrap_or_else(|| panic!("no dsm_create: {evs:#?}"));
    assert!(
        created["query"]
            .as_str()
            .unwrap()
            .contains("pgbench_accounts"),
        "{created}"
    );
    let total = records
        .iter()
        .find(|r| r["type"] == "summary")
        .expect("the summary after the postmaster exited");
    assert_eq!(total["events"].as_u64().unwrap(), evs.len() as u64);
    tool_stderr_is_quiet(&out.stderr);
}

/// Nothing but the start-up line, notes and the exit notice on stderr.
fn tool_stderr_is_quiet(stderr: &str) {
    for l in stderr.lines() {
        assert!(
            l.starts_with("Tracing ")
                || l.starts_with("shmem: PID ")
                || l.starts_with("shmem: note"),
            "{stderr}"
        );
    }
}

#[test]
fn a_process_that_is_not_postgres_gets_the_generic_view() {
    require_root();
    let _lock = exclusive();
    // 8 MiB of shared anonymous memory (Python's anonymous mmap is MAP_SHARED), 4 MiB touched.
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import mmap,time,sys\nm=mmap.mmap(-1, 8<<20)\nm.write(b'x'*(4<<20))\nprint('ready',flush=True)\ntime.sleep(30)",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let pid = child.id().to_string();
    let out = run_tool(BIN, &["-p", &pid, "--json", "-d", "1"]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("is not a PostgreSQL process"),
        "{}",
        out.stderr
    );
    let records = out.json();
    schema::validate("shmem", &records);
    let s = records.iter().find(|r| r["type"] == "snapshot").unwrap();
    assert_eq!(s["postgres"], false);
    let m = s["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["size_bytes"] == 8 << 20)
        .unwrap_or_else(|| panic!("no 8 MiB shared mapping: {s}"));
    assert_eq!(m["rss_bytes"], 4 << 20);
    // It traced and summarized too.
    assert!(records.iter().any(|r| r["type"] == "summary"));
}

#[test]
fn a_closed_stdout_ends_it_quietly() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start().unwrap();
    let pm = pg.postmaster_pid().unwrap().to_string();
    // The snapshot comes first; the first interval's summary meets the closed pipe.
    assert_quiet_in_head(BIN, &["-p", &pm]);
    assert_quiet_in_head(BIN, &["-p", &pm, "--json"]);
}

#[test]
fn bad_pid_is_a_clear_error() {
    let out = run_tool(BIN, &["-p", "999999999", "--snapshot"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.stderr.trim(),
        "shmem: error: cannot attach to PID 999999999: no such process"
    );
}

#[test]
fn a_server_starting_under_trace_shows_its_main_segment_being_created() {
    require_root();
    let _lock = exclusive();
    // No target: every process, so the postmaster is seen from its first call.
    let tool = Traced::start(BIN, &["--json"]).unwrap();
    let pg = Postgres::start().unwrap();
    let pm = pg.postmaster_pid().unwrap() as u64;
    let shown = pg.psql("show shared_memory_size").unwrap();
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    let mine: Vec<&Value> = events(&records)
        .into_iter()
        .filter(|e| e["pid"] == pm)
        .collect();
    let created = mine
        .iter()
        .find(|e| e["call"] == "PGSharedMemoryCreate")
        .unwrap_or_else(|| panic!("no PGSharedMemoryCreate from {pm}: {mine:#?}"));
    let mapped = mine
        .iter()
        .find(|e| e["call"] == "mmap" && e["segment"] == "anonymous" && e["failed"] == false)
        .unwrap_or_else(|| panic!("no anonymous shared mmap from {pm}: {mine:#?}"));
    let mb: u64 = shown.trim().trim_end_matches("MB").parse().unwrap();
    let size = mapped["size_bytes"].as_u64().unwrap();
    assert_eq!(size.div_ceil(1 << 20), mb, "mmap of {size} vs {shown}");
    assert_eq!(
        created["size_bytes"], size,
        "the size PostgreSQL asked for is mapped"
    );
    // The SysV header segment: shmget of sizeof(PGShmemHeader).
    let shmget = mine
        .iter()
        .find(|e| e["call"] == "shmget" && e["failed"] == false)
        .unwrap_or_else(|| panic!("no shmget from {pm}: {mine:#?}"));
    assert_eq!(shmget["size_bytes"], 56);
    assert_eq!(mine[0]["backend_type"], "postmaster");
}
