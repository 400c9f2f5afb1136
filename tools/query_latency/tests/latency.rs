//! query_latency against a real PostgreSQL with pg_stat_statements: call counts per statement
//! equal pg_stat_statements' for the simple, extended and prepared protocols; means agree
//! within a stated tolerance; a 50 ms sleep lands in the 32-64 ms bucket; probe semaphores are
//! back to zero after the tool exits; bad targets get clear errors.
//!
//! Spans: by default query_latency times PortalRun (query__execute__start/done) for the
//! extended protocol and the whole simple query (query__start/done: parse, plan, execute,
//! commit) for the simple one; with --requests each request from its first bytes to its
//! ReadyForQuery (the socket tracepoints). Two independent spans enclose either call by
//! call: pg_stat_statements' mean_exec_time (+ mean_plan_time with track_planning = on) lies
//! inside it, and pgbench's own per-statement latency (`-r`: from sending the statement to
//! its ReadyForQuery, the same CLOCK_MONOTONIC) lies around it. So, means over the same 400
//! calls: 0.8 x pgss mean <= our mean <= pgbench's mean + 2 us (its 1 us print rounding); the 0.8
//! allows for clock granularity. A fixed ratio above pgss is no bound: parse time and
//! scheduling stalls outside their span vary with the machine (CI saw 2.6 x).

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::Duration,
};

use pgbpf_testkit::{
    container::{Container, ContainerSpec},
    exclusive,
    postgres::{PgOptions, Postgres},
    require_root, schema, statement_key,
    tool::{Traced, assert_quiet_in_head, run_tool},
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_query_latency");

fn cluster() -> Postgres {
    Postgres::start_with_pgbench(
        &PgOptions {
            pg_stat_statements: true,
            settings: vec![("pg_stat_statements.track_planning".into(), "on".into())],
            ..Default::default()
        },
        1,
    )
    .expect("a PostgreSQL cluster with pgbench tables")
}

/// Calls and mean time of one statement text (several query ids can share a text, e.g. a
/// constant in one and a parameter in another: merged, means weighted by calls).
#[derive(Default, Debug, Clone, Copy)]
struct Timing {
    calls: u64,
    mean_us: f64,
}

impl Timing {
    fn merge(&mut self, calls: u64, mean_us: f64) {
        let total = self.calls + calls;
        if total > 0 {
            self.mean_us =
                (self.mean_us * self.calls as f64 + mean_us * calls as f64) / total as f64;
        }
        self.calls = total;
    }
}

/// pg_stat_statements: text → calls and mean (exec, plus plan when `with_plan`).
fn pgss(pg: &Postgres, with_plan: bool) -> HashMap<String, Timing> {
    let out = pg
        .psql("select calls, mean_exec_time, mean_plan_time, query from pg_stat_statements where toplevel")
        .unwrap();
    let mut m: HashMap<String, Timing> = HashMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.splitn(4, '|').collect();
        let calls: u64 = f[0].parse().unwrap();
        let exec: f64 = f[1].parse().unwrap();
        let plan: f64 = f[2].parse().unwrap();
        let mean_ms = if with_plan { exec + plan } else { exec };
        m.entry(statement_key(f[3]))
            .or_default()
            .merge(calls, mean_ms * 1000.0);
    }
    m
}

/// pgbench's per-statement mean latency (`-r`), keyed like pg_stat_statements' texts by the
/// first three words (`UPDATE pgbench_tellers SET`): pgbench prints `:aid` where the server
/// shows `$1`, and the first three words tell TPC-B's five statements apart.
fn client_latencies(pgbench_output: &str) -> HashMap<String, f64> {
    pgbench_output
        .lines()
        .skip_while(|l| !l.starts_with("statement latencies"))
        .skip(1)
        .filter_map(|l| {
            // "  0.115  0  UPDATE pgbench_accounts SET ..." (latency ms, failures, text)
            let mut words = l.split_whitespace();
            let ms: f64 = words.next()?.parse().ok()?;
            let _failures = words.next()?;
            Some((
                first_words(&words.collect::<Vec<_>>().join(" ")),
                ms * 1000.0,
            ))
        })
        .collect()
}

