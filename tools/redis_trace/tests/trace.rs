//! redis_trace against a real redis-server 7 (Debian's) with real clients (redis-benchmark,
//! redis-cli, raw sockets for inline commands): per-command calls equal INFO commandstats'
//! deltas, pipelined or not; error counts equal INFO errorstats; transactions, pub/sub,
//! RESP3, inline commands, a 1 MB value and CLIENT REPLY OFF decode; a slow command's
//! duration lies between SLOWLOG's and the client's round trip; a password appears in no
//! output and no capture file; `--read` of a capture gives the live report; the client side
//! (an application's pid), `--container`, MONITOR and a RESP3 subscriber from redis-cli;
//! every record matches the schema.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use pgbpf_testkit::{
    exclusive,
    redis::Redis,
    require_root, schema,
    tool::{Traced, assert_quiet_in_head, run_tool},
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_redis_trace");

fn trace(r: &Redis, extra: &[&str]) -> Traced {
    let pid = r.pid().to_string();
    let mut args = vec!["-p", pid.as_str(), "--json"];
    args.extend_from_slice(extra);
    Traced::start(BIN, &args).unwrap()
}

fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

fn summary(records: &[Value]) -> &Value {
    of_type(records, "summary")
        .last()
        .copied()
        .expect("a summary record")
}

