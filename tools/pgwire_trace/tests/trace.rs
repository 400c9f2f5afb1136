//! pgwire_trace against a real PostgreSQL: what it reports is checked against
//! pg_stat_statements (calls per statement) and the server log (ERROR lines), for psql
//! sessions, pgbench in every protocol mode, pipelines, a container, a trace joined while
//! connections are busy, the client side, and a capture read back offline.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use pgbpf_testkit::{
    container::ContainerSpec,
    exclusive,
    postgres::{PgOptions, Postgres},
    require_root, schema,
    tool::{Traced, assert_quiet_in_head, run_tool},
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pgwire_trace");

fn cluster() -> Postgres {
    Postgres::start_with_pgbench(
        &PgOptions {
            pg_stat_statements: true,
            ..Default::default()
        },
        1,
    )
    .expect("a PostgreSQL cluster with pgbench tables")
}

fn requests(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["type"] == "request").collect()
}

fn stats(records: &[Value]) -> &Value {
    records
        .iter()
        .find(|r| r["type"] == "summary")
        .expect("a stats record at the end")
}

fn server_log_errors(pg: &Postgres) -> usize {
    pg.server_log()
        .lines()
        .filter(|l| l.contains("ERROR:"))
        .count()
}

/// Runs psql with `script` on stdin (each statement its own Query message).
fn psql_script(pg: &Postgres, host: &str, script: &str) -> String {
    let mut args = pg.conn_args();
    args[1] = host.to_string();
    let mut child = Command::new("psql")
        .args(&args)
        .args(["-X", "-q", "-d", "postgres"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

const SESSION: &str = "\
create table t (a int, b text);
select 1 as one;
selec 2;
select 1/0;
copy t from stdin;
1\tx
2\ty
3\tz
\\.
copy t to stdout;
select 'several'; select a from t where a > 1; select 3
";

fn find<'a>(reqs: &[&'a Value], sql_prefix: &str) -> Vec<&'a Value> {
    reqs.iter()
        .copied()
        .filter(|r| r["query"].as_str().unwrap().starts_with(sql_prefix))
        .collect()
}

fn check_session(records: &[Value], pg: &Postgres) {
    let kinds = schema::validate("pgwire_trace", records);
    assert_eq!(kinds, ["request", "summary"], "record kinds");
    let reqs = requests(records);
    let one = |p: &str| {
        let v = find(&reqs, p);
        assert_eq!(v.len(), 1, "{p:?} once in {reqs:#?}");
        v[0]
    };
    assert_eq!(one("select 1 as one")["rows"], 1);
    assert_eq!(one("select 1 as one")["status"], "ok");
    assert_eq!(one("selec 2")["status"], "42601");
    assert_eq!(one("select 1/0")["status"], "22012");
    assert_eq!(one("select 1/0")["error"], "division by zero");
    assert_eq!(one("copy t from stdin")["rows"], 3);
    assert_eq!(one("copy t from stdin")["tag"], "COPY 3");
    assert_eq!(one("copy t to stdout")["rows"], 3);
    // The multi-statement Query: three requests, each with its own result.
    assert_eq!(one("select 'several'")["rows"], 1);
    assert_eq!(one("select a from t where a > 1")["rows"], 2);
    assert_eq!(one("select 3")["rows"], 1);
    for r in &reqs {
        assert_eq!(r["pid"], reqs[0]["pid"]);
        assert_eq!(r["user"], "postgres");
        assert_eq!(r["database"], "postgres");
        assert_eq!(r["application"], "psql");
        assert!(r["duration_ns"].as_u64().unwrap() > 0);
    }
    let errors = reqs.iter().filter(|r| r["status"] != "ok").count();
    assert_eq!(errors, 2);
    assert_eq!(errors, server_log_errors(pg), "{}", pg.server_log());
    assert_eq!(stats(records)["errors"], 2);
    assert_eq!(stats(records)["lost"]["records"], 0);
    assert_eq!(stats(records)["malformed"], 0);
}

