//! The debug image (`scripts/image.sh`): built offline FROM scratch and under 30 MB, its tools,
//! run in a privileged container sharing the host's PID, network and IPC namespaces with the
//! node's `/` at /host (what `kubectl debug node/... --profile=sysadmin` gives), see a
//! PostgreSQL on the host as the same binaries run on the host do: the same shared-memory
//! snapshot, and, traced side by side over one pgbench run, the same statement counts as each
//! other and as pg_stat_statements. With a cgroup namespace of its own, the image finds a
//! PostgreSQL in another container by its id.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use pgbpf_testkit::{
    container::{ContainerSpec, podman},
    exclusive,
    postgres::{PgOptions, Postgres},
    repo_root, require_root,
    tool::Traced,
};
use serde_json::Value;

const IMAGE: &str = "localhost/pgbpf-test:latest";
/// A statement with no constant, so that every tool and pg_stat_statements show it as typed.
const MARKER: &str = "select count(*) from image_check";
const CALLS: u64 = 40;

/// Builds the image (its size, printed by the script, under the goal of 30 MB); returns the
/// directory of the static binaries it holds.
fn build_image() -> PathBuf {
    // Without the variables cargo sets for this test run, which would make the script's
    // cargo build everything again instead of finding the static build up to date.
    let mut cmd = Command::new(repo_root().join("scripts/image.sh"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO") || key.starts_with("RUSTC") || key.starts_with("RUST_") {
            cmd.env_remove(&*key);
        }
    }
    let out = cmd.arg(IMAGE).output().expect("running scripts/image.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/image.sh failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "NAME BYTES bytes (N MiB)"
    let bytes: u64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no size in {stdout:?}"));
    assert!(
        bytes < 30_000_000,
        "the image is {bytes} bytes (goal < 30 MB)"
    );
    repo_root().join("target/x86_64-unknown-linux-gnu/release")
}

/// The containers of this test, removed when dropped: a failed run's must not keep its
/// programs attached for the tests after it.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = podman().args(["rm", "-f", "-t", "0", name]).output();
        }
    }
}

/// `tool args` in the debug container named `name`, as the README's podman line runs it.
fn in_image(name: &str, tool: &str, args: &[&str]) -> Command {
    in_image_with(name, &[], tool, args)
}

/// [`in_image`] with more `podman run` options.
fn in_image_with(name: &str, options: &[&str], tool: &str, args: &[&str]) -> Command {
    let mut cmd = podman();
    cmd.args(["run", "--rm", "--name", name])
        .args(options)
        .args([
            "--privileged",
            "--pid=host",
            "--network=host",
            "--ipc=host",
            "-v",
            "/:/host",
            "--entrypoint",
        ])
        .arg(format!("/bin/{tool}"))
        .arg(IMAGE)
        .args(args);
    cmd
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

/// A snapshot record without what changes from one reading to the next (times, resident
/// sizes, free space).
fn stable(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !(k.ends_with("rss_bytes")
                        || k.ends_with("pss_bytes")
                        || k.ends_with("used_bytes")
                        || k.ends_with("free_bytes")
                        || k.ends_with("allocated_bytes")
                        || *k == "ts_ns"
                        || *k == "huge_pages")
                })
                .map(|(k, v)| (k.clone(), stable(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(stable).collect()),
        other => other.clone(),
    }
}

fn is_marker(query: &Value) -> bool {
    query
        .as_str()
        .is_some_and(|q| q.trim_end_matches(';').trim() == MARKER)
}

