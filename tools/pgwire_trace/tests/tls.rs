//! pgwire_trace on TLS connections of a real PostgreSQL with `ssl = on`, a certificate made
//! by `openssl req` and TCP allowed over TLS only: the plaintext comes from uprobes on
//! libssl. Counts are checked against pg_stat_statements and errors against the server log,
//! on the server side (a connection opened before the trace joined) and on the client side
//! (pgbench's pid); a TLS capture replays with pg_replay; `--no-tls` reports the
//! connections as encrypted with the reason and decodes nothing, and so does a client with
//! a TLS of its own (busybox's ssl_client); a server in a podman container is read through
//! the libssl in its root; no uprobe is left in libssl after the tool exits or is killed.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    io::{Read as _, Seek as _, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

use pgbpf_testkit::{
    exclusive,
    postgres::{PgOptions, Postgres},
    require_root, statement_key,
    tool::Traced,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pgwire_trace");

fn tls_cluster() -> Postgres {
    Postgres::start_with_pgbench(
        &PgOptions {
            pg_stat_statements: true,
            tls: true,
            ..Default::default()
        },
        1,
    )
    .expect("a PostgreSQL cluster with ssl = on")
}

fn requests(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["type"] == "request").collect()
}

fn summary(records: &[Value]) -> &Value {
    records.iter().rfind(|r| r["type"] == "summary").unwrap()
}

/// pg_stat_statements' calls by statement text (as `statement_key` spells it).
fn pgss(pg: &Postgres) -> HashMap<String, u64> {
    pg.psql("select calls || E'\\x1f' || query from pg_stat_statements where toplevel")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('\u{1f}'))
        .map(|(c, q)| (statement_key(q), c.parse().unwrap()))
        .collect()
}

/// Our requests' counts by normalized statement text.
fn ours(reqs: &[&Value]) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for r in reqs {
        let q = pgbpf_common::sql::normalize(r["query"].as_str().unwrap());
        *m.entry(statement_key(&q)).or_default() += 1;
    }
    m
}

const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