fn first_words(text: &str) -> String {
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// query_latency's NDJSON totals: text → calls and mean.
fn ours(records: &[Value]) -> HashMap<String, Timing> {
    let mut m: HashMap<String, Timing> = HashMap::new();
    for r in records
        .iter()
        .filter(|r| r["type"] == "statement" && r["scope"] == "total")
    {
        let calls = r["calls"].as_u64().unwrap();
        let mean_us = r["mean_ns"].as_f64().unwrap() / 1000.0;
        let t = m
            .entry(statement_key(r["query"].as_str().unwrap()))
            .or_default();
        t.merge(calls, mean_us);
    }
    m
}

fn summary(records: &[Value]) -> &Value {
    records
        .iter()
        .find(|r| r["type"] == "summary")
        .expect("a summary record")
}

fn run_protocol(mode: &str, extra: &[&str]) {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let mut args = vec!["-p", postmaster.as_str(), "--json"];
    args.extend(extra);
    let tool = Traced::start(BIN, &args).unwrap();
    pg.psql("select pg_stat_statements_reset()").unwrap();
    // pgbench's backends are forked after the tool attached: they must be covered.
    let client = client_latencies(
        &pg.pgbench(&["-M", mode, "-t", "200", "-c", "2", "-n", "-r"])
            .unwrap(),
    );
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    let kinds = schema::validate("query_latency", &records);
    assert_eq!(kinds, ["statement", "summary"], "record kinds");
    let theirs = pgss(&pg, mode == "simple");
    let ours = ours(&records);
    let mut compared = 0;
    for (text, t) in theirs.iter().filter(|(t, _)| {
        t.starts_with("SELECT abalance")
            || t.starts_with("UPDATE pgbench")
            || t.starts_with("INSERT INTO pgbench")
    }) {
        let o = ours
            .get(text)
            .unwrap_or_else(|| panic!("{mode}: no {text:?} in query_latency's output: {ours:?}"));
        assert_eq!(o.calls, t.calls, "{mode}: calls of {text:?}");
        assert_eq!(o.calls, 400, "{mode}: pgbench ran {text:?} 400 times");
        let client_us = *client
            .get(&first_words(text))
            .unwrap_or_else(|| panic!("{mode}: no {text:?} in pgbench -r's output: {client:?}"));
        assert!(
            o.mean_us >= 0.8 * t.mean_us && o.mean_us <= client_us + 2.0,
            "{mode}: {text:?}: query_latency mean {:.1} us, pg_stat_statements mean {:.1} us, \
             pgbench's mean {client_us:.1} us",
            o.mean_us,
            t.mean_us
        );
        compared += 1;
    }
    assert_eq!(
        compared, 5,
        "{mode}: the five statements of pgbench's TPC-B script"
    );
    let lost = &summary(&records)["lost"];
    assert_eq!(lost["ringbuf_full"], 0);
    assert_eq!(lost["context_full"], 0);
}

#[test]
fn simple_protocol_counts_match_pg_stat_statements() {
    run_protocol("simple", &[]);
}

#[test]
fn with_requests_simple_and_prepared_counts_match_pg_stat_statements() {
    run_protocol("simple", &["--requests"]);
    run_protocol("prepared", &["--requests"]);
}

#[test]
fn extended_protocol_counts_match_pg_stat_statements() {
    run_protocol("extended", &[]);
}

#[test]
fn prepared_statements_count_match_pg_stat_statements() {
    run_protocol("prepared", &[]);
}

/// Every finished statement as a `slow` record (`-m 0`): (protocol, text).
fn finished(records: &[Value]) -> Vec<(String, String)> {
    records
        .iter()
        .filter(|r| r["type"] == "slow")
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (field("protocol"), field("query"))
        })
        .collect()
}

#[test]
fn with_requests_a_request_is_one_entry_whatever_it_runs() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(BIN, &["-p", &postmaster, "--json", "-m", "0", "--requests"]).unwrap();
    // One session (each -c one Query message): a multi-statement string, PREPARE and an
    // EXECUTE (whose PortalRun runs the prepared statement's inside its own), then a failing
    // statement, which finishes nothing.
    let out = Command::new("psql")
        .args(pg.conn_args())
        .args(["-X", "-q", "-d", "postgres"])
        .args([
            "-c",
            "select 1; select 2",
            "-c",
            "prepare p as select $1::int + 1",
        ])
        .args(["-c", "execute p(41)", "-c", "select 1/0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("division by zero"),
        "{out:?}"
    );
    let records = tool.stop().unwrap().json();
    schema::validate("query_latency", &records);
    let seen = finished(&records);
    let ours: Vec<(&str, &str)> = seen
        .iter()
        .map(|(p, q)| (p.as_str(), q.as_str()))
        .filter(|(_, q)| !q.contains("pg_catalog"))
        .collect();
    assert_eq!(
        ours,
        [
            ("simple", "select 1; select 2"),
            ("simple", "prepare p as select $1::int + 1"),
            ("simple", "execute p(41)"),
        ],
        "{seen:?}"
    );
    let lost = &summary(&records)["lost"];
    assert_eq!(lost["began_before_attach"], 0, "{lost}");
}

