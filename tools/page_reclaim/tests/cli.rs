//! page_reclaim as a user runs it: help, a short trace, intervals, JSON, and every kind of bad
//! input (unknown pid or container, zero interval, no privileges, no tracefs).

use pgbpf_testkit::{
    require_root, schema,
    tool::{assert_quiet_in_head, run_tool},
};

const BIN: &str = env!("CARGO_BIN_EXE_page_reclaim");

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(lines[0].starts_with("page_reclaim: error: "), "{stderr}");
    lines[0]
}

#[test]
fn help_shows_usage_and_examples() {
    let out = run_tool(BIN, &["--help"]);
    assert!(out.status.success());
    assert!(
        out.stdout
            .contains("Usage: page_reclaim [OPTIONS] [INTERVAL] [COUNT]")
    );
    assert!(out.stdout.contains("--container <ID>") && out.stdout.contains("Examples:"));
}

#[test]
fn smoke_one_second_trace() {
    require_root();
    let out = run_tool(BIN, &["-d", "1"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Tracing memory reclaim of all processes"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("total over 1s"), "{}", out.stdout);
    assert!(
        out.stdout.contains("lost: 0 episodes (map full)"),
        "{}",
        out.stdout
    );
}

#[test]
fn intervals_stop_after_count_and_json_parses() {
    require_root();
    let out = run_tool(BIN, &["--json", "-T", "1", "2"]);
    assert!(out.status.success(), "{}", out.stderr);
    let records: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    let summary: Vec<_> = records.iter().filter(|r| r["type"] == "summary").collect();
    assert_eq!(summary.len(), 1, "{}", out.stdout);
    let d = summary[0]["interval_ns"].as_u64().unwrap() as f64 / 1e9;
    assert!((1.9..4.0).contains(&d), "two 1 s intervals took {d} s");
    assert!(summary[0]["lost"]["map_full"].is_u64());
    // Any reclaim on the machine adds process and cgroup rows; the reports are there anyway.
    let kinds = schema::validate("page_reclaim", &records);
    let intervals = records.iter().filter(|r| r["type"] == "interval").count();
    assert_eq!(intervals, 2, "{kinds:?}");
    assert_eq!(records.last().unwrap()["type"], "summary", "{}", out.stdout);

    let text = run_tool(BIN, &["-T", "1", "2"]);
    assert!(text.status.success());
    assert_eq!(
        text.stdout.matches("reclaim in the last 1s").count(),
        2,
        "{}",
        text.stdout
    );
}

#[test]
fn a_closed_stdout_ends_it_quietly() {
    require_root();
    // A report a second: `head -1` takes the first line of the first, the second meets a
    // closed pipe and the tool ends at once, exit 0, no error.
    assert_quiet_in_head(BIN, &[]);
    assert_quiet_in_head(BIN, &["--json"]);
}

#[test]
fn unknown_pid_is_one_clear_line() {
    let out = run_tool(BIN, &["-p", "999999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        one_error_line(&out.stderr),
        "page_reclaim: error: cannot attach to PID 999999999: no such process"
    );
}

#[test]
fn unknown_container_lists_what_runs() {
    let out = run_tool(BIN, &["--container", "0badc0ffee"]);
    assert_eq!(out.status.code(), Some(1));
    let line = one_error_line(&out.stderr);
    assert!(
        line.contains("no container matches \"0badc0ffee\""),
        "{line}"
    );
}

#[test]
fn zero_interval_is_a_usage_error() {
    for args in [&["--interval", "0"][..], &["0"], &["-d", "0"]] {
        let out = run_tool(BIN, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("error: invalid value '0'"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn without_privileges_it_says_to_use_sudo() {
    require_root();
    let out = run_tool(
        "setpriv",
        &[
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            BIN,
            "-d",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(
        one_error_line(&out.stderr),
        "page_reclaim: error: permission denied: tracing needs root (or CAP_BPF and CAP_PERFMON); run it with sudo"
    );
}

#[test]
fn missing_tracefs_is_mounted_or_explained() {
    require_root();
    // In a private mount namespace: without tracefs the tool mounts it itself...
    let script = format!("umount /sys/kernel/tracing 2>/dev/null; exec {BIN} -d 1");
    let out = run_tool("unshare", &["-m", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains("total over 1s"));
    // ...and where it cannot (no /sys/kernel/tracing to mount on), it says what to run.
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; mount -t tmpfs -o ro tmpfs /sys/kernel && exec {BIN} -d 1"
    );
    let out = run_tool("unshare", &["-m", "sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    let line = one_error_line(&out.stderr);
    assert!(
        line.contains("run `mount -t tracefs tracefs /sys/kernel/tracing` as root"),
        "{line}"
    );
}

#[test]
fn memlock_warning_appears_once_with_verbose() {
    require_root();
    let out = run_tool(BIN, &["-v", "-d", "1"]);
    assert!(out.status.success(), "{}", out.stderr);
    // The same attempt the tool makes: when it fails here, the tool warns exactly once.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    let fails = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0;
    assert_eq!(
        out.stderr.matches("RLIMIT_MEMLOCK").count(),
        usize::from(fails),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("attached tracepoint vmscan:mm_vmscan_memcg_reclaim_begin"),
        "{}",
        out.stderr
    );
}