#[test]
fn psql_session_with_errors_copy_and_multi_statement_query() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(BIN, &["-p", &postmaster, "--json"]).unwrap();
    let out = psql_script(&pg, &pg.socket_dir.display().to_string(), SESSION);
    assert!(out.contains("division by zero"), "{out}");
    let records = tool.stop().unwrap().json();
    check_session(&records, &pg);
    let reqs = requests(&records);
    assert_eq!(reqs[0]["peer"], "[local]");
}

#[test]
fn record_then_read_gives_the_same_report_over_tcp() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session.pgw");
    let file_s = file.display().to_string();
    let tool = Traced::start(BIN, &["-p", &postmaster, "--json", "--record", &file_s]).unwrap();
    psql_script(&pg, "127.0.0.1", SESSION);
    let live = tool.stop().unwrap();
    assert!(live.status.success(), "{}", live.stderr);
    let live = live.json();
    check_session(&live, &pg);
    assert!(
        requests(&live)[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{:?}",
        requests(&live)[0]
    );
    // Offline, as a user without privileges would: the same requests, field for field.
    let offline = run_tool(BIN, &["--read", &file_s, "--json"]);
    assert!(offline.status.success(), "{}", offline.stderr);
    let offline = offline.json();
    assert_eq!(requests(&offline), requests(&live));
    let without_duration = |v: &Value| {
        let mut v = v.clone();
        let o = v.as_object_mut().unwrap();
        o.remove("ts_ns");
        o.remove("interval_ns");
        v
    };
    assert_eq!(
        without_duration(stats(&offline)),
        without_duration(stats(&live))
    );
    // A damaged capture: what comes before the damage is still reported, then the error.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let cut = run_tool(BIN, &["--read", &file_s, "--json"]);
    assert_eq!(cut.status.code(), Some(1));
    assert!(cut.stderr.contains("cut short"), "{}", cut.stderr);
    assert!(!requests(&cut.json()).is_empty());
}

