//! net_per_query against a real PostgreSQL and psql through a TCP forwarder of the test's
//! own that counts the bytes each way: the client's row equals what the forwarder carried,
//! a 10 MB result and a COPY TO STDOUT's responses equal their size in the protocol, a COPY
//! FROM STDIN's data counts in its statement, not in the next one's request. `--dev`: a
//! client in a network namespace of the test's own, reaching the server through a veth pair:
//! each side's packets and bytes equal /proc/net/dev's, all of the server's side PostgreSQL's.

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

/// A veth pair between this namespace (`HOST_DEV`, `HOST_ADDR`) and a network namespace of
/// its own (`PEER_DEV`, `PEER_ADDR`), quiet: IPv6 off on both ends (no neighbour discovery),
/// each end's neighbour entry static (no ARP). Removed when dropped.
struct VethPair;

const NETNS: &str = "pgbpf-npq";
const HOST_DEV: &str = "pgbpf-npq0";
const PEER_DEV: &str = "pgbpf-npq1";
const HOST_ADDR: &str = "10.213.7.1";
const PEER_ADDR: &str = "10.213.7.2";

fn sh(script: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-ec", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl VethPair {
    fn create() -> VethPair {
        // Left over by an interrupted run.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", NETNS])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", HOST_DEV])
            .status();
        let in_ns = format!("ip netns exec {NETNS}");
        sh(&format!(
            "ip netns add {NETNS}
             ip link add {HOST_DEV} type veth peer name {PEER_DEV}
             ip link set {PEER_DEV} netns {NETNS}
             echo 1 > /proc/sys/net/ipv6/conf/{HOST_DEV}/disable_ipv6
             {in_ns} sh -c 'echo 1 > /proc/sys/net/ipv6/conf/{PEER_DEV}/disable_ipv6'
             ip addr add {HOST_ADDR}/30 dev {HOST_DEV}
             {in_ns} ip addr add {PEER_ADDR}/30 dev {PEER_DEV}
             ip neigh replace {PEER_ADDR} dev {HOST_DEV} nud permanent \
                lladdr $({in_ns} cat /sys/class/net/{PEER_DEV}/address)
             {in_ns} ip neigh replace {HOST_ADDR} dev {PEER_DEV} nud permanent \
                lladdr $(cat /sys/class/net/{HOST_DEV}/address)
             ip link set {HOST_DEV} up
             {in_ns} ip link set {PEER_DEV} up"
        ));
        VethPair
    }

    /// (rx bytes, rx packets, tx bytes, tx packets) of a device in /proc/net/dev, in this
    /// namespace or the pair's.
    fn proc_net_dev(in_netns: bool, dev: &str) -> [u64; 4] {
        let text = if in_netns {
            sh(&format!("ip netns exec {NETNS} cat /proc/net/dev"))
        } else {
            std::fs::read_to_string("/proc/net/dev").unwrap()
        };
        let line = text
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{dev}:")))
            .unwrap_or_else(|| panic!("no {dev} in {text}"));
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        [f[0], f[1], f[8], f[9]]
    }

    /// TCP segments sent again so far (/proc/net/snmp's RetransSegs), in the host's
    /// namespace and in the pair's, summed.
    fn retransmitted_segments() -> u64 {
        let of = |text: String| -> u64 {
            let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
            let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
            let at = names.split_whitespace().position(|n| n == "RetransSegs");
            values
                .split_whitespace()
                .nth(at.unwrap())
                .unwrap()
                .parse()
                .unwrap()
        };
        of(std::fs::read_to_string("/proc/net/snmp").unwrap())
            + of(sh(&format!("ip netns exec {NETNS} cat /proc/net/snmp")))
    }

    /// The inode number of the pair's namespace.
    fn netns_inode() -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(format!("/run/netns/{NETNS}"))
            .unwrap()
            .ino()
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", NETNS])
            .status();
    }
}

/// A server listening on the host's end of the pair besides 127.0.0.1, trusting the client
/// at the other end.
fn server_on_the_pair() -> Postgres {
    let opts = pgbpf_testkit::postgres::PgOptions {
        settings: vec![("listen_addresses".into(), format!("127.0.0.1,{HOST_ADDR}"))],
        ..Default::default()
    };
    let pg = Postgres::start_with(&opts).unwrap();
    pg.add_hba_rules(&format!("host all all {PEER_ADDR}/32 trust"))
        .unwrap();
    pg
}

/// psql in the pair's namespace runs a 3 MB SELECT and another on `port` over the pair: what
/// /proc/net/dev counted meanwhile, [rx bytes, rx packets, tx bytes, tx packets], on the
/// host's end and on the client's.
fn statements_over_the_pair(port: u16) -> (Vec<u64>, Vec<u64>) {
    let host_before = VethPair::proc_net_dev(false, HOST_DEV);
    let peer_before = VethPair::proc_net_dev(true, PEER_DEV);
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", NETNS, "psql", "-X", "-q", "-h", HOST_ADDR])
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args(["-c", "select repeat('x', 3000000)", "-c", "select 1"])
        .env("PGSSLMODE", "disable")
        .env("PGGSSENCMODE", "disable")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The backend's exit and the connection's last packets (FIN, ACK).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let host_after = VethPair::proc_net_dev(false, HOST_DEV);
    let peer_after = VethPair::proc_net_dev(true, PEER_DEV);
    let delta = |a: [u64; 4], b: [u64; 4]| -> Vec<u64> { (0..4).map(|i| a[i] - b[i]).collect() };
    let (host, peer) = (
        delta(host_after, host_before),
        delta(peer_after, peer_before),
    );
    eprintln!("/proc/net/dev {HOST_DEV}: {host:?}, {PEER_DEV}: {peer:?}");
    (host, peer)
}