#[test]
fn with_requests_tls_statements_count_match_pg_stat_statements() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with_pgbench(
        &PgOptions {
            pg_stat_statements: true,
            tls: true,
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(BIN, &["-p", &postmaster, "--json", "-m", "0", "--requests"]).unwrap();
    pg.psql("select pg_stat_statements_reset()").unwrap();
    for mode in ["simple", "extended"] {
        pgbpf_testkit::run(&mut pg.pgbench_tls(&["-n", "-S", "-M", mode, "-c", "2", "-t", "100"]))
            .unwrap();
    }
    let records = tool.stop().unwrap().json();
    schema::validate("query_latency", &records);
    let selects: Vec<(String, String)> = finished(&records)
        .into_iter()
        .filter(|(_, q)| q.starts_with("SELECT abalance"))
        .collect();
    assert!(
        selects.iter().all(|(p, _)| p == "tls"),
        "encrypted requests are reported as such: {selects:?}"
    );
    let theirs: u64 = pg
        .psql(
            "select sum(calls) from pg_stat_statements \
             where query like 'SELECT abalance FROM pgbench_accounts%'",
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(theirs, 400, "pgbench ran 2 x 2 x 100 selects");
    assert_eq!(selects.len() as u64, theirs, "selects traced over TLS");
}

#[test]
fn a_50ms_sleep_is_in_the_32_to_64ms_bucket_and_reported_slow() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(BIN, &["-p", &postmaster, "--json", "-m", "40"]).unwrap();
    pg.psql("select pg_sleep(0.05)").unwrap();
    let records = tool.stop().unwrap().json();
    let kinds = schema::validate("query_latency", &records);
    assert!(kinds.contains(&"slow".to_string()), "{kinds:?}");
    let hist: Vec<u64> = summary(&records)["hist_log2_us"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // slot 15 holds 32768..65535 us
    assert_eq!(hist.get(15), Some(&1), "{hist:?}");
    let slow: Vec<&Value> = records.iter().filter(|r| r["type"] == "slow").collect();
    assert_eq!(slow.len(), 1, "{records:?}");
    assert_eq!(slow[0]["query"], "select pg_sleep(0.05)");
    let ns = slow[0]["duration_ns"].as_u64().unwrap();
    assert!((50_000_000..64_000_000).contains(&ns), "{ns}");
}

/// The semaphore of `probe` in a running backend, read from its memory; waits up to 5 s for
/// it to become `want` (the kernel lowers it asynchronously after detach).
fn semaphore(probe: &str, pid: u32, want: u16) -> u16 {
    let bin = pgbpf_common::postgres::installed_bin_dir()
        .unwrap()
        .join("postgres");
    let probe = pgbpf_common::usdt::probes(&bin)
        .unwrap()
        .into_iter()
        .find(|p| p.name == probe)
        .unwrap();
    pgbpf_testkit::wait_semaphore(pid, "/bin/postgres", probe.semaphore_offset.unwrap(), want)
        .unwrap()
}

#[test]
fn semaphores_are_zero_again_after_exit() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    // A backend that lives across the tool's runs.
    let mut psql = Command::new("psql")
        .args(pg.conn_args())
        .args(["-X", "-d", "postgres", "-c", "select pg_sleep(16)"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let backend: u32 = loop {
        let out = pg
            .psql("select pid from pg_stat_activity where query = 'select pg_sleep(16)'")
            .unwrap();
        if let Ok(pid) = out.trim().parse() {
            break pid;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    // By default PortalRun's end is probed; the query context (--active) adds query__start.
    for (probe, extra) in [
        ("query__execute__done", None),
        ("query__start", Some("--active")),
    ] {
        assert_eq!(
            semaphore(probe, backend, 0),
            0,
            "{probe}: semaphore raised before the tool ran"
        );
        let mut args = vec!["-p", postmaster.as_str()];
        args.extend(extra);
        let tool = Traced::start(BIN, &args).unwrap();
        assert!(
            semaphore(probe, backend, 1) >= 1,
            "{probe}: the tool did not raise the semaphore"
        );
        assert!(tool.stop().unwrap().status.success());
        assert_eq!(
            semaphore(probe, backend, 0),
            0,
            "{probe}: semaphore left raised after the tool exited"
        );
    }
    let _ = psql.kill();
    let _ = psql.wait();
}

#[test]
fn a_pid_that_is_not_postgres_is_refused() {
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let out = run_tool(BIN, &["-p", &sleeper.id().to_string()]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("is not a PostgreSQL process"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

#[test]
fn a_binary_without_probes_is_refused() {
    // The query context's first probe; the request span's only one.
    for (extra, probe) in [
        (None, "query__start"),
        (Some("--requests"), "query__execute__done"),
    ] {
        let args: Vec<&str> = ["--postgres", "/bin/ls"].into_iter().chain(extra).collect();
        let out = run_tool(BIN, &args);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            out.stderr
                .contains(&format!("/bin/ls has no USDT probe {probe}")),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("--enable-dtrace"), "{}", out.stderr);
    }
    // The request span needs none of what --active and --uprobes choose.
    let out = run_tool(BIN, &["--requests", "--active"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
}

#[test]
fn a_container_without_postgres_is_refused() {
    require_root();
    let c = Container::run(&ContainerSpec {
        command: "sleep 60".into(),
        ..Default::default()
    })
    .unwrap();
    let out = run_tool(BIN, &["--container", &c.id[..12]]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("runs no PostgreSQL server process"),
        "{}",
        out.stderr
    );
}

#[test]
fn uprobe_fallback_counts_match_too() {
    // Debian's binary has USDT, but --uprobes takes the path used for builds without it:
    // uprobe and uretprobe on the exported PortalRun, text from debug_query_string.
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(BIN, &["-p", &postmaster, "--json", "--uprobes"]).unwrap();
    pg.psql("select pg_stat_statements_reset()").unwrap();
    pg.pgbench(&["-M", "extended", "-t", "100", "-c", "2", "-n"])
        .unwrap();
    pg.pgbench(&["-M", "simple", "-S", "-t", "100", "-c", "1", "-n"])
        .unwrap();
    let out = tool.stop().unwrap();
    assert!(out.stderr.contains("2 uprobes sites"), "{}", out.stderr);
    let ours = ours(&out.json());
    let theirs = pgss(&pg, false);
    for text in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    ] {
        let (o, t) = (
            ours.get(text).map(|t| t.calls),
            theirs.get(text).map(|t| t.calls),
        );
        assert!(
            o.is_some() && o == t,
            "{text}: query_latency {o:?}, pg_stat_statements {t:?}"
        );
    }
}

#[test]
fn active_statements_come_from_the_query_context() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(BIN, &["-p", &postmaster, "--json", "--active", "1"]).unwrap();
    pg.psql("select pg_sleep(1.6)").unwrap();
    let records = tool.stop().unwrap().json();
    let kinds = schema::validate("query_latency", &records);
    assert!(
        kinds.contains(&"active".to_string()) && kinds.contains(&"interval".to_string()),
        "{kinds:?}"
    );
    let active: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "active" && r["query"] == "select pg_sleep(1.6)")
        .collect();
    assert!(
        !active.is_empty(),
        "the sleeping statement was never seen running: {records:?}"
    );
    assert!(active.iter().all(|a| a["protocol"] == "simple"));
    let longest = active
        .iter()
        .map(|a| a["elapsed_ns"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!((500_000_000..1_700_000_000).contains(&longest), "{longest}");
}

#[test]
fn a_closed_stdout_ends_it_quietly() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    assert_quiet_in_head(BIN, &["-p", &postmaster]);
    assert_quiet_in_head(BIN, &["-p", &postmaster, "--json"]);
}

#[test]
fn container_postgres_is_traced_by_container_id() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with(&PgOptions {
        pg_stat_statements: true,
        container: Some(ContainerSpec::default()),
        ..Default::default()
    })
    .unwrap();
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    let id = pg.container.as_ref().unwrap().id[..12].to_string();
    let tool = Traced::start(BIN, &["--container", &id, "--json"]).unwrap();
    pg.psql("select pg_stat_statements_reset()").unwrap();
    pg.pgbench(&["-M", "simple", "-S", "-t", "150", "-c", "2", "-n"])
        .unwrap();
    let out = tool.stop().unwrap();
    assert!(
        out.stderr.contains(&format!("container {id}")),
        "{}",
        out.stderr
    );
    let ours = ours(&out.json());
    let theirs = pgss(&pg, false);
    let text = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    assert_eq!(ours.get(text).map(|t| t.calls), Some(300), "{ours:?}");
    assert_eq!(theirs.get(text).map(|t| t.calls), Some(300));
}
