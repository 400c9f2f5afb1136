//! The debug image (`scripts/image.sh`): built offline FROM scratch and under 30 MB, its tools,
//! run in a privileged container sharing the host's PID, network and IPC namespaces with the
//! node's `/` at /host (what `kubectl debug node/... --profile=sysadmin` gives), see a
//! PostgreSQL on the host as the same binaries run on the host do: the same shared-memory
//! snapshot, and, traced side by side over one pgbench run, the same statement counts as each
//! other and as pg_stat_statements. With a cgroup namespace of its own, the image finds a
//! PostgreSQL in another container by its id. The Kubernetes manifests (deploy/kubernetes/),
//! run with their pods' settings: the debug pod's shmem sees what the host's does, the
//! exporter DaemonSet's pod serves the statements pgbench ran.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

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
const EXPORTER_IMAGE: &str = "localhost/pgbpf-exporter-test:latest";
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
    let out = cmd
        .args([IMAGE, EXPORTER_IMAGE])
        .output()
        .expect("running scripts/image.sh");
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

/// The marker statement's table, and a pgbench script running the statement.
fn marker_script(pg: &Postgres) -> PathBuf {
    pg.psql("create table image_check (x int)").unwrap();
    let script = pg.dir.path().join("marker.sql");
    std::fs::write(&script, format!("{MARKER};\n")).unwrap();
    script
}

/// The marker statement [`CALLS`] times, by pgbench; its output.
fn run_marker(pg: &Postgres, script: &std::path::Path) -> String {
    pg.pgbench(&[
        "-n",
        "-t",
        &CALLS.to_string(),
        "-f",
        &script.display().to_string(),
    ])
    .unwrap()
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
    let script = marker_script(&pg);
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
    let bench = run_marker(&pg, &script);
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

/// A manifest of deploy/kubernetes/, read as the API server reads it (YAML into JSON).
fn manifest(name: &str) -> Value {
    let path = repo_root().join("deploy/kubernetes").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A pod manifest's container run as a kubelet would run it, with the pod's namespaces,
/// privileges and host paths. Not with `podman kube play`: this podman (4.3) ignores hostPID
/// and hostIPC there (its pods got PID and IPC namespaces of their own, checked), so the
/// manifest's fields are applied as `podman run` options instead. Removed on drop.
fn run_as_pod(name: &str, spec: &Value, image: &str) -> Containers {
    let container = &spec["containers"][0];
    let mut cmd = podman();
    cmd.args(["run", "-d", "--name", name]);
    for (field, option) in [
        ("hostPID", "--pid=host"),
        ("hostNetwork", "--network=host"),
        ("hostIPC", "--ipc=host"),
    ] {
        if spec[field] == true {
            cmd.arg(option);
        }
    }
    if container["securityContext"]["privileged"] == true {
        cmd.arg("--privileged");
    }
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let host = volume["hostPath"]["path"].as_str().unwrap();
        cmd.arg("-v")
            .arg(format!("{host}:{}", mount["mountPath"].as_str().unwrap()));
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let command = strings(&container["command"]);
    if let Some(entrypoint) = command.first() {
        cmd.args(["--entrypoint", entrypoint]);
    }
    cmd.arg(image)
        .args(command.iter().skip(1))
        .args(strings(&container["args"]));
    let running = Containers(vec![name.to_string()]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    running
}

/// The metrics text the exporter serves on `port` once `ready` is in it (up to 60 s).
fn metrics_when(port: &str, ready: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{port}/metrics"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(ready) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {ready} on :{port}/metrics: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[test]
fn the_kubernetes_manifests_run_with_their_pods_settings() {
    require_root();
    let _lock = exclusive();
    let bin = build_image();
    let version = env!("CARGO_PKG_VERSION");
    let pg = Postgres::start_with(&PgOptions {
        pg_stat_statements: true,
        settings: vec![("autovacuum".into(), "off".into())],
        ..Default::default()
    })
    .unwrap();
    let pm = pg.postmaster_pid().unwrap().to_string();

    // The debug pod: kubectl debug's sysadmin profile, as the tools need it.
    let pod = manifest("debug-pod.yaml");
    let spec = &pod["spec"];
    for shared in ["hostPID", "hostNetwork", "hostIPC"] {
        assert_eq!(spec[shared], true, "debug pod: {shared}");
    }
    let container = &spec["containers"][0];
    assert_eq!(container["image"], format!("localhost/pgbpf:{version}"));
    assert_eq!(container["securityContext"]["privileged"], true);
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/host");
    assert_eq!(spec["volumes"][0]["hostPath"]["path"], "/");
    let in_pod = format!("pgbpf-debug-{}", std::process::id());
    let debug = run_as_pod(&in_pod, &pod["spec"], IMAGE);
    let args = ["-p", &pm, "--snapshot", "--json"];
    let (on_host, in_debug_pod) = snapshots(
        || Command::new(bin.join("shmem")).args(args).output(),
        || {
            podman()
                .args(["exec", &in_pod, "shmem"])
                .args(args)
                .output()
        },
    );
    assert!(!on_host.is_empty());
    assert_eq!(
        in_debug_pod, on_host,
        "shmem in the debug pod and on the host"
    );
    drop(debug);

    // The exporter: the DaemonSet's pod template, played as a pod (podman plays no
    // DaemonSets); its port, annotations and arguments agree.
    let daemonset = manifest("exporter.yaml");
    assert_eq!(daemonset["kind"], "DaemonSet");
    let template = &daemonset["spec"]["template"];
    assert_eq!(
        template["metadata"]["labels"],
        daemonset["spec"]["selector"]["matchLabels"]
    );
    let spec = &template["spec"];
    assert_eq!(
        spec["hostPID"], true,
        "the exporter needs the host's processes"
    );
    let container = &spec["containers"][0];
    assert_eq!(
        container["image"],
        format!("localhost/pgbpf-exporter:{version}")
    );
    assert_eq!(container["securityContext"]["privileged"], true);
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let listen = args[args.iter().position(|&a| a == "--listen").unwrap() + 1];
    let port = listen.rsplit(':').next().unwrap();
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port);
    assert_eq!(container["ports"][0]["containerPort"].to_string(), port);
    assert_eq!(
        container["readinessProbe"]["httpGet"]["port"].to_string(),
        port
    );
    let exporter = run_as_pod(
        &format!("pgbpf-exporter-{}", std::process::id()),
        spec,
        EXPORTER_IMAGE,
    );
    metrics_when(port, "pgbpf_collector_up{collector=\"query_latency\"} 1");
    run_marker(&pg, &marker_script(&pg));
    // All of them drained (every 100 ms) before the scrape that counts them.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let series = format!("pgbpf_statement_duration_seconds_count{{statement=\"{MARKER}");
    let text = metrics_when(port, &series);
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with(&series))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(
        counted, CALLS as f64,
        "the exporter pod's count of {MARKER}\n{text}"
    );
    drop(exporter);
}
