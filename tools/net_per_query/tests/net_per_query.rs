//! net_per_query against a real PostgreSQL and psql through a TCP forwarder of the test's
//! own that counts the bytes each way: the client's row equals what the forwarder carried,
//! a 10 MB result and a COPY TO STDOUT's responses equal their size in the protocol, a COPY
//! FROM STDIN's data counts in its statement, not in the next one's request.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use pgbpf_testkit::{exclusive, postgres::Postgres, require_root, schema, tool::Traced};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_net_per_query");

/// Forwards connections to the server, counting (client to server, server to client).
struct Forwarder {
    port: u16,
    counts: Arc<[AtomicU64; 2]>,
    thread: JoinHandle<()>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, count: &AtomicU64) {
    let mut buf = [0u8; 65536];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Forwarder {
    /// Forwards the next `connections` connections.
    fn start(server_port: u16, connections: usize) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let c = counts.clone();
        let thread = std::thread::spawn(move || {
            let mut pumps = Vec::new();
            for _ in 0..connections {
                let (client, _) = listener.accept().unwrap();
                let server = TcpStream::connect(("127.0.0.1", server_port)).unwrap();
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (up, down) = (c.clone(), c.clone());
                pumps.push(std::thread::spawn(move || pump(c2, s2, &up[0])));
                pumps.push(std::thread::spawn(move || pump(server, client, &down[1])));
            }
            for p in pumps {
                p.join().unwrap();
            }
        });
        Forwarder {
            port,
            counts,
            thread,
        }
    }

    /// (client to server, server to client) once the connection ended.
    fn finish(self) -> (u64, u64) {
        self.thread.join().unwrap();
        (
            self.counts[0].load(Ordering::Relaxed),
            self.counts[1].load(Ordering::Relaxed),
        )
    }
}

/// The bytes PostgreSQL sends for `copy (select g, md5(g::text) from generate_series(1, n)
/// g) to stdout`: CopyOutResponse (2 columns), a CopyData per row, CopyDone,
/// CommandComplete "COPY n", ReadyForQuery.
fn copy_response(n: u64) -> u64 {
    let rows: u64 = (1..=n)
        .map(|g| 5 + g.to_string().len() as u64 + 1 + 32 + 1)
        .sum();
    let complete = 5 + format!("COPY {n}").len() as u64 + 1;
    (5 + 3 + 2 * 2) + rows + 5 + complete + 6
}

#[test]
fn a_clients_bytes_equal_what_a_forwarder_carried() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with_pgbench(&Default::default(), 1).unwrap();
    let pm = pg.postmaster_pid().unwrap().to_string();
    // psql's session, then pgbench's two (its set-up queries, its client).
    let forwarder = Forwarder::start(pg.port, 3);
    let tool = Traced::start(BIN, &["-p", &pm, "--json"]).unwrap();
    let data: String = (1..=20_000)
        .map(|i| format!("{i}\tsome text {i}\n"))
        .collect();
    let mut psql = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-p", &forwarder.port.to_string()])
        .args(["-c", "select repeat('x', 10000000)"])
        .args([
            "-c",
            "copy (select g, md5(g::text) from generate_series(1, 100000) g) to stdout",
        ])
        .args(["-c", "create table t (a int, b text)"])
        .args(["-c", "copy t from stdin"])
        .args(["-c", "select 1"])
        .env("PGSSLMODE", "disable")
        .stdin(std::process::Stdio::piped())
        // Not read while its input is written: 10 MB of output would fill the pipe.
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    psql.stdin
        .take()
        .unwrap()
        .write_all(data.as_bytes())
        .unwrap();
    let out = psql.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The extended protocol: Parse, Bind, Execute, Sync a statement (no query__start).
    let out = std::process::Command::new("pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &forwarder.port.to_string(),
        ])
        .args([
            "-M", "extended", "-S", "-n", "-c", "1", "-t", "200", "postgres",
        ])
        .env("PGSSLMODE", "disable")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (to_server, to_client) = forwarder.finish();
    // The backend's exit sends its last statement and its connection's bytes.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    let kinds = schema::validate("net_per_query", &records);
    assert_eq!(
        kinds,
        ["statement", "backend", "client", "summary"],
        "record kinds"
    );
    let row = |kind: &str, field: &str, value: &str| -> &Value {
        records
            .iter()
            .find(|r| r["type"] == kind && r[field] == value)
            .unwrap_or_else(|| panic!("no {kind} {value}: {records:#?}"))
    };
    let n = |r: &Value, f: &str| r[f].as_u64().unwrap();
    let client = row("client", "client", "127.0.0.1");
    eprintln!("forwarder: {to_server} to the server, {to_client} back; ours {client}");
    assert_eq!(
        n(client, "recv_bytes"),
        to_server,
        "received from the client"
    );
    assert_eq!(n(client, "sent_bytes"), to_client, "sent to the client");
    let repeat = row("statement", "query", "select repeat($1, $2)");
    // RowDescription (one text column "repeat"), a DataRow of 10^7 bytes, CommandComplete
    // "SELECT 1", ReadyForQuery.
    let select = (5 + 2 + 7 + 18) + (5 + 2 + 4 + 10_000_000) + (5 + 9) + 6;
    assert_eq!(n(repeat, "sent_bytes"), select, "the 10 MB result");
    assert_eq!(n(repeat, "calls"), 1);
    let copy = row(
        "statement",
        "query",
        "copy (select g, md5(g::text) from generate_series($1, $2) g) to stdout",
    );
    assert_eq!(
        n(copy, "sent_bytes"),
        copy_response(100_000),
        "COPY TO STDOUT"
    );
    // The COPY FROM STDIN's data (CopyData messages: 5 bytes each and the text) is its own;
    // the statement after it received its Query message only.
    let copy_in = row("statement", "query", "copy t from stdin");
    assert!(n(copy_in, "recv_bytes") > data.len() as u64, "{copy_in}");
    let select_1 = row("statement", "query", "select $1");
    assert_eq!(n(select_1, "recv_bytes"), 5 + "select 1".len() as u64 + 1);
    let lookup = row(
        "statement",
        "query",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    );
    assert_eq!(
        n(lookup, "calls"),
        200,
        "pgbench's extended-protocol lookups"
    );
    assert!(n(lookup, "recv_bytes") > 200 * 20 && n(lookup, "sent_bytes") > 200 * 20);
    let connection = row("statement", "query", "[connection]");
    assert_eq!(n(connection, "calls"), 3, "{connection}");
    let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(summary["lost"]["ringbuf_full"], 0);
    assert_eq!(summary["lost"]["threads_full"], 0);
}