/// shmem's snapshot records from the host and from the image, without what changes between
/// two readings. A backend just ending (the cluster's set-up) may show in one of two readings:
/// the pair is read again then, three times at most.
fn snapshots(
    on_host: impl Fn() -> std::io::Result<std::process::Output>,
    in_image: impl Fn() -> std::io::Result<std::process::Output>,
) -> (Vec<Value>, Vec<Value>) {
    let records = |out: std::io::Result<std::process::Output>| -> Vec<Value> {
        let out = out.expect("running shmem");
        assert!(
            out.status.success(),
            "shmem --snapshot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_lines(&String::from_utf8_lossy(&out.stdout))
            .iter()
            .map(stable)
            .collect()
    };
    let mut pair = (vec![], vec![]);
    for _ in 0..3 {
        pair = (records(on_host()), records(in_image()));
        if pair.0 == pair.1 {
            break;
        }
    }
    pair
}

/// query_latency's calls of the marker statement.
fn latency_calls(records: &[Value]) -> u64 {
    records
        .iter()
        .filter(|r| r["type"] == "statement" && r["scope"] == "total" && is_marker(&r["query"]))
        .filter_map(|r| r["calls"].as_u64())
        .sum()
}

/// pgwire_trace's requests of the marker statement.
fn wire_requests(records: &[Value]) -> u64 {
    records
        .iter()
        .filter(|r| r["type"] == "request" && is_marker(&r["query"]))
        .count() as u64
}

#[test]
fn the_debug_image_traces_the_hosts_postgres_as_the_host_does() {
    require_root();
    let _lock = exclusive();
    let bin = build_image();
    // No autovacuum worker coming and going between the two snapshots.
    let pg = Postgres::start_with(&PgOptions {
        pg_stat_statements: true,
        settings: vec![("autovacuum".into(), "off".into())],
        ..Default::default()
    })
    .unwrap();
    let names = ["shmem", "query_latency", "pgwire_trace"]
        .map(|tool| format!("pgbpf-image-{tool}-{}", std::process::id()));
    let _containers = Containers(names.to_vec());
    let pm = pg.postmaster_pid().unwrap().to_string();
    let host = |tool: &str| bin.join(tool).display().to_string();

    let args = ["-p", &pm, "--snapshot", "--json"];
    let (on_host, in_container) = snapshots(
        || Command::new(host("shmem")).args(args).output(),
        || in_image(&names[0], "shmem", &args).output(),
    );
    assert!(!on_host.is_empty());
    assert_eq!(
        in_container, on_host,
        "shmem --snapshot in the image and on the host"
    );

    // query_latency and pgwire_trace, on the host and in the image, over one pgbench run.
    pg.psql("create table image_check (x int)").unwrap();
    let script = pg.dir.path().join("marker.sql");
    std::fs::write(&script, format!("{MARKER};\n")).unwrap();
    let traced: BTreeMap<&str, Traced> = [
        (
            "query_latency on the host",
            Traced::start(&host("query_latency"), &["-p", &pm, "--json"]),
        ),
        (
            "query_latency in the image",
            Traced::start_until(
                &mut in_image(&names[1], "query_latency", &["-p", &pm, "--json"]),
                pgbpf_testkit::tool::ATTACHED,
            ),
        ),
        (
            "pgwire_trace on the host",
            Traced::start(&host("pgwire_trace"), &["-p", &pm, "--json"]),
        ),
        (
            "pgwire_trace in the image",
            Traced::start_until(
                &mut in_image(&names[2], "pgwire_trace", &["-p", &pm, "--json"]),
                pgbpf_testkit::tool::ATTACHED,
            ),
        ),
    ]
    .into_iter()
    .map(|(what, t)| (what, t.unwrap_or_else(|e| panic!("{what}: {e:#}"))))
    .collect();
    let bench = pg
        .pgbench(&[
            "-n",
            "-t",
            &CALLS.to_string(),
            "-f",
            &script.display().to_string(),
        ])
        .unwrap();
    let pgss: u64 = pg
        .psql(&format!(
            "select coalesce(sum(calls), 0) from pg_stat_statements where query = '{MARKER}'"
        ))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        pgss, CALLS,
        "pg_stat_statements' calls of {MARKER} after {bench}"
    );
    for (what, t) in traced {
        let finished = t.stop().unwrap();
        assert!(finished.status.success(), "{what}: {}", finished.stderr);
        let records = json_lines(&finished.stdout);
        let seen = if what.starts_with("query_latency") {
            latency_calls(&records)
        } else {
            wire_requests(&records)
        };
        assert_eq!(seen, CALLS, "{what}: {}", finished.stderr);
    }
}

/// `kubectl debug`'s container has a cgroup namespace of its own: there, `--container` still
/// finds a PostgreSQL running in another podman container through the node's cgroup tree
/// (reached through /proc/1/root), and the snapshot equals the host's.
#[test]
fn in_a_private_cgroup_namespace_the_image_finds_another_container() {
    require_root();
    let _lock = exclusive();
    let bin = build_image();
    let pg = Postgres::start_with(&PgOptions {
        settings: vec![("autovacuum".into(), "off".into())],
        container: Some(ContainerSpec::default()),
        ..Default::default()
    })
    .unwrap();
    let id = &pg.container.as_ref().unwrap().id[..12];
    let name = format!("pgbpf-image-cgroupns-{}", std::process::id());
    let _containers = Containers(vec![name.clone()]);
    let args = ["--container", id, "--snapshot", "--json"];
    let (on_host, in_container) = snapshots(
        || Command::new(bin.join("shmem")).args(args).output(),
        || in_image_with(&name, &["--cgroupns=private"], "shmem", &args).output(),
    );
    assert!(
        on_host.iter().any(|r| r["postgres"] == true),
        "no PostgreSQL instance in {on_host:?}"
    );
    assert_eq!(
        in_container, on_host,
        "shmem --container in a private cgroup namespace and on the host"
    );
}