/// `--read --summary` of a mapped capture shares its connections among threads, one per core:
/// the table is the one a single thread gives (`taskset` to one core), with
/// pg_stat_statements' calls; a cut capture, the same table of what came before the damage.
#[test]
fn a_summary_read_on_every_core_is_the_one_read_on_one() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    pg.psql("select pg_stat_statements_reset()").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgbench.pgw");
    let file_s = file.display().to_string();
    let tool = Traced::start(BIN, &["-p", &postmaster, "--summary", "--record", &file_s]).unwrap();
    pg.pgbench(&["-t", "150", "-c", "4", "-n"]).unwrap();
    assert!(tool.stop().unwrap().status.success());
    let theirs = pgss_calls(&pg);
    let read = |cores: Option<&str>| {
        let mut c = match cores {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let out = c
            .args(["--read", &file_s, "--summary", "-v", "--top", "100"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let threads = std::thread::available_parallelism().unwrap().get().min(8);
    let (code, shared, said) = read(None);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!(" on {threads} thread")),
        "{threads} cores: {said}"
    );
    let (_, one, said) = read(Some("0"));
    assert!(said.contains(" on 1 thread\n"), "{said}");
    assert_eq!(shared, one);
    // The table's CALLS of each pgbench statement: pg_stat_statements' calls.
    for k in ["update accounts", "select abalance", "insert history"] {
        let row = shared
            .lines()
            .find(|l| kind(&l.split_whitespace().skip(7).collect::<Vec<_>>().join(" ")) == Some(k))
            .unwrap_or_else(|| panic!("no row of {k}: {shared}"));
        let calls: u64 = row.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!((calls, Some(&calls)), (600, theirs.get(k)), "{k}: {row}");
    }
    // Cut: the records before the damage, alike on every core and on one.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let (code, shared, said) = read(None);
    assert_eq!(code, Some(1));
    assert!(said.contains("cut short"), "{said}");
    let (_, one, _) = read(Some("0"));
    assert_eq!(shared, one);
    assert!(shared.contains("pgbench_accounts"), "{shared}");
}

#[test]
fn passwords_are_overwritten_in_the_capture_file() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let password = "Pw-Cleartext-9876";
    pg.psql(&format!(
        "create role sekrit login password '{password}'; \
         create role scram login password '{password}'; \
         set password_encryption = 'md5'; create role mdfive login password '{password}'"
    ))
    .unwrap();
    // Its stored password is md5's, so that md5 is the exchange (not SCRAM in its place).
    let stored = pg
        .psql("select rolpassword like 'md5%' from pg_authid where rolname = 'mdfive'")
        .unwrap();
    assert_eq!(stored.trim(), "t");
    // A password in the clear for one role, SCRAM for another, md5 for the third, over TCP.
    pg.add_hba_rules(
        "host all sekrit 127.0.0.1/32 password\nhost all scram 127.0.0.1/32 scram-sha-256\n\
         host all mdfive 127.0.0.1/32 md5",
    )
    .unwrap();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.pgw");
    let file_s = file.display().to_string();
    let tool = Traced::start(BIN, &["-p", &postmaster, "--json", "--record", &file_s]).unwrap();
    let port = pg.port.to_string();
    for (user, sql) in [
        ("sekrit", "select 'in the clear'"),
        ("scram", "select 'scram'"),
        ("mdfive", "select 'md5'"),
    ] {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                user,
                "-d",
                "postgres",
                "-X",
            ])
            .args(["-Atc", sql])
            .env("PGPASSWORD", password)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let live = tool.stop().unwrap();
    assert!(live.status.success(), "{}", live.stderr);
    let bytes = std::fs::read(&file).unwrap();
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(password.as_bytes()),
        "the password is in the capture"
    );
    // SCRAM's client-first message (its nonce) and client-final (the proof) are gone too.
    assert!(!contains(b"n,,n="), "the SCRAM exchange is in the capture");
    assert!(!contains(b",p="), "the SCRAM proof is in the capture");
    // md5's answer: "md5" and 32 hex digits (salted, yet what a replay of the exchange needs).
    let md5_answer = bytes.windows(35).any(|w| {
        w.starts_with(b"md5")
            && w[3..]
                .iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    });
    assert!(!md5_answer, "the md5 answer is in the capture");
    assert!(!live.stdout.contains(password) && !live.stderr.contains(password));
    // The statements after the authentication still decode from the file.
    let offline = run_tool(BIN, &["--read", &file_s, "--json"]);
    assert!(offline.status.success(), "{}", offline.stderr);
    let offline = offline.json();
    let queries: Vec<&str> = requests(&offline)
        .iter()
        .filter_map(|r| r["query"].as_str())
        .collect();
    for sql in ["select 'in the clear'", "select 'scram'", "select 'md5'"] {
        assert!(queries.contains(&sql), "{sql} not in {queries:?}");
    }
    assert_eq!(requests(&offline), requests(&live.json()));
}

/// pg_stat_statements calls grouped by statement kind.
fn pgss_calls(pg: &Postgres) -> HashMap<&'static str, u64> {
    let out = pg
        .psql("select calls, query from pg_stat_statements where toplevel")
        .unwrap();
    let mut m = HashMap::new();
    for line in out.lines() {
        let (calls, q) = line.split_once('|').unwrap();
        if let Some(k) = kind(q) {
            *m.entry(k).or_default() += calls.parse::<u64>().unwrap();
        }
    }
    m
}

/// pgbench's TPC-B statements, by what they do.
fn kind(sql: &str) -> Option<&'static str> {
    let s = sql.trim_start().to_ascii_lowercase();
    [
        ("update pgbench_accounts", "update accounts"),
        ("select abalance", "select abalance"),
        ("update pgbench_tellers", "update tellers"),
        ("update pgbench_branches", "update branches"),
        ("insert into pgbench_history", "insert history"),
        ("begin", "begin"),
        ("end", "end"),
    ]
    .iter()
    .find(|(p, _)| s.starts_with(p))
    .map(|(_, k)| *k)
}

