//! pgbpf_exporter under the faults and bad input every tool is tested against (issue 23):
//! `kill -9` with every collector attached while pgbench runs (nothing of ours left in the
//! kernel or tracefs, USDT semaphores back to 0, the server unharmed), and garbage
//! arguments (one line naming the option; exit 2 for usage errors, 1 for runtime errors).

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    ffi::OsString,
    os::unix::ffi::OsStringExt as _,
    process::{Command, Output},
    time::Duration,
};

use pgbpf_testkit::{
    bpf_objects::{BpfObjects, kill_9_releases_everything},
    exclusive,
    postgres::{PgOptions, Postgres, free_port},
    postgres_semaphore_offsets, postgres_semaphores,
    redis::Redis,
    require_root,
    tool::Traced,
};

const BIN: &str = env!("CARGO_BIN_EXE_pgbpf_exporter");

#[test]
fn kill_9_of_the_exporter_leaves_nothing_behind_and_the_server_unharmed() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with_pgbench(&PgOptions::default(), 1).unwrap();
    let _redis = Redis::start().unwrap();
    let session = pg.session().unwrap();
    let offsets = postgres_semaphore_offsets(&pg.bin_dir);
    let semaphores = || postgres_semaphores(session.backend_pid, &offsets);
    assert!(semaphores().iter().all(|&v| v == 0));
    let conn = pg.conn_args();
    let pgbench = std::thread::spawn(move || {
        Command::new("pgbench")
            .args(&conn)
            .args(["-S", "-n", "-c", "2", "-j", "2", "-T", "6", "postgres"])
            .output()
            .unwrap()
    });
    let before = BpfObjects::now();
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", &listen, "--collect"])
        .arg("query_latency,page_reclaim,io_timeouts,shmem,pgwire_trace,redis_trace");
    let exporter = Traced::start_until(&mut cmd, "serving http").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let ours = BpfObjects::now().added_since(&before);
    assert!(
        ours.programs.len() > 20,
        "every collector's programs: {ours:?}"
    );
    assert!(
        semaphores().iter().any(|&v| v > 0),
        "the statement collector raised the semaphores"
    );
    kill_9_releases_everything(
        "pgbpf_exporter",
        exporter,
        &ours,
        session.backend_pid,
        &offsets,
    );
    let bench = pgbench.join().unwrap();
    let text = String::from_utf8_lossy(&bench.stdout);
    assert!(bench.status.success(), "pgbench: {text}");
    assert!(
        text.contains("number of failed transactions: 0"),
        "pgbench failed transactions: {text}"
    );
    let log = pg.server_log();
    for bad in ["terminated by signal", "PANIC", "was terminated"] {
        assert!(!log.contains(bad), "server log has {bad:?}:\n{log}");
    }
    drop(session);
}

/// Runs the exporter with `args` (as nobody when `unprivileged`), ended by `timeout` if it
/// would serve (a failed case).
fn run(args: &[OsString], unprivileged: bool) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("10");
    if unprivileged {
        cmd.args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]);
    }
    cmd.arg(BIN).args(args).output().unwrap()
}

#[test]
fn garbage_arguments_get_one_line_naming_the_option_and_the_right_exit_code() {
    require_root();
    let os = |args: &[&str]| -> Vec<OsString> { args.iter().map(OsString::from).collect() };
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = format!("127.0.0.1:{}", busy.local_addr().unwrap().port());
    let free = format!("127.0.0.1:{}", free_port().unwrap());
    let not_utf8 = OsString::from_vec(vec![b'q', 0xff]);
    let cases: Vec<(Vec<OsString>, bool, i32, &str)> = vec![
        (os(&["--no-such-option"]), false, 2, "--no-such-option"),
        (os(&["--listen", "abc"]), false, 2, "--listen"),
        (os(&["--listen", ":99999"]), false, 2, "--listen"),
        (os(&["--listen", "-1"]), false, 2, "--listen"),
        (os(&["--collect", "nosuch"]), false, 2, "--collect"),
        (os(&["--collect", ""]), false, 2, "--collect"),
        (vec!["--collect".into(), not_utf8], false, 2, "--collect"),
        (os(&["--statements", "0"]), false, 2, "--statements"),
        (os(&["--statements", "-5"]), false, 2, "--statements"),
        (
            os(&["--statements", "99999999999"]),
            false,
            2,
            "--statements",
        ),
        (os(&["--statement-idle", "0"]), false, 2, "--statement-idle"),
        (os(&["--listen", &busy]), false, 1, "already in use"),
        (
            os(&["--listen", &free, "--postgres", "/pgbpf-no-such-binary"]),
            false,
            1,
            "/pgbpf-no-such-binary",
        ),
        (os(&["--listen", &free]), true, 1, "permission denied"),
    ];
    let mut failures = vec![];
    for (args, unprivileged, code, names) in &cases {
        let out = run(args, *unprivileged);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let ok = out.status.code() == Some(*code)
            && lines.len() == 1
            && lines[0].starts_with("pgbpf_exporter: error: ")
            && lines[0].contains(names);
        if !ok {
            failures.push(format!(
                "{args:?} (unprivileged: {unprivileged}): exit {:?}, expected {code} and one \
                 line naming {names:?}; stderr: {stderr:?}",
                out.status.code()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