#[test]
fn tls_server_side_counts_equal_pg_stat_statements_and_a_joined_connection_decodes() {
    require_root();
    let _lock = exclusive();
    let pg = tls_cluster();
    // A TLS session opened before the trace: joined midway, it decodes from its next query.
    let mut early = Command::new("psql")
        .arg(pg.tcp_conninfo("require"))
        .args(["-X", "-q", "-A", "-t"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut early_in = early.stdin.take().unwrap();
    early_in.write_all(b"select 1;\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    pg.psql("select pg_stat_statements_reset()").unwrap();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let mut tool = Traced::start(BIN, &["-p", &postmaster, "--json"]).unwrap();
    assert!(
        tool.stderr_so_far().contains("TLS through"),
        "the start-up line names the probed libssl: {}",
        tool.stderr_so_far()
    );
    for mode in ["extended", "prepared"] {
        pgbpf_testkit::run(&mut pg.pgbench_tls(&["-n", "-S", "-M", mode, "-c", "2", "-t", "100"]))
            .unwrap();
    }
    let failing = Command::new("psql")
        .arg(pg.tcp_conninfo("require"))
        .args(["-X", "-q", "-c", "select 1/0"])
        .output()
        .unwrap();
    assert!(!failing.status.success());
    // Joined midway, the decoder finds its step at the first answer: the statements after
    // that one are reported.
    early_in
        .write_all(b"select 4241;\nselect 4242 as joined;\n\\q\n")
        .unwrap();
    drop(early_in);
    early.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let records = tool.stop().unwrap().json();
    let reqs = requests(&records);
    let tcp: Vec<&Value> = reqs
        .iter()
        .copied()
        .filter(|r| r["peer"].as_str().unwrap().starts_with("127.0.0.1"))
        .collect();
    assert!(!tcp.is_empty());
    assert!(
        tcp.iter().all(|r| r["tls"] == true),
        "every TCP request is TLS"
    );
    let (ours, theirs) = (ours(&tcp), pgss(&pg));
    assert_eq!(ours.get(SELECT), Some(&400), "{ours:?}");
    assert_eq!(
        ours.get(SELECT),
        theirs.get(SELECT),
        "vs pg_stat_statements"
    );
    let errors = tcp.iter().filter(|r| r["status"] != "ok").count();
    let logged = pg.server_log().matches("ERROR:").count();
    assert_eq!((errors, logged), (1, 1), "errors against the server log");
    assert!(
        tcp.iter().any(|r| r["query"] == "select 4242 as joined"),
        "the connection opened before the trace is decoded"
    );
    let s = summary(&records);
    assert_eq!(s["encrypted"], 0, "{s}");
    assert_eq!(s["malformed"], 0, "{s}");
    assert_eq!(s["lost"]["records"], 0, "{s}");
}

#[test]
fn tls_client_side_by_pgbench_pid() {
    require_root();
    let _lock = exclusive();
    let pg = tls_cluster();
    let mut bench = pg
        .pgbench_tls(&["-n", "-S", "-M", "extended", "-c", "1", "-T", "5"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let pid = bench.id().to_string();
    pg.psql("select pg_stat_statements_reset()").unwrap();
    let tool = Traced::start(BIN, &["-p", &pid, "--json", "-d", "2"]).unwrap();
    let records = tool.wait(Duration::from_secs(30)).unwrap().json();
    assert!(bench.wait().unwrap().success());
    let reqs = requests(&records);
    assert!(reqs.len() > 100, "{} requests", reqs.len());
    assert!(
        reqs.iter()
            .all(|r| r["tls"] == true && r["pid"] == bench.id())
    );
    assert!(
        reqs.iter()
            .all(|r| statement_key(r["query"].as_str().unwrap()) == SELECT)
    );
    // Nothing invented: no more than the server ran while we looked.
    let theirs = pgss(&pg).get(SELECT).copied().unwrap_or(0);
    assert!(reqs.len() as u64 <= theirs, "{} > {theirs}", reqs.len());
    assert_eq!(summary(&records)["malformed"], 0);
}

#[test]
fn no_tls_reports_encrypted_with_the_reason_and_decodes_nothing() {
    require_root();
    let _lock = exclusive();
    let pg = tls_cluster();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(BIN, &["-p", &postmaster, "--json", "--no-tls"]).unwrap();
    let out = pg
        .pgbench_tls(&["-n", "-S", "-c", "2", "-t", "50"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let records = tool.stop().unwrap().json();
    let tcp_requests = requests(&records)
        .into_iter()
        .filter(|r| r["peer"].as_str().unwrap().starts_with("127.0.0.1"))
        .count();
    assert_eq!(tcp_requests, 0, "nothing decoded from encrypted bytes");
    let encrypted: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "encrypted")
        .collect();
    // pgbench's first connection (it checks the tables) and one per client, each once.
    assert_eq!(encrypted.len(), 3, "each connection once: {encrypted:?}");
    assert!(
        encrypted
            .iter()
            .all(|e| e["reason"].as_str().unwrap().contains("--no-tls")),
        "{encrypted:?}"
    );
    let s = summary(&records);
    assert_eq!(
        (s["encrypted"].as_u64(), s["malformed"].as_u64()),
        (Some(3), Some(0))
    );
}

/// A PostgreSQL message of type `tag` (0: the untyped start-up message) with `body`.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = if tag == 0 { vec![] } else { vec![tag] };
    m.extend(((body.len() + 4) as u32).to_be_bytes());
    m.extend(body);
    m
}

/// Reads backend messages up to ReadyForQuery; their type bytes.
/// The tags of the messages up to ReadyForQuery, and the text of any error or notice among
/// them (for a failing assertion to show).
fn until_ready(from: &mut impl std::io::Read) -> (Vec<u8>, String) {
    let (mut tags, mut said) = (vec![], String::new());
    loop {
        let mut head = [0u8; 5];
        from.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        from.read_exact(&mut body).unwrap();
        tags.push(head[0]);
        if matches!(head[0], b'E' | b'N') {
            said += &String::from_utf8_lossy(&body).replace('\0', " ");
        }
        if head[0] == b'Z' {
            return (tags, said);
        }
    }
}

/// busybox's ssl_client, a static binary with a TLS of its own (no libssl), carries a
/// session we start in the clear (SSLRequest, 'S') over the socket we hand it: traced by its
/// pid, the connection is reported once as encrypted with the reason, and nothing is decoded
/// (no garbage taken for protocol). ssl_client speaks TLS 1.2 with SHA-1 signatures only,
/// which OpenSSL 3 accepts below security level 1: this cluster's own setting.
#[test]
fn a_client_with_its_own_tls_is_reported_encrypted_and_not_decoded() {
    use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with(&PgOptions {
        tls: true,
        settings: vec![("ssl_ciphers".into(), "HIGH:@SECLEVEL=0".into())],
        ..Default::default()
    })
    .unwrap();
    // The client, started on a socket that asked for TLS, and the tool attached to it.
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", pg.port)).unwrap();
    sock.write_all(&message(0, &80_877_103u32.to_be_bytes()))
        .unwrap();
    let mut answer = [0u8];
    sock.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], b'S', "the server accepts TLS");
    let fd = sock.as_raw_fd();
    let mut cmd = Command::new("busybox");
    cmd.args(["ssl_client", "-s", "3", "-n", "localhost"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: only dup2 and fcntl, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself leaves close-on-exec set, and the socket is fd 3 whenever fd 3
            // was free when it was opened (a clean-clone run lost ssl_client's socket so, three
            // times): the flag is cleared either way.
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut client = cmd.spawn().expect("busybox ssl_client (busybox-static)");
    let pid = client.id();
    let tool = Traced::start(BIN, &["-p", &pid.to_string(), "--json"]).unwrap();
    let (mut to, mut from) = (client.stdin.take().unwrap(), client.stdout.take().unwrap());
    to.write_all(&message(
        0,
        b"\0\x03\0\0user\0postgres\0database\0postgres\0\0",
    ))
    .unwrap();
    let (tags, said) = until_ready(&mut from);
    assert_eq!(tags.first(), Some(&b'R'), "logged in: {tags:?} {said}");
    for _ in 0..3 {
        to.write_all(&message(b'Q', b"select 1\0")).unwrap();
        // RowDescription, DataRow, CommandComplete, ReadyForQuery: the server answered.
        let (tags, said) = until_ready(&mut from);
        assert_eq!(tags, b"TDCZ", "{said}");
    }
    let records = tool.stop().unwrap().json();
    to.write_all(&message(b'X', b"")).unwrap();
    // ssl_client outlives its input while the socket is open (this process holds it too).
    drop((to, sock));
    let _ = client.kill();
    let _ = client.wait();
    assert!(
        requests(&records).is_empty(),
        "nothing decoded: {records:?}"
    );
    let encrypted: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "encrypted")
        .collect();
    assert_eq!(encrypted.len(), 1, "once: {encrypted:?}");
    assert_eq!(encrypted[0]["pid"], pid);
    let reason = encrypted[0]["reason"].as_str().unwrap();
    assert!(reason.contains("maps no libssl"), "{reason}");
    let s = summary(&records);
    assert_eq!(
        (s["encrypted"].as_u64(), s["malformed"].as_u64()),
        (Some(1), Some(0))
    );
}

/// A TLS server in a podman container (its own root, the host's network): the libssl mapped
/// in there, reached through /proc/PID/root, is the one probed, and the plaintext of its
/// connections counts what pg_stat_statements counts.
#[test]
fn tls_in_a_container_is_read_through_its_own_libssl() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with_pgbench(
        &PgOptions {
            pg_stat_statements: true,
            tls: true,
            container: Some(pgbpf_testkit::container::ContainerSpec {
                host_network: true,
                ..Default::default()
            }),
            ..Default::default()
        },
        1,
    )
    .expect("a PostgreSQL with ssl = on in a podman container");
    let id = pg.container.as_ref().unwrap().id.clone();
    let mut tool = Traced::start(BIN, &["--container", &id[..12], "--json"]).unwrap();
    let started = tool.stderr_so_far();
    assert!(started.contains("TLS through /"), "{started}");
    pg.psql("select pg_stat_statements_reset()").unwrap();
    pgbpf_testkit::run(
        &mut pg.pgbench_tls(&["-n", "-S", "-M", "extended", "-c", "2", "-t", "100"]),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let records = tool.stop().unwrap().json();
    let reqs: Vec<&Value> = requests(&records)
        .into_iter()
        .filter(|r| r["tls"] == true)
        .collect();
    assert_eq!(ours(&reqs).get(SELECT), pgss(&pg).get(SELECT), "{reqs:?}");
    assert_eq!(ours(&reqs).get(SELECT), Some(&200));
    assert_eq!(summary(&records)["malformed"], 0);
}

/// The first byte of the probed read function in `pid`'s memory (through its libssl
/// mapping): where the TLS read probe goes, as the tool chooses it.
fn read_probe_byte(pid: u32) -> u8 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let lib = maps
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .nth(5)
                .filter(|p| p.contains("libssl.so"))
        })
        .unwrap()
        .to_string();
    let host = format!("/proc/{pid}/root{lib}");
    let elf = pgbpf_common::elf::ElfFile::open(std::path::Path::new(&host)).unwrap();
    let sites = pgbpf_capture::tls::sites::plan(&elf).unwrap();
    let site = sites
        .iter()
        .find(|s| s.prog.starts_with("ssl_read"))
        .unwrap();
    let offset = site.offset;
    // The mapping of the file that holds that offset.
    let addr = maps
        .lines()
        .filter(|l| l.ends_with(lib.as_str()))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (start, end) = f[0].split_once('-').unwrap();
            let (start, end) = (
                u64::from_str_radix(start, 16).unwrap(),
                u64::from_str_radix(end, 16).unwrap(),
            );
            let file_off = u64::from_str_radix(f[2], 16).unwrap();
            (offset >= file_off && offset < file_off + (end - start))
                .then(|| start + offset - file_off)
        })
        .unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    mem.seek(std::io::SeekFrom::Start(addr)).unwrap();
    let mut b = [0u8];
    mem.read_exact(&mut b).unwrap();
    b[0]
}