/// Where reads and writes are captured.
#[derive(Clone, Copy, PartialEq)]
enum Hooks {
    /// The default: the socket layer's tracepoints (this kernel has them).
    SocketLayer,
    /// --syscall-hooks: the read and write syscalls' exits (what kernels before 6.4 use).
    Syscalls,
}

fn run_pgbench_mode(mode: &str, hooks: Hooks) {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    pg.psql("select pg_stat_statements_reset()").unwrap();
    let mut args = vec!["-p", &postmaster, "--json", "-v"];
    if hooks == Hooks::Syscalls {
        args.push("--syscall-hooks");
    }
    let tool = Traced::start(BIN, &args).unwrap();
    pg.pgbench(&["-M", mode, "-t", "200", "-c", "2", "-n"])
        .unwrap();
    let finished = tool.stop().unwrap();
    // -v lists every attachment: the data hooks are the ones asked for, and only those.
    let attached = |hook: &str| finished.stderr.contains(&format!("attached {hook} at"));
    assert_eq!(
        (
            attached("raw tracepoint sock_recv_length"),
            attached("tracepoint syscalls:sys_exit_recvfrom")
        ),
        (hooks == Hooks::SocketLayer, hooks == Hooks::Syscalls),
        "{}",
        finished.stderr
    );
    // -v says what the kernel's maps hold: the ring buffer is the default --buffer-mb, 16.
    let maps = finished
        .stderr
        .lines()
        .find(|l| l.contains(" BPF maps, "))
        .unwrap_or_else(|| panic!("no map memory line: {}", finished.stderr));
    // (Kernels before 6.4 estimate map memory from key and value sizes: a ring shows 0.)
    if pgbpf_common::loader::kernel_at_least(6, 4) {
        assert!(maps.contains("EVENTS 16.0"), "{maps}");
    }
    let records = finished.json();
    let mut ours: HashMap<&str, u64> = HashMap::new();
    for r in requests(&records) {
        if let Some(k) = kind(r["query"].as_str().unwrap()) {
            *ours.entry(k).or_default() += 1;
        }
        if mode == "prepared" && r["protocol"] == "extended" {
            // A named statement's Execute reports the SQL its Parse gave.
            assert!(r["statement_name"].is_string(), "{r}");
        }
    }
    let theirs = pgss_calls(&pg);
    for k in [
        "update accounts",
        "select abalance",
        "update tellers",
        "update branches",
        "insert history",
    ] {
        assert_eq!(ours.get(k), Some(&400), "{mode}: {k}: {ours:?}");
        assert_eq!(
            ours.get(k),
            theirs.get(k),
            "{mode}: {k} vs pg_stat_statements"
        );
    }
    let reqs = requests(&records);
    let protocol = if mode == "simple" {
        "simple"
    } else {
        "extended"
    };
    assert!(
        reqs.iter()
            .filter(|r| kind(r["query"].as_str().unwrap()).is_some())
            .all(|r| r["protocol"] == protocol)
    );
    if mode != "simple" {
        // Parameters are shown: the SELECT's one parameter is an account id.
        let sel = reqs
            .iter()
            .find(|r| kind(r["query"].as_str().unwrap()) == Some("select abalance"))
            .unwrap();
        let p = sel["params"][0].as_str().unwrap();
        assert!(p.trim_matches('\'').parse::<u64>().is_ok(), "{sel}");
    }
    let errors = reqs.iter().filter(|r| r["status"] != "ok").count();
    assert_eq!(errors, server_log_errors(&pg), "{mode}");
    let s = stats(&records);
    assert_eq!(s["lost"]["records"], 0, "{s}");
    assert_eq!(s["unmatched"], 0, "{s}");
    assert_eq!(s["malformed"], 0, "{s}");
}

