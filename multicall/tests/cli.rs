//! Every tool given garbage (issue 23), table-driven over the tools of the multicall binary:
//! a usage error is one line, `TOOL: error: ...`, naming the option, exit 2; a runtime error
//! (a pid that is a kernel thread, a zombie or nobody, a cgroup or file that is not there, a
//! directory where a file goes, a capture file that would be overwritten) is one line too,
//! exit 1; without privileges, one line saying what is missing, while `--help` and `--read`
//! work.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use support::tool_link;

use std::{
    ffi::OsString,
    os::unix::ffi::OsStringExt as _,
    path::Path,
    process::{Command, Output},
};

/// The tools (every directory under tools/ but the exporter, which has its own binary).
fn tools() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools");
    let mut tools: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "pgbpf_exporter")
        .collect();
    tools.sort();
    tools
}

fn run(bin: &Path, args: &[OsString], unprivileged: bool) -> Output {
    let mut cmd = if unprivileged {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// Checks that `args` end `tool` at once with `code` and one line on stderr, prefixed with
/// the tool's name and containing `names`.
fn expect(
    dir: &Path,
    tool: &str,
    args: &[OsString],
    code: i32,
    names: &str,
    failures: &mut Vec<String>,
) {
    let unprivileged = args.first().is_some_and(|a| a == "@nobody");
    let args = if unprivileged { &args[1..] } else { args };
    let out = run(&tool_link(dir, tool), args, unprivileged);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let ok = out.status.code() == Some(code)
        && lines.len() == 1
        && lines[0].starts_with(&format!("{tool}: error: "))
        && lines[0].contains(names);
    if !ok {
        failures.push(format!(
            "{tool} {args:?}: exit {:?}, expected {code} and one line naming {names:?}; stderr: {stderr:?}",
            out.status.code()
        ));
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// A process that has exited and is not reaped: a child of ours that we do not wait for.
fn zombie() -> (std::process::Child, u32) {
    let child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .contains(") Z ")
    {
        assert!(start.elapsed().as_secs() < 5, "no zombie");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (child, pid)
}

/// A kernel thread's pid (kthreadd is 2 on a host, not in a PID namespace of its own).
fn kernel_thread() -> Option<u32> {
    pgbpf_common::procs::all_pids()
        .into_iter()
        .find(|&p| pgbpf_common::procs::untraceable(p) == Some("a kernel thread"))
}

/// A pid no process has (within pid_max).
fn free_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (1000..max)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
}

#[test]
fn every_tool_answers_garbage_with_one_line_and_the_right_exit_code() {
    pgbpf_testkit::require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (mut zombie_child, zombie) = zombie();
    let (zombie, free) = (zombie.to_string(), free_pid().to_string());
    let kthread = kernel_thread().map(|p| p.to_string());
    let existing = dir.path().join("existing.cap");
    std::fs::write(&existing, b"not a capture").unwrap();
    std::fs::set_permissions(
        &existing,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let existing = existing.to_str().unwrap();
    let not_utf8 = OsString::from_vec(vec![b'3', 0xff, b'f']);
    // A data directory whose server is not running, and a port nobody serves.
    let stopped = dir.path().join("stopped-cluster");
    std::fs::create_dir(&stopped).unwrap();
    std::fs::write(stopped.join("PG_VERSION"), "15\n").unwrap();
    let stopped = stopped.to_str().unwrap();
    let unserved = pgbpf_testkit::postgres::free_port().unwrap().to_string();
    let mut failures = vec![];
    let mut checked = 0;
    for tool in tools() {
        let help = run(&tool_link(dir.path(), &tool), &os(&["--help"]), true);
        assert!(help.status.success(), "{tool} --help unprivileged");
        let help = String::from_utf8_lossy(&help.stdout).into_owned();
        let has = |option: &str| help.contains(option);
        let mut cases: Vec<(Vec<OsString>, i32, &str)> =
            vec![(os(&["--no-such-option"]), 2, "--no-such-option")];
        if has("--pid <PID>") {
            for bad in ["-1", "abc", "99999999999", ""] {
                cases.push((os(&["--pid", bad]), 2, "--pid"));
            }
            // Runtime errors end at once; `-d 1` ends a run that would not (a failed case).
            if let Some(kthread) = &kthread {
                cases.push((os(&["-d", "1", "--pid", kthread]), 1, "kernel thread"));
            }
            cases.push((os(&["-d", "1", "--pid", &zombie]), 1, "zombie"));
            cases.push((os(&["-d", "1", "--pid", &free]), 1, "no such process"));
            cases.push((os(&["@nobody", "-d", "1"]), 1, "permission denied"));
        }
        if has("--duration <") {
            for bad in ["-5", "0", "abc", "99999999999999999999", "5x"] {
                cases.push((os(&["-d", bad]), 2, "--duration"));
            }
        }
        if has("--top <N>") {
            cases.push((os(&["--top", "-1"]), 2, "--top"));
        }
        if has("[INTERVAL]") {
            cases.push((os(&["0"]), 2, "INTERVAL"));
            cases.push((os(&["1", "0"]), 2, "COUNT"));
        }
        if has("--container <") {
            cases.push((
                vec!["--container".into(), not_utf8.clone()],
                2,
                "--container",
            ));
            cases.push((
                os(&["-d", "1", "--container", "f00dfeedbadc0ffee"]),
                1,
                "f00dfeedbadc0ffee",
            ));
        }
        if has("--cgroup <") {
            cases.push((
                os(&["-d", "1", "--cgroup", "/pgbpf-no-such-cgroup"]),
                1,
                "no cgroup",
            ));
        }
        if has("--pgdata <DIR>") {
            cases.push((
                os(&["-d", "1", "--pgdata", "/etc"]),
                1,
                "not a PostgreSQL data",
            ));
            cases.push((os(&["-d", "1", "--pgdata", stopped]), 1, "not running"));
            cases.push((os(&["--pgdata", stopped, "--pid", "1"]), 2, "--pgdata"));
        }
        if has("--port <PORT>") {
            for bad in ["-1", "70000", "abc"] {
                cases.push((os(&["--port", bad]), 2, "--port"));
            }
            // The wire tools trace a port's traffic, whoever serves it: no server needed.
            if !has("--record <FILE>") {
                cases.push((
                    os(&["-d", "1", "--port", &unserved]),
                    1,
                    "no process listens",
                ));
            }
        }
        if has("--record <FILE>") {
            let tmp = std::env::temp_dir();
            cases.push((os(&["--record", tmp.to_str().unwrap()]), 1, "directory"));
            cases.push((os(&["--record", existing]), 1, "--force"));
        }
        if has("--read <FILE>") {
            cases.push((os(&["--read", "/etc"]), 1, "directory"));
            cases.push((
                os(&["--read", "/pgbpf-no-such-file"]),
                1,
                "/pgbpf-no-such-file",
            ));
            // Unprivileged: the file's format is what fails, not a privilege check.
            cases.push((os(&["@nobody", "--read", existing]), 1, "capture"));
        }
        for (args, code, names) in &cases {
            expect(dir.path(), &tool, args, *code, names, &mut failures);
            checked += 1;
        }
    }
    let _ = zombie_child.wait();
    assert!(
        failures.is_empty(),
        "{} of {checked} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{checked} cases over {} tools", tools().len());
}

#[test]
fn a_capture_file_is_private_and_not_overwritten() {
    use pgbpf_capture::wire::open_capture_file;
    use std::os::unix::fs::PermissionsExt as _;
    pgbpf_testkit::require_root();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.cap");
    let (file, made) = open_capture_file(&path, false).unwrap();
    drop(file);
    assert!(made);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    std::fs::write(&path, b"earlier capture").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = open_capture_file(&path, false).unwrap_err();
    assert!(refused.to_string().contains("--force"), "{refused}");
    assert_eq!(std::fs::read(&path).unwrap(), b"earlier capture");
    // --force opens it (made private) without emptying it: that waits for tracing to start.
    let (file, made) = open_capture_file(&path, true).unwrap();
    assert!(!made);
    drop(file);
    assert_eq!(std::fs::read(&path).unwrap(), b"earlier capture");
    assert_eq!(mode(&path), 0o600);
    // A symbolic link is never followed, --force or not.
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, b"not ours").unwrap();
    let link = dir.path().join("link.cap");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(open_capture_file(&link, false).is_err());
    assert!(open_capture_file(&link, true).is_err());
    assert_eq!(std::fs::read(&target).unwrap(), b"not ours");
}

#[test]
fn a_capture_file_of_a_run_that_never_started_is_removed() {
    pgbpf_testkit::require_root();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("never.cap");
    let out = run(
        &tool_link(dir.path(), "pgwire_trace"),
        &os(&[
            "--pid",
            &free_pid().to_string(),
            "--record",
            file.to_str().unwrap(),
        ]),
        false,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !file.exists(),
        "the file of a run that did not start is left"
    );
}