#[test]
#[cfg(target_arch = "x86_64")]
fn no_uprobe_is_left_in_libssl_after_exit_or_kill() {
    require_root();
    let _lock = exclusive();
    let pg = tls_cluster();
    let postmaster = pg.postmaster_pid().unwrap();
    let before = read_probe_byte(postmaster);
    let arg = postmaster.to_string();
    for kill in [false, true] {
        let tool = Traced::start(BIN, &["-p", &arg]).unwrap();
        // A uprobe is a breakpoint instruction (int3) over the function's first byte.
        assert_eq!(read_probe_byte(postmaster), 0xcc, "attached");
        if kill {
            drop(tool); // SIGKILL
        } else {
            tool.stop().unwrap();
        }
        // The kernel removes each probe as it closes its event, one RCU grace period
        // (tens of milliseconds) apart.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while read_probe_byte(postmaster) != before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(read_probe_byte(postmaster), before, "kill -9: {kill}");
    }
}

/// pg_replay, built beside this test by the workspace's `cargo test`.
fn pg_replay() -> String {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("pg_replay");
    assert!(
        bin.exists(),
        "{} not built: run the workspace's cargo test",
        bin.display()
    );
    bin.display().to_string()
}

#[test]
fn a_tls_capture_replays_with_pg_replay_like_a_plaintext_one() {
    require_root();
    let _lock = exclusive();
    let pg = tls_cluster();
    let target = Postgres::start_with_pgbench(
        &PgOptions {
            pg_stat_statements: true,
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tls.pgw");
    let file_s = file.display().to_string();
    let postmaster = pg.postmaster_pid().unwrap().to_string();
    pg.psql("select pg_stat_statements_reset()").unwrap();
    let tool = Traced::start(BIN, &["-p", &postmaster, "--summary", "--record", &file_s]).unwrap();
    let out = pg
        .pgbench_tls(&["-n", "-S", "-M", "prepared", "-c", "2", "-t", "50"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(tool.stop().unwrap().status.success());
    target.psql("select pg_stat_statements_reset()").unwrap();
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres",
        target.socket_dir.display(),
        target.port
    );
    let replay = pgbpf_testkit::tool::run_tool(
        &pg_replay(),
        &["--target", &conninfo, "--speed", "max", "--json", &file_s],
    );
    assert!(replay.status.success(), "{}", replay.stderr);
    let s = replay
        .json()
        .into_iter()
        .find(|r| r["type"] == "summary")
        .unwrap();
    assert_eq!(s["input"]["encrypted_sessions"], 0, "{s}");
    assert_eq!(pgss(&target).get(SELECT), Some(&100));
    assert_eq!(pgss(&target).get(SELECT), pgss(&pg).get(SELECT));
}