#[test]
fn pgbench_simple_counts_match_pg_stat_statements() {
    run_pgbench_mode("simple", Hooks::SocketLayer);
}

#[test]
fn pgbench_extended_counts_match_pg_stat_statements_with_syscall_hooks() {
    run_pgbench_mode("extended", Hooks::Syscalls);
}

#[test]
fn pgbench_prepared_counts_match_pg_stat_statements() {
    run_pgbench_mode("prepared", Hooks::SocketLayer);
}

#[test]
fn pipelined_statements_are_each_matched_to_their_own_response() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let script = pg.dir.path().join("pipeline.sql");
    // Each statement returns a different number of rows: a response paired with the wrong
    // request shows up as a wrong row count.
    std::fs::write(
        &script,
        "\\startpipeline\n\
         select generate_series(1, 1);\n\
         select generate_series(1, 2);\n\
         select generate_series(1, 3);\n\
         \\endpipeline\n",
    )
    .unwrap();
    pg.psql("select pg_stat_statements_reset()").unwrap();
    let tool = Traced::start(BIN, &["-p", &postmaster, "--json"]).unwrap();
    let s = script.display().to_string();
    pg.pgbench(&["-M", "extended", "-t", "50", "-c", "2", "-n", "-f", &s])
        .unwrap();
    let records = tool.stop().unwrap().json();
    let reqs = requests(&records);
    for n in 1..=3 {
        let sql = format!("select generate_series(1, {n});");
        let mine: Vec<_> = reqs.iter().filter(|r| r["query"] == sql).collect();
        assert_eq!(mine.len(), 100, "{sql}: {:?}", &reqs[..reqs.len().min(5)]);
        assert!(mine.iter().all(|r| r["rows"] == n), "{sql}: {mine:?}");
    }
    let calls = pg
        .psql(
            "select sum(calls) from pg_stat_statements where query like 'select generate_series%'",
        )
        .unwrap();
    assert_eq!(calls.trim(), "300");
    assert_eq!(stats(&records)["unmatched"], 0);
}

#[test]
fn joined_while_connections_are_busy_invents_nothing() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let mut bench = Command::new("pgbench")
        .args(pg.conn_args())
        .args(["-T", "6", "-c", "2", "-n", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut tool = Traced::start(BIN, &["-p", &postmaster, "--json"]).unwrap();
    assert!(
        tool.stderr_so_far().contains("2 open connections"),
        "{}",
        tool.stderr_so_far()
    );
    std::thread::sleep(Duration::from_secs(2));
    let records = tool.stop().unwrap().json();
    bench.wait().unwrap();
    let reqs = requests(&records);
    assert!(reqs.len() > 50, "{}", reqs.len());
    for r in &reqs {
        let k = kind(r["query"].as_str().unwrap());
        assert!(k.is_some(), "not a pgbench statement: {r}");
        assert_eq!(r["status"], "ok", "{r}");
        let rows = r["rows"].as_u64();
        match k.unwrap() {
            "begin" | "end" => assert_eq!(rows, None, "{r}"),
            _ => assert_eq!(rows, Some(1), "{r}"),
        }
    }
    assert_eq!(stats(&records)["malformed"], 0);
}

#[test]
fn client_side_by_application_pid_over_tcp_and_unix_socket() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let port = pg.port.to_string();
    let sock = pg.socket_dir.display().to_string();
    // The application: a shell that waits, then runs two psql clients.
    let mut app = Command::new("sh")
        .args([
            "-c",
            &format!(
                "sleep 2; psql -X -h 127.0.0.1 -p {port} -U postgres -d postgres -c 'select 41 as tcp'; \
                 psql -X -h {sock} -p {port} -U postgres -d postgres -c 'select 42 as unix'"
            ),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = app.id().to_string();
    let tool = Traced::start(BIN, &["-p", &pid, "--json"]).unwrap();
    app.wait().unwrap();
    let records = tool.stop().unwrap().json();
    let reqs = requests(&records);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0]["query"], "select 41 as tcp");
    assert_eq!(reqs[0]["peer"], format!("127.0.0.1:{port}"));
    assert_eq!(reqs[1]["query"], "select 42 as unix");
    assert_eq!(reqs[1]["peer"], format!("{sock}/.s.PGSQL.{port}"));
    assert!(reqs.iter().all(|r| r["rows"] == 1 && r["pid"] != 0));
}