/// Calls per command in the total `command_stats` rows, named as INFO commandstats does.
fn our_calls(records: &[Value]) -> HashMap<String, u64> {
    of_type(records, "command_stats")
        .iter()
        .filter(|r| r["scope"] == "total")
        .map(|r| {
            (
                r["command"]
                    .as_str()
                    .unwrap()
                    .to_ascii_lowercase()
                    .replacen(' ', "|", 1),
                r["calls"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn delta(after: &HashMap<String, u64>, before: &HashMap<String, u64>, cmd: &str) -> u64 {
    after.get(cmd).copied().unwrap_or(0) - before.get(cmd).copied().unwrap_or(0)
}

fn run_benchmark_and_compare(pipeline: &str) {
    require_root();
    let _lock = exclusive();
    let r = Redis::start().unwrap();
    let before = r.command_calls().unwrap();
    let tool = trace(&r, &["--summary"]);
    r.benchmark(&[
        "-t",
        "set,get,lpush,incr",
        "-n",
        "2000",
        "-c",
        "4",
        "-P",
        pipeline,
        "-q",
    ])
    .unwrap();
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    let kinds = schema::validate("redis_trace", &records);
    assert_eq!(kinds, ["command_stats", "summary"], "record kinds");
    let after = r.command_calls().unwrap();
    let ours = our_calls(&records);
    for cmd in ["set", "get", "lpush", "incr"] {
        let theirs = delta(&after, &before, cmd);
        assert!(
            theirs >= 2000,
            "-P {pipeline}: {cmd}: commandstats {theirs}"
        );
        assert_eq!(
            ours.get(cmd).copied(),
            Some(theirs),
            "-P {pipeline}: {cmd}: {ours:?}"
        );
    }
    let s = summary(&records);
    assert_eq!(s["unmatched"], 0, "-P {pipeline}: {s}");
    assert_eq!(s["malformed"], 0, "-P {pipeline}: {s}");
    assert_eq!(s["lost"]["records"], 0, "-P {pipeline}: {s}");
    assert_eq!(s["errors"], 0, "{s}");
}

#[test]
fn redis_benchmark_calls_match_commandstats() {
    run_benchmark_and_compare("1");
}

#[test]
fn pipelined_redis_benchmark_every_reply_paired() {
    run_benchmark_and_compare("16");
}

#[test]
fn oom_and_wrongtype_errors_match_errorstats() {
    require_root();
    let _lock = exclusive();
    let r = Redis::start_with(&[("maxmemory", "2mb"), ("maxmemory-policy", "noeviction")]).unwrap();
    r.cli(&["LPUSH", "alist", "x"]).unwrap();
    let tool = trace(&r, &["--capture", "65536"]);
    // Writes until refused: 2000 values of 2 KB fill 2 MB twice over (redis-benchmark stops
    // at the first error, so a connection of our own writes them), 100 at a time so that
    // every read and write fits --capture 65536.
    let value = "v".repeat(2_000);
    let mut conn = TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut replies = Vec::new();
    for batch in 0..20 {
        let mut sets = Vec::new();
        for i in 0..100 {
            let key = format!("k{batch}:{i}");
            sets.extend(
                format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                    key.len(),
                    value.len()
                )
                .bytes(),
            );
        }
        conn.write_all(&sets).unwrap();
        let want = replies.iter().filter(|&&c| c == b'\n').count() + 100;
        let mut buf = [0u8; 65536];
        while replies.iter().filter(|&&c| c == b'\n').count() < want {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "the server closed the connection");
            replies.extend(&buf[..n]);
        }
    }
    let refused = replies
        .split(|&c| c == b'\n')
        .filter(|l| l.starts_with(b"-OOM"))
        .count();
    let _ = r.cli(&["GET", "alist"]);
    let out = tool.stop().unwrap();
    let records = out.json();
    schema::validate("redis_trace", &records);
    let errors = r.error_counts().unwrap();
    let count = |code: &str| {
        of_type(&records, "command")
            .iter()
            .filter(|c| c["status"] == code)
            .count() as u64
    };
    let oom = errors.get("OOM").copied().unwrap_or(0);
    assert!(oom > 500, "the server refused few writes: {errors:?}");
    assert_eq!(oom, refused as u64, "errorstats against the replies read");
    assert_eq!(count("OOM"), oom, "{errors:?}");
    assert_eq!(count("WRONGTYPE"), 1);
    assert_eq!(count("WRONGTYPE"), errors["WRONGTYPE"]);
    let wrong = of_type(&records, "command")
        .into_iter()
        .find(|c| c["status"] == "WRONGTYPE")
        .unwrap();
    assert_eq!(wrong["command"], "GET");
    assert_eq!(wrong["key"], "alist");
    assert!(
        wrong["error"]
            .as_str()
            .unwrap()
            .starts_with("Operation against a key")
    );
    assert_eq!(summary(&records)["errors"], oom + 1);
}

/// Sends raw bytes and reads until `until` replies (CRLF-ended lines) came back.
fn raw_exchange(port: u16, send: &[u8], lines: usize) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(send).unwrap();
    let mut got = vec![];
    let mut buf = [0u8; 4096];
    while got.iter().filter(|&&c| c == b'\n').count() < lines {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend(&buf[..n]);
    }
    got
}

#[test]
fn transactions_pubsub_resp3_inline_big_values_and_no_reply() {
    require_root();
    let _lock = exclusive();
    let r = Redis::start().unwrap();
    let tool = trace(&r, &[]);
    let before = r.command_calls().unwrap();
    // redis-cli -n: no COMMAND DOCS fetch for hints.
    r.cli_stdin(&[], "MULTI\nSET counter 10\nINCR counter\nEXEC\n")
        .unwrap();
    // A subscriber and five messages published to it.
    let mut sub = r
        .cli_command()
        .args(["SUBSCRIBE", "news"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while r.cli(&["PUBSUB", "NUMSUB", "news"]).unwrap().lines().nth(1) != Some("1") {
        assert!(started.elapsed() < Duration::from_secs(10), "no subscriber");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..5 {
        r.cli(&["PUBLISH", "news", &format!("m{i}")]).unwrap();
    }
    // RESP3: HELLO 3, then a map reply.
    r.cli(&["HSET", "h", "a", "1", "b", "2"]).unwrap();
    r.cli(&["-3", "HGETALL", "h"]).unwrap();
    // Inline, as telnet sends it; and CLIENT REPLY OFF then two SETs, ON again.
    assert_eq!(raw_exchange(r.port, b"PING\r\n", 1), b"+PONG\r\n");
    let mut off = Vec::new();
    for words in [
        &["CLIENT", "REPLY", "OFF"][..],
        &["SET", "quiet1", "a"],
        &["SET", "quiet2", "b"],
        &["CLIENT", "REPLY", "ON"],
    ] {
        off.extend(format!("*{}\r\n", words.len()).bytes());
        for w in words {
            off.extend(format!("${}\r\n{w}\r\n", w.len()).bytes());
        }
    }
    assert_eq!(raw_exchange(r.port, &off, 1), b"+OK\r\n");
    // A 1 MB value, set and read back (more than the 8 KiB captured of each write).
    let big = "v".repeat(1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    std::fs::write(&file, &big).unwrap();
    let mut set = r.cli_command();
    set.args(["-x", "SET", "big"])
        .stdin(std::fs::File::open(&file).unwrap());
    assert!(set.output().unwrap().status.success());
    assert_eq!(r.cli(&["STRLEN", "big"]).unwrap().trim(), "1048576");
    let got = r.cli(&["GET", "big"]).unwrap();
    assert_eq!(got.trim_end().len(), 1 << 20);
    r.cli(&["PING"]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _ = sub.kill();
    let _ = sub.wait();
    let out = tool.stop().unwrap();
    let records = out.json();
    let kinds = schema::validate("redis_trace", &records);
    assert!(kinds.contains(&"transaction".to_string()), "{kinds:?}");
    let commands = of_type(&records, "command");
    let find = |name: &str| -> Vec<&Value> {
        commands
            .iter()
            .copied()
            .filter(|c| c["command"] == name)
            .collect()
    };
    // The transaction and each command in it, with EXEC's replies.
    let tx = of_type(&records, "transaction");
    assert_eq!(tx.len(), 1);
    assert_eq!(
        (tx[0]["commands"].as_u64(), tx[0]["status"].as_str()),
        (Some(2), Some("executed"))
    );
    let incr = find("INCR");
    assert_eq!(incr.len(), 1);
    assert_eq!(incr[0]["transaction"], tx[0]["transaction"]);
    assert_eq!(incr[0]["reply_type"], "integer");
    assert!(
        incr[0]["duration_ns"].is_null(),
        "timed as a whole: {}",
        incr[0]
    );
    // Five messages pushed, none paired as a reply.
    assert_eq!(summary(&records)["pushes"], 5, "{}", summary(&records));
    assert_eq!(find("SUBSCRIBE").len(), 1);
    assert_eq!(find("PUBLISH").len(), 5);
    // RESP3.
    let hello = find("HELLO");
    assert_eq!(hello.len(), 1);
    let hgetall = find("HGETALL");
    assert_eq!(hgetall[0]["reply_type"], "map", "{}", hgetall[0]);
    // Inline.
    let pings = find("PING");
    assert!(pings.iter().any(|p| p["inline"] == true), "{pings:?}");
    // No reply to the quiet SETs.
    let quiet: Vec<&Value> = find("SET")
        .into_iter()
        .filter(|c| c["key"].as_str().unwrap().starts_with("quiet"))
        .collect();
    assert_eq!(quiet.len(), 2);
    assert!(
        quiet
            .iter()
            .all(|c| c["status"] == "noreply" && c["duration_ns"].is_null())
    );
    // The big value: framed from its length, cut, paired.
    let big_set = find("SET").into_iter().find(|c| c["key"] == "big").unwrap();
    assert_eq!(big_set["truncated"], true);
    assert!(big_set["request_bytes"].as_u64().unwrap() > 1 << 20);
    let big_get = find("GET").into_iter().find(|c| c["key"] == "big").unwrap();
    assert!(
        big_get["reply_bytes"].as_u64().unwrap() > 1 << 20,
        "{big_get}"
    );
    assert_eq!(find("STRLEN").len(), 1);
    // Every command the server counted, we saw (redis-cli's COMMAND DOCS fetch aside: its
    // reply is too big to capture whole, so it is left unmatched).
    let after = r.command_calls().unwrap();
    for cmd in [
        "multi", "exec", "set", "incr", "publish", "hgetall", "ping", "get", "strlen",
    ] {
        let ours = commands
            .iter()
            .filter(|c| c["command"].as_str().unwrap().eq_ignore_ascii_case(cmd))
            .count() as u64;
        assert_eq!(ours, delta(&after, &before, cmd), "{cmd}");
    }
}

#[test]
fn a_slow_command_lies_between_slowlog_and_the_round_trip() {
    require_root();
    let _lock = exclusive();
    let r = Redis::start_with(&[
        ("slowlog-log-slower-than", "10000"),
        ("enable-debug-command", "yes"),
    ])
    .unwrap();
    let tool = trace(&r, &[]);
    let t = Instant::now();
    let reply = raw_exchange(
        r.port,
        b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$4\r\n0.05\r\n",
        1,
    );
    let round_trip = t.elapsed();
    let records = tool.stop().unwrap().json();
    assert_eq!(reply, b"+OK\r\n", "{}", String::from_utf8_lossy(&reply));
    let slow = r.cli(&["SLOWLOG", "GET", "1"]).unwrap();
    // redis-cli prints the entry's fields one per line: id, time, duration (us), args...
    let slowlog_us: u64 = slow.lines().nth(2).unwrap().trim().parse().unwrap();
    let ours = of_type(&records, "command")
        .into_iter()
        .find(|c| c["command"] == "DEBUG")
        .unwrap()["duration_ns"]
        .as_u64()
        .unwrap();
    assert!(
        ours >= slowlog_us * 1000,
        "ours {ours} ns, SLOWLOG {slowlog_us} us"
    );
    assert!(
        ours <= round_trip.as_nanos() as u64,
        "ours {ours} ns, round trip {round_trip:?}"
    );
}

#[test]
fn passwords_appear_in_no_output_and_no_capture_file() {
    require_root();
    let _lock = exclusive();
    let password = "pw-Secret-4242";
    let r = Redis::start_with(&[("requirepass", password)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cap.pgw");
    let file_s = file.display().to_string();
    let pid = r.pid().to_string();
    let tool = Traced::start(BIN, &["-p", &pid, "-T", "--record", &file_s]).unwrap();
    r.cli(&["SET", "k", "v"]).unwrap();
    let auth = format!("AUTH {password}\r\nPING\r\n");
    assert_eq!(
        raw_exchange(r.port, auth.as_bytes(), 2),
        b"+OK\r\n+PONG\r\n"
    );
    let hello = format!(
        "*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n${}\r\n{password}\r\n",
        password.len()
    );
    let got = raw_exchange(r.port, hello.as_bytes(), 1);
    assert!(got.starts_with(b"%"), "{}", String::from_utf8_lossy(&got));
    let out = tool.stop().unwrap();
    assert!(out.stdout.contains("AUTH (redacted)"), "{}", out.stdout);
    let bytes = std::fs::read(&file).unwrap();
    for (what, text) in [
        ("stdout", out.stdout.as_bytes()),
        ("stderr", out.stderr.as_bytes()),
        ("capture", &bytes),
    ] {
        assert!(
            !text
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "the password is in the {what}"
        );
    }
    // The capture reads back to the same commands.
    let read = run_tool(BIN, &["--read", &file_s]);
    assert!(read.status.success(), "{}", read.stderr);
    for cmd in [
        "AUTH (redacted)",
        "SET \"k\" \"v\"",
        "HELLO \"3\" \"AUTH\" (redacted) (redacted)",
    ] {
        assert!(read.stdout.contains(cmd), "{cmd} not in {}", read.stdout);
    }
}

#[test]
fn record_then_read_gives_the_same_report() {
    require_root();
    let _lock = exclusive();
    let r = Redis::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cap.pgw");
    let file_s = file.display().to_string();
    let tool = trace(&r, &["--record", &file_s]);
    r.benchmark(&[
        "-t",
        "set,get,lpush",
        "-n",
        "300",
        "-c",
        "2",
        "-P",
        "4",
        "-q",
    ])
    .unwrap();
    r.cli_stdin(&[], "MULTI\nINCR x\nEXEC\n").unwrap();
    let live = tool.stop().unwrap().json();
    let offline = run_tool(BIN, &["--read", &file_s, "--json"]);
    assert!(offline.status.success(), "{}", offline.stderr);
    let offline = offline.json();
    for kind in ["command", "transaction"] {
        assert_eq!(of_type(&offline, kind), of_type(&live, kind), "{kind}");
    }
    assert!(of_type(&live, "command").len() >= 900);
    let counts = |v: &Value| {
        (
            v["commands"].clone(),
            v["errors"].clone(),
            v["lost"].clone(),
        )
    };
    assert_eq!(counts(summary(&offline)), counts(summary(&live)));
    // Something that is no capture is refused (a PostgreSQL capture: common/capture unit tests).
    let e = run_tool(BIN, &["--read", "/dev/null"]);
    assert!(!e.status.success());
}

#[test]
fn keys_and_prefixes_with_summary() {
    require_root();
    let _lock = exclusive();
    let r = Redis::start().unwrap();
    let tool = trace(&r, &["--summary", "--keys"]);
    for i in 0..30 {
        r.cli(&["SET", &format!("user:{}", i % 3), "x"]).unwrap();
    }
    r.cli(&["GET", "session:1"]).unwrap();
    let records = tool.stop().unwrap().json();
    let kinds = schema::validate("redis_trace", &records);
    assert!(kinds.contains(&"key".to_string()), "{kinds:?}");
    let keys = of_type(&records, "key");
    let prefix = keys
        .iter()
        .find(|k| k["prefix"] == true && k["key"] == "user:")
        .unwrap();
    assert_eq!(prefix["calls"], 30);
    let key = keys
        .iter()
        .find(|k| k["prefix"] == false && k["key"] == "user:1")
        .unwrap();
    assert_eq!(key["calls"], 10);
}

/// A client that connects only when a line arrives on its stdin (so a tracer can attach
/// first), runs INCR `n` times one round trip at a time, and exits.
const INCR_CLIENT: &str = r#"
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()
s = socket.create_connection(("127.0.0.1", port))
for _ in range(n):
    s.sendall(b"*2\r\n$4\r\nINCR\r\n$7\r\nclients\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        reply += s.recv(64)
s.close()
"#;

#[test]
fn client_side_sees_an_applications_commands() {
    require_root();
    let _lock = exclusive();
    let r = Redis::start().unwrap();
    let n = 200;
    let mut client = std::process::Command::new("python3")
        .args(["-c", INCR_CLIENT, &r.port.to_string(), &n.to_string()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (pid, port) = (client.id().to_string(), r.port.to_string());
    let tool = Traced::start(BIN, &["-p", &pid, "--port", &port, "--json"]).unwrap();
    let before = r.command_calls().unwrap();
    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(client.wait().unwrap().success());
    // The trace ends with its only target.
    let out = tool.wait(Duration::from_secs(30)).unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    schema::validate("redis_trace", &records);
    let after = r.command_calls().unwrap();
    assert_eq!(delta(&after, &before, "incr"), n);
    let commands = of_type(&records, "command");
    assert_eq!(commands.len() as u64, n, "{}", out.stderr);
    for c in &commands {
        assert_eq!(c["command"], "INCR");
        assert_eq!(c["key"], "clients");
        assert_eq!(c["pid"].as_u64(), Some(u64::from(client.id())));
        assert_eq!(
            c["peer"],
            format!("127.0.0.1:{port}"),
            "the server's address"
        );
        assert_eq!(c["reply_type"], "integer");
    }
    assert_eq!(summary(&records)["unmatched"], 0);
    assert_eq!(r.cli(&["GET", "clients"]).unwrap().trim(), n.to_string());
}

#[test]
fn a_container_is_traced_alone() {
    require_root();
    let _lock = exclusive();
    let inside = Redis::start_in_container().unwrap();
    let host = Redis::start().unwrap();
    let id = inside.container().unwrap().id.clone();
    let tool = Traced::start(BIN, &["--container", &id[..12], "--summary", "--json"]).unwrap();
    let (inside_before, host_before) = (
        inside.command_calls().unwrap(),
        host.command_calls().unwrap(),
    );
    for (r, n) in [(&inside, "700"), (&host, "400")] {
        r.benchmark(&["-t", "set,get", "-n", n, "-c", "2", "-q"])
            .unwrap();
    }
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    schema::validate("redis_trace", &records);
    let ours = our_calls(&records);
    let (inside_after, host_after) = (
        inside.command_calls().unwrap(),
        host.command_calls().unwrap(),
    );
    for cmd in ["set", "get"] {
        assert!(
            delta(&host_after, &host_before, cmd) >= 400,
            "the host's server ran"
        );
        assert_eq!(
            ours.get(cmd).copied(),
            Some(delta(&inside_after, &inside_before, cmd)),
            "{cmd}: {ours:?}"
        );
    }
    assert_eq!(summary(&records)["unmatched"], 0);
}

#[test]
fn monitor_and_a_resp3_subscriber_from_redis_cli() {
    require_root();
    let _lock = exclusive();
    let r = Redis::start().unwrap();
    let tool = trace(&r, &[]);
    let piped = std::process::Stdio::piped;
    let mut monitor = r
        .cli_command()
        .arg("MONITOR")
        .stdout(piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !r.cli(&["CLIENT", "LIST"]).unwrap().contains("flags=O") {
        assert!(started.elapsed() < Duration::from_secs(10), "no MONITOR");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..5 {
        r.cli(&["SET", &format!("m{i}"), "x"]).unwrap();
    }
    // RESP3: HELLO 3, SUBSCRIBE answered by a push, messages pushed.
    let mut sub = r
        .cli_command()
        .args(["-3", "SUBSCRIBE", "news3"])
        .stdout(piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while r
        .cli(&["PUBSUB", "NUMSUB", "news3"])
        .unwrap()
        .lines()
        .nth(1)
        != Some("1")
    {
        assert!(started.elapsed() < Duration::from_secs(10), "no subscriber");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..4 {
        r.cli(&["PUBLISH", "news3", &format!("m{i}")]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    for child in [&mut monitor, &mut sub] {
        let _ = child.kill();
    }
    let monitor_out = monitor.wait_with_output().unwrap();
    let sub_out = sub.wait_with_output().unwrap();
    let out = tool.stop().unwrap();
    let records = out.json();
    schema::validate("redis_trace", &records);
    // What redis-cli printed: MONITOR's OK, then a line per command the server ran.
    let monitor_text = String::from_utf8_lossy(&monitor_out.stdout);
    let monitored = monitor_text.lines().filter(|l| l.contains(" \"")).count() as u64;
    assert!(monitored >= 9, "{monitor_text}");
    let messages = String::from_utf8_lossy(&sub_out.stdout)
        .matches("message")
        .count() as u64;
    assert_eq!(messages, 4, "{}", String::from_utf8_lossy(&sub_out.stdout));
    let s = summary(&records);
    assert_eq!(s["pushes"].as_u64(), Some(monitored + messages), "{s}");
    assert_eq!(s["unmatched"], 0, "{s}");
    let commands = of_type(&records, "command");
    let status_of = |name: &str| -> Vec<Value> {
        commands
            .iter()
            .filter(|c| c["command"] == name)
            .map(|c| c["status"].clone())
            .collect()
    };
    assert_eq!(status_of("MONITOR"), ["ok"]);
    assert_eq!(status_of("SUBSCRIBE"), ["ok"]);
    let hellos = status_of("HELLO");
    assert_eq!(hellos, ["ok"]);
}

#[test]
fn a_closed_stdout_ends_it_quietly() {
    require_root();
    let _lock = exclusive();
    let r = Redis::start().unwrap();
    let pid = r.pid().to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let port = r.port;
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = raw_exchange(port, b"PING\r\n", 1);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    assert_quiet_in_head(BIN, &["-p", &pid]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.join().unwrap();
}

#[test]
fn bad_targets_and_arguments_get_clear_errors() {
    let out = run_tool(BIN, &["--keys"]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("--summary"), "{}", out.stderr);
    let out = run_tool(BIN, &["--read", "/nonexistent/cap"]);
    assert!(
        out.stderr.contains("cannot open /nonexistent/cap"),
        "{}",
        out.stderr
    );
}