/// What the tool printed, once stopped: its records, valid against the schema.
fn records_of(tool: Traced) -> Vec<Value> {
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    schema::validate("net_per_query", &records);
    records
}

/// A device's `direction` record.
fn device<'r>(records: &'r [Value], name: &str, direction: &str) -> &'r Value {
    records
        .iter()
        .find(|r| r["type"] == "device" && r["device"] == name && r["direction"] == direction)
        .unwrap_or_else(|| panic!("no {name} {direction}: {records:#?}"))
}

fn n(r: &Value, f: &str) -> u64 {
    r[f].as_u64().unwrap()
}

/// [rx bytes, rx packets, tx bytes, tx packets] of device `name` as the tool counts them
/// (`prefix` "postgres_": PostgreSQL's part).
fn counted(records: &[Value], name: &str, prefix: &str) -> Vec<u64> {
    let (rx, tx) = (
        device(records, name, "received"),
        device(records, name, "sent"),
    );
    vec![
        n(rx, &format!("{prefix}bytes")),
        n(rx, &format!("{prefix}packets")),
        n(tx, &format!("{prefix}bytes")),
        n(tx, &format!("{prefix}packets")),
    ]
}

#[test]
fn dev_counts_equal_proc_net_dev_on_a_veth_pair() {
    require_root();
    let _lock = exclusive();
    let _pair = VethPair::create();
    let pg = server_on_the_pair();
    let pm = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(BIN, &["-p", &pm, "--dev", "--json"]).unwrap();
    let retransmitted_before = VethPair::retransmitted_segments();
    let (host, peer) = statements_over_the_pair(pg.port);
    let retransmitted = VethPair::retransmitted_segments() - retransmitted_before;
    let records = records_of(tool);
    // veth takes TSO packets of up to 64 KiB: the 3 MB response is 50 of them or more.
    assert!(host[3] > 40, "the 3 MB response took packets: {host:?}");
    assert_eq!(
        counted(&records, HOST_DEV, ""),
        host,
        "{HOST_DEV} against /proc/net/dev"
    );
    assert_eq!(
        counted(&records, PEER_DEV, ""),
        peer,
        "{PEER_DEV} against /proc/net/dev"
    );
    // Every packet on the server's side is its connection's (to or from its port); none on
    // the client's, where no traced server listens.
    assert_eq!(
        counted(&records, HOST_DEV, "postgres_"),
        host,
        "PostgreSQL's part"
    );
    assert_eq!(counted(&records, PEER_DEV, "postgres_"), vec![0; 4]);
    assert_eq!(
        n(device(&records, PEER_DEV, "received"), "netns"),
        VethPair::netns_inode()
    );
    // The statements' bytes are the TCP payload of those packets: each packet adds its
    // headers (Ethernet 14, IPv4 20, TCP 20 to 40 bytes), and a segment TCP sent again (a
    // busy machine's veth backlog full) is on the device twice: up to 64 KiB more each.
    let client = records
        .iter()
        .find(|r| r["type"] == "client" && r["client"] == PEER_ADDR)
        .unwrap_or_else(|| panic!("no client {PEER_ADDR}: {records:#?}"));
    for (payload, (bytes, packets)) in [
        (n(client, "recv_bytes"), (host[0], host[1])),
        (n(client, "sent_bytes"), (host[2], host[3])),
    ] {
        let headers = bytes - payload;
        assert!(
            (54 * packets..=74 * packets + retransmitted * 65536).contains(&headers),
            "{bytes} bytes in {packets} packets for {payload} of payload \
             ({retransmitted} segments sent again)"
        );
    }
    let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(summary["lost"]["devices_full"], 0);
}

/// A server named by its data directory restarts listening on another port: once it is ready
/// the tool reads its new port, and the packets to and from it are PostgreSQL's as before
/// (without that, none of them would be: the port read at start is no longer used).
#[test]
fn a_restarted_servers_new_port_is_read_once_it_is_ready() {
    require_root();
    let _lock = exclusive();
    let _pair = VethPair::create();
    let mut pg = server_on_the_pair();
    let data = pg.dir.path().join("data");
    let mut tool = Traced::start(BIN, &["-D", data.to_str().unwrap(), "--dev", "--json"]).unwrap();
    let old_port = pg.port;
    let new_port = pgbpf_testkit::postgres::free_port().unwrap();
    pg.restart_under(&mut tool, new_port, &[]).unwrap();
    assert_ne!(pg.port, old_port);
    let (host, _) = statements_over_the_pair(pg.port);
    let records = records_of(tool);
    assert!(host[3] > 40, "the 3 MB response took packets: {host:?}");
    assert_eq!(
        counted(&records, HOST_DEV, "postgres_"),
        host,
        "PostgreSQL's part, on its new port {}",
        pg.port
    );
}