#[test]
fn container_and_cgroup_options_see_that_server_only() {
    require_root();
    let _lock = exclusive();
    let host = cluster();
    let boxed = Postgres::start_with(&PgOptions {
        container: Some(ContainerSpec::default()),
        ..Default::default()
    })
    .expect("a PostgreSQL in a podman container");
    let id = boxed.container.as_ref().unwrap().id.clone();
    let tool = Traced::start(BIN, &["--container", &id[..12], "--json"]).unwrap();
    // The same processes named by their cgroup instead.
    let cgroup = boxed.container.as_ref().unwrap().cgroup_path().unwrap();
    let by_cgroup = Traced::start(BIN, &["--cgroup", &cgroup, "--json"]).unwrap();
    boxed.psql("select 'in the container'").unwrap();
    host.psql("select 'on the host'").unwrap();
    boxed.psql("select 'in the container again'").unwrap();
    for tool in [tool, by_cgroup] {
        let records = tool.stop().unwrap().json();
        let sqls: Vec<&str> = requests(&records)
            .iter()
            .map(|r| r["query"].as_str().unwrap())
            .collect();
        assert_eq!(
            sqls,
            vec![
                "select 'in the container'",
                "select 'in the container again'"
            ]
        );
    }
}

#[test]
fn summary_redact_and_bad_arguments() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(BIN, &["-p", &postmaster, "--summary", "--redact"]).unwrap();
    pg.psql("select 'secret-value' as s").unwrap();
    pg.psql("select 'other-value' as s").unwrap();
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(!out.stdout.contains("secret-value"), "{}", out.stdout);
    let row = out
        .stdout
        .lines()
        .find(|l| l.contains("select $1 as s"))
        .unwrap_or_else(|| panic!("no normalized row in {}", out.stdout));
    // CALLS ERRORS ROWS ...: both calls merged under one normalized statement.
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..3], &["2", "0", "2"], "{row}");
    // The same as NDJSON, with a report each second: statement rows, intervals, summary.
    let tool = Traced::start(BIN, &["-p", &postmaster, "--summary", "--json", "1"]).unwrap();
    pg.psql("select 'third-value' as s").unwrap();
    std::thread::sleep(Duration::from_millis(1300));
    let records = tool.stop().unwrap().json();
    let mut kinds = schema::validate("pgwire_trace", &records);
    kinds.sort();
    assert_eq!(kinds, ["interval", "statement", "summary"], "record kinds");
    assert_eq!(records.last().unwrap()["type"], "summary");
    let total = records
        .iter()
        .find(|r| r["type"] == "statement" && r["scope"] == "total")
        .unwrap();
    assert_eq!(total["query"], "select $1 as s");
    assert_eq!(total["calls"], 1);
    let bad = run_tool(BIN, &["--capture", "10"]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = run_tool(BIN, &["--read", "/nonexistent.pgw"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        bad.stderr.contains("cannot open /nonexistent.pgw"),
        "{}",
        bad.stderr
    );
    let bad = run_tool(BIN, &["--read", "/etc/passwd"]);
    assert!(
        bad.stderr.contains("not a pgwire_trace capture"),
        "{}",
        bad.stderr
    );
}

#[test]
fn a_closed_stdout_ends_it_quietly() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    assert_quiet_in_head(BIN, &["-p", &postmaster, "--summary"]);
    let json = ["-p", &postmaster, "--summary", "--json"];
    assert_quiet_in_head(BIN, &json);
    // With --record, the capture is still ended properly: every request made while it ran,
    // and the kernel's counters at its end.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("head.pgw");
    let file_s = file.display().to_string();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (run, made) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut made = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                made += u32::from(pg.psql("select 42 as head").is_ok());
                std::thread::sleep(Duration::from_millis(100));
            }
            made
        });
        let run = pgbpf_testkit::tool::into_head(
            BIN,
            &[
                "-p",
                &postmaster,
                "--summary",
                "--record",
                &file_s,
                "1",
                "20",
            ],
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (run, load.join().unwrap())
    });
    let run = run.unwrap();
    assert!(
        run.status.success() && run.ran < Duration::from_secs(20),
        "{run:?}"
    );
    let read = run_tool(BIN, &["--read", &file_s, "--json"]);
    assert!(read.status.success(), "{}", read.stderr);
    assert!(
        !read.stderr.contains("without the kernel's counters"),
        "{}",
        read.stderr
    );
    let seen = requests(&read.json())
        .iter()
        .filter(|r| r["query"] == "select 42 as head")
        .count();
    assert!(
        seen > 0 && seen <= made as usize,
        "{seen} of {made} recorded"
    );
}

