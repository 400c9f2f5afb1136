//! redis_trace on TLS connections of a real redis-server 7 (Debian's is built with TLS)
//! listening on `--tls-port` with a certificate made by `openssl req`: redis-benchmark
//! `--tls` is decoded from the plaintext of uprobes on libssl, and its calls per command
//! equal INFO commandstats' deltas; with `--no-tls` the connections are reported as
//! encrypted, once each, with the reason, and nothing is decoded from their bytes.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use pgbpf_testkit::{exclusive, redis::Redis, require_root, tool::Traced};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_redis_trace");

fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

#[test]
fn redis_benchmark_over_tls_matches_commandstats() {
    require_root();
    let _lock = exclusive();
    let r = Redis::start_tls().unwrap();
    let before = r.command_calls().unwrap();
    let pid = r.pid().to_string();
    let tool = Traced::start(BIN, &["-p", &pid, "--json"]).unwrap();
    r.benchmark_tls(&["-t", "set,get", "-n", "2000", "-c", "2", "-q"])
        .unwrap();
    let records = tool.stop().unwrap().json();
    let after = r.command_calls().unwrap();
    let commands = of_type(&records, "command");
    let mut ours: HashMap<String, u64> = HashMap::new();
    for c in &commands {
        assert_eq!(c["tls"], true, "{c}");
        *ours
            .entry(c["command"].as_str().unwrap().to_ascii_lowercase())
            .or_default() += 1;
    }
    for cmd in ["set", "get"] {
        let theirs = after.get(cmd).copied().unwrap_or(0) - before.get(cmd).copied().unwrap_or(0);
        assert!(theirs >= 2000, "{cmd}: {theirs}");
        assert_eq!(ours.get(cmd).copied(), Some(theirs), "{cmd}: {ours:?}");
    }
    let s = of_type(&records, "summary")[0];
    assert_eq!(
        (s["encrypted"].as_u64(), s["malformed"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["lost"]["records"], 0, "{s}");
}

#[test]
fn no_tls_reports_encrypted_and_decodes_nothing() {
    require_root();
    let _lock = exclusive();
    let r = Redis::start_tls().unwrap();
    let pid = r.pid().to_string();
    let tool = Traced::start(BIN, &["-p", &pid, "--json", "--no-tls"]).unwrap();
    r.benchmark_tls(&["-t", "set", "-n", "500", "-c", "2", "-q"])
        .unwrap();
    let records = tool.stop().unwrap().json();
    assert!(of_type(&records, "command").is_empty(), "nothing decoded");
    let encrypted = of_type(&records, "encrypted");
    // redis-benchmark opens a connection per client, and one more for CONFIG GET first.
    assert!((2..=3).contains(&encrypted.len()), "{encrypted:?}");
    assert!(
        encrypted
            .iter()
            .all(|e| e["reason"].as_str().unwrap().contains("--no-tls"))
    );
    let s = of_type(&records, "summary")[0];
    assert_eq!(s["encrypted"].as_u64(), Some(encrypted.len() as u64), "{s}");
    assert_eq!(s["malformed"], 0, "{s}");
}