#[test]
fn help_and_a_one_second_trace() {
    let help = run_tool(BIN, &["--help"]);
    assert!(help.status.success());
    assert!(help.stdout.contains("--record"), "{}", help.stdout);
    require_root();
    let _lock = exclusive();
    let out = run_tool(BIN, &["-d", "1"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("Hit Ctrl-C to end"), "{}", out.stderr);
    assert!(out.stdout.contains("requests ("), "{}", out.stdout);
}

#[test]
fn a_server_started_after_the_tool_is_traced_by_its_port() {
    require_root();
    let _lock = exclusive();
    let port = pgbpf_testkit::postgres::free_port().unwrap();
    let tool = Traced::start(BIN, &["--port", &port.to_string(), "--json"]).unwrap();
    // Its listening sockets are seen as it binds them: the Unix one by the path
    // .../.s.PGSQL.PORT, the TCP ones by the port.
    let pg = Postgres::start_with(&PgOptions {
        port: Some(port),
        ..Default::default()
    })
    .unwrap();
    pg.psql("select 'over the unix socket'").unwrap();
    let tcp = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres"
        ))
        .args(["-X", "-c", "select 'over tcp'"])
        .output()
        .unwrap();
    assert!(tcp.status.success(), "{tcp:?}");
    let records = tool.stop().unwrap().json();
    let reqs = requests(&records);
    let sqls: Vec<&str> = reqs.iter().filter_map(|r| r["query"].as_str()).collect();
    for q in ["select 'over the unix socket'", "select 'over tcp'"] {
        assert_eq!(find(&reqs, q).len(), 1, "{q}: {sqls:?}");
    }
}

#[test]
fn port_alone_and_statements_longer_than_the_capture_limit() {
    require_root();
    let _lock = exclusive();
    let traced = cluster();
    let other = Postgres::start_with(&PgOptions::default()).expect("a second cluster");
    let port = traced.port.to_string();
    // No target: every process, selected by the server port only.
    let tool = Traced::start(BIN, &["--port", &port, "--capture", "1024", "--json"]).unwrap();
    traced.psql("select pg_stat_statements_reset()").unwrap();
    let long = format!("select length('{}') as n", "x".repeat(20_000));
    assert_eq!(traced.psql(&long).unwrap().trim(), "20000");
    traced.psql("select 'after' as s").unwrap();
    other.psql("select 'on the other port'").unwrap();
    let records = tool.stop().unwrap().json();
    let reqs = requests(&records);
    let sqls: Vec<&str> = reqs.iter().map(|r| r["query"].as_str().unwrap()).collect();
    assert!(!sqls.iter().any(|s| s.contains("other port")), "{sqls:?}");
    let cut = find(&reqs, "select length('xxx");
    assert_eq!(cut.len(), 1, "{sqls:?}");
    let text = cut[0]["query"].as_str().unwrap();
    // The 1024-byte capture holds the message header and the first 1019 bytes of the body.
    assert!(
        long.starts_with(text) && text.len() < 1024,
        "{}",
        text.len()
    );
    assert_eq!(
        (&cut[0]["truncated"], &cut[0]["rows"]),
        (&Value::Bool(true), &Value::from(1))
    );
    let after = find(&reqs, "select 'after' as s");
    assert_eq!(after.len(), 1, "{sqls:?}");
    assert_eq!(after[0]["truncated"], false);
    let s = stats(&records);
    assert_eq!(
        (&s["malformed"], &s["unmatched"]),
        (&Value::from(0), &Value::from(0))
    );
    // Each 8 KiB read of the 20 KB message kept 1 KiB.
    assert!(
        s["truncated_bytes"].as_u64().unwrap() >= 20_000 - 3 * 1024,
        "{s}"
    );
    let calls = traced
        .psql("select calls from pg_stat_statements where query like 'select length(%'")
        .unwrap();
    assert_eq!(calls.trim(), "1");
}

#[test]
fn a_full_ring_buffer_is_counted_and_never_mispairs() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    // 1 MiB of ring buffer against result sets of tens of MB: records are dropped.
    let tool = Traced::start(
        BIN,
        &[
            "-p",
            &postmaster,
            "--buffer-mb",
            "1",
            "--capture",
            "16384",
            "--json",
        ],
    )
    .unwrap();
    let script: String = (0..10)
        .map(|i| {
            format!(
                "select repeat('x', 8000) from generate_series(1, {});\n",
                3000 + i
            )
        })
        .collect();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let pg_args = pg.conn_args();
            let script = script.clone();
            std::thread::spawn(move || {
                let mut child = Command::new("psql")
                    .args(&pg_args)
                    .args(["-X", "-q", "-o", "/dev/null", "-d", "postgres"])
                    .stdin(Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(script.as_bytes())
                    .unwrap();
                assert!(child.wait().unwrap().success());
            })
        })
        .collect();
    // The tool is fast enough to keep up at times: stopping it for half a second while the
    // clients pull rows makes the ring buffer overflow for certain.
    let signal = |sig: &str| {
        let pid = tool.pid().to_string();
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    std::thread::sleep(Duration::from_millis(300));
    signal("-STOP");
    std::thread::sleep(Duration::from_millis(500));
    signal("-CONT");
    for c in clients {
        c.join().unwrap();
    }
    // Once the flood is over, new connections decode whatever the machine's load did to the
    // flood itself (a busy machine can lose all of it).
    for _ in 0..3 {
        pg.psql("select 'after' as after_loss").unwrap();
    }
    let out = tool.stop().unwrap();
    let records = out.json();
    let s = stats(&records);
    assert!(
        s["lost"]["records"].as_u64().unwrap() > 0,
        "nothing lost: {s}"
    );
    assert!(s["lost"]["bytes"].as_u64().unwrap() > 0, "{s}");
    // Whatever is reported was paired with its own answer: the row count matches the
    // series length written in the statement.
    let reqs = find(&requests(&records), "select repeat");
    for r in &reqs {
        let sql = r["query"].as_str().unwrap();
        let n: u64 = sql
            .rsplit(", ")
            .next()
            .and_then(|t| t.trim_end_matches([')', ';']).parse().ok())
            .unwrap_or_else(|| panic!("{sql}"));
        assert_eq!(r["rows"], n, "{r}");
    }
    // Losses end in the connections they hit: the later ones are decoded whole.
    let after = find(&requests(&records), "select 'after'");
    assert_eq!(after.len(), 3, "{s}");
    assert!(after.iter().all(|r| r["rows"] == 1));
    let unmatched = s["unmatched"].as_u64().unwrap();
    assert!(
        reqs.len() as u64 + unmatched <= 20,
        "{} reported + {unmatched} unmatched of 20 sent: {s}",
        reqs.len()
    );
}
