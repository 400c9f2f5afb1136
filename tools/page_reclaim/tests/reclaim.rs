//! page_reclaim against real memory pressure: a memory-limited podman container running
//! PostgreSQL under pgbench, then a hand-made memory cgroup reading a big file. Totals are
//! cross-checked with the kernel's own counters (/proc/vmstat pgsteal_anon + pgsteal_file).

use std::{
    collections::HashSet,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use pgbpf_testkit::{
    container::ContainerSpec,
    exclusive,
    memcg::{KubeletSlices, MemoryCgroup, kubelet_container},
    postgres::{PgOptions, Postgres},
    require_root, run, schema,
    tool::Traced,
    vmstat,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_page_reclaim");
const PGSTEAL: [&str; 2] = ["pgsteal_anon", "pgsteal_file"];

fn summary(records: &[Value]) -> &Value {
    records
        .iter()
        .find(|r| r["type"] == "summary")
        .expect("a summary record")
}

fn total_rows<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["type"] == kind && r["scope"] == "total")
        .collect()
}

fn assert_within(what: &str, measured: u64, reference: u64, tolerance: f64) {
    let diff = (measured as f64 - reference as f64).abs();
    assert!(
        reference > 0 && diff <= tolerance * reference as f64,
        "{what}: page_reclaim counted {measured} pages, the kernel {reference} (tolerance {:.0}%)",
        tolerance * 100.0
    );
}

#[test]
fn container_reclaim_is_attributed_and_matches_vmstat() {
    require_root();
    let _lock = exclusive();
    let limit = "160m";
    let pg = Postgres::start_with(&PgOptions {
        container: Some(ContainerSpec {
            memory: Some(limit.into()),
            ..Default::default()
        }),
        ..Default::default()
    })
    .expect("postgres in a podman container");
    let container = pg.container.as_ref().unwrap();
    let container_cgroup = container.cgroup_path().unwrap();
    let mount = pgbpf_common::cgroup::v2_mount().unwrap();
    let container_cgroup_id = pgbpf_common::cgroup::Cgroup::open(&mount, &container_cgroup)
        .unwrap()
        .id;

    let noise =
        MemoryCgroup::create(&format!("pgbpf-noise-{}", std::process::id()), 64 << 20).unwrap();
    let noise_file = pg.dir.path().join("noise.bin");
    run(Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", noise_file.display()))
        .args(["bs=1M", "count=300", "status=none", "conv=fsync"]))
    .unwrap();

    let in_container = Traced::start(BIN, &["--container", &container.id[..12], "--json"]).unwrap();
    let in_noise = Traced::start(BIN, &["--cgroup", &noise.path, "--json"]).unwrap();

    // Every process that lives in the container during phase 1, sampled from cgroup.procs
    // (pgbench's backends come and go).
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        let procs = mount
            .join(container_cgroup.trim_start_matches('/'))
            .join("cgroup.procs");
        std::thread::spawn(move || {
            let mut seen = HashSet::new();
            while sampling.load(Ordering::SeqCst) {
                let text = std::fs::read_to_string(&procs).unwrap_or_default();
                seen.extend(text.lines().filter_map(|l| l.trim().parse::<u64>().ok()));
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        })
    };

    // Phase 1: PostgreSQL in the container loads and reads a data set larger than its limit.
    let before = vmstat(&PGSTEAL);
    pg.pgbench(&["-i", "-s", "20", "-q"]).unwrap();
    pg.pgbench(&["-S", "-c", "4", "-j", "2", "-T", "15"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let after_container = vmstat(&PGSTEAL);
    sampling.store(false, Ordering::SeqCst);
    let container_pids = sampler.join().unwrap();

    // Phase 2: reclaim outside the container, which --container must not see.
    let mut reader = noise
        .spawn(&format!(
            "echo 1 > /proc/sys/vm/drop_caches; cat {f} > /dev/null; cat {f} > /dev/null",
            f = noise_file.display()
        ))
        .unwrap();
    let noise_pid = u64::from(reader.id());
    assert!(reader.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    let after_noise = vmstat(&PGSTEAL);

    let c = in_container.stop().unwrap();
    let n = in_noise.stop().unwrap();
    assert!(c.status.success(), "{}", c.stderr);
    assert!(n.status.success(), "{}", n.stderr);
    let (c, n) = (c.json(), n.json());
    // Every record is what docs/schema/page_reclaim.json says, of each kind a run prints.
    let kinds = schema::validate("page_reclaim", &c);
    assert_eq!(kinds, ["process", "cgroup", "summary"], "record kinds");

    let container_pages = summary(&c)["reclaimed_pages"].as_u64().unwrap();
    let noise_pages = summary(&n)["reclaimed_pages"].as_u64().unwrap();
    eprintln!(
        "container: {container_pages} pages (vmstat {}), noise: {noise_pages} pages (vmstat {})",
        after_container - before,
        after_noise - after_container
    );
    assert!(container_pages > 0, "no reclaim reported for the container");
    assert_within(
        "container phase",
        container_pages,
        after_container - before,
        0.10,
    );
    assert_within(
        "noise phase",
        noise_pages,
        after_noise - after_container,
        0.10,
    );

    // Attribution: every process row is in the container's cgroup, the reader never is, and
    // postgres processes did the reclaiming.
    let rows = total_rows(&c, "process");
    assert!(!rows.is_empty());
    for r in &rows {
        assert_eq!(
            r["cgroup_id"].as_u64(),
            Some(container_cgroup_id),
            "row outside the container: {r}"
        );
        assert_ne!(
            r["pid"].as_u64(),
            Some(noise_pid),
            "the noise reader leaked into --container"
        );
    }
    assert!(
        rows.iter().any(|r| r["comm"] == "postgres"),
        "no postgres process among {rows:?}"
    );
    for r in &rows {
        let pid = r["pid"].as_u64().unwrap();
        assert!(
            container_pids.contains(&pid),
            "pid {pid} never ran in the container: {r}"
        );
    }
    let cgroup_rows = total_rows(&c, "cgroup");
    assert_eq!(cgroup_rows.len(), 1);
    assert_eq!(
        cgroup_rows[0]["reclaimed_pages"].as_u64(),
        Some(container_pages)
    );
    assert!(
        cgroup_rows[0]["cgroup"]
            .as_str()
            .unwrap()
            .starts_with(&format!("podman:{}", &container.id[..12]))
    );

    let noise_rows = total_rows(&n, "process");
    assert!(
        noise_rows
            .iter()
            .all(|r| r["comm"] == "cat" || r["comm"] == "sh"),
        "{noise_rows:?}"
    );
    let s = summary(&c);
    assert!(s["episodes"].as_u64().unwrap() > 0);
    assert!(s["stall_ns"].as_u64().unwrap() > 0);
    let hist: u64 = s["stall_hist_log2_us"]["memcg"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        hist,
        s["memcg_episodes"].as_u64().unwrap(),
        "histogram counts every memcg episode"
    );
}

/// A file of `mib` MiB of zeros in `dir`, on disk (so reading it fills the page cache).
fn data_file(dir: &std::path::Path, mib: u32) -> anyhow::Result<std::path::PathBuf> {
    let file = dir.join("data.bin");
    let count = format!("count={mib}");
    run(Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args(["bs=1M", &count, "status=none", "conv=fsync"]))?;
    Ok(file)
}

#[test]
fn pid_and_comm_filters_split_two_readers() {
    require_root();
    let _lock = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let file = data_file(dir.path(), 200).unwrap();
    let cg =
        MemoryCgroup::create(&format!("pgbpf-filters-{}", std::process::id()), 48 << 20).unwrap();
    // Both readers wait for the go file, so the tools can attach to their pids first; exec
    // keeps the pid.
    let go = dir.path().join("go");
    let wait_go = format!("while [ ! -e {} ]; do sleep 0.05; done", go.display());
    let f = file.display();
    let mut cat = cg
        .spawn(&format!("{wait_go}; exec cat {f} {f} > /dev/null"))
        .unwrap();
    let mut dd = cg
        .spawn(&format!(
            "{wait_go}; exec dd if={f} of=/dev/null bs=1M status=none"
        ))
        .unwrap();
    let cat_pid = cat.id().to_string();
    let by_pid = Traced::start(BIN, &["-p", &cat_pid, "--json"]).unwrap();
    let by_comm = Traced::start(BIN, &["--comm", "dd", "--json"]).unwrap();

    run(Command::new("sh")
        .arg("-c")
        .arg("sync; echo 1 > /proc/sys/vm/drop_caches"))
    .unwrap();
    let before = vmstat(&PGSTEAL);
    std::fs::write(&go, "").unwrap();
    assert!(cat.wait().unwrap().success() && dd.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    let after = vmstat(&PGSTEAL);
    let (p, c) = (
        by_pid.stop().unwrap().json(),
        by_comm.stop().unwrap().json(),
    );

    let pid_rows = total_rows(&p, "process");
    let comm_rows = total_rows(&c, "process");
    assert!(
        !pid_rows.is_empty() && !comm_rows.is_empty(),
        "{p:?}\n{c:?}"
    );
    for r in &pid_rows {
        assert_eq!(
            r["pid"].to_string(),
            cat_pid,
            "--pid let another process in: {r}"
        );
    }
    for r in &comm_rows {
        assert_eq!(r["comm"], "dd", "--comm let another task in: {r}");
        assert_eq!(r["pid"].as_u64(), Some(u64::from(dd.id())));
    }
    let by_pid_pages = summary(&p)["reclaimed_pages"].as_u64().unwrap();
    let by_comm_pages = summary(&c)["reclaimed_pages"].as_u64().unwrap();
    eprintln!(
        "cat {by_pid_pages} + dd {by_comm_pages} pages, vmstat {}",
        after - before
    );
    assert_within(
        "cat + dd",
        by_pid_pages + by_comm_pages,
        after - before,
        0.10,
    );
}

/// `--pod`: a Kubernetes pod's cgroups laid out as the kubelet's systemd driver makes them
/// (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID>.slice`, a
/// `cri-containerd-<ID>.scope` per container) with a memory limit, and a reader in its
/// container: found by a prefix of the UID, every row is the pod's, the total matches vmstat.
/// A second pod, whose reader runs just before, stays out.
#[test]
fn a_kubernetes_pod_is_traced_by_a_prefix_of_its_uid() {
    require_root();
    let _lock = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let file = data_file(dir.path(), 200).unwrap();
    let uid = "5e1f0c3a-7b2d-4e8f-9a6b-0c1d2e3f4a5b";
    let other_uid = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";
    let ctr = kubelet_container(uid, &"a".repeat(64));
    let other_ctr = kubelet_container(other_uid, &"b".repeat(64));
    let pod = ctr.rsplit_once('/').unwrap().0.to_string();
    // The pods' and QoS slices, left by the containers' removal: removed however the test ends.
    let _slices = KubeletSlices::new(&[uid, other_uid]).unwrap();
    let in_pod = MemoryCgroup::create(&ctr, 48 << 20).unwrap();
    let in_other = MemoryCgroup::create(&other_ctr, 48 << 20).unwrap();
    // Each reader waits for its go file, so the tool can attach first; exec keeps the pid.
    let (go_ours, go_theirs) = (dir.path().join("go-ours"), dir.path().join("go-theirs"));
    let reader = |cg: &MemoryCgroup, go: &std::path::Path| {
        cg.spawn(&format!(
            "while [ ! -e {g} ]; do sleep 0.05; done; exec cat {f} {f} > /dev/null",
            g = go.display(),
            f = file.display()
        ))
        .unwrap()
    };
    let mut ours = reader(&in_pod, &go_ours);
    let mut theirs = reader(&in_other, &go_theirs);
    let mut traced = Traced::start(BIN, &["--pod", &uid[..8], "--json"]).unwrap();
    let said = traced.stderr_so_far();
    assert!(
        said.contains(&format!("pod {uid} (cgroup /{pod})")),
        "{said}"
    );

    run(Command::new("sh")
        .arg("-c")
        .arg("sync; echo 1 > /proc/sys/vm/drop_caches"))
    .unwrap();
    // The other pod's reader first, alone, then ours: only ours is traced.
    std::fs::write(&go_theirs, "").unwrap();
    assert!(theirs.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    let before = vmstat(&PGSTEAL);
    std::fs::write(&go_ours, "").unwrap();
    assert!(ours.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    let after = vmstat(&PGSTEAL);
    let records = traced.stop().unwrap().json();
    drop((in_pod, in_other));

    let rows = total_rows(&records, "process");
    assert!(!rows.is_empty(), "{records:?}");
    for r in &rows {
        assert_eq!(r["pid"].as_u64(), Some(u64::from(ours.id())), "{r}");
    }
    let cgroups = total_rows(&records, "cgroup");
    assert_eq!(cgroups.len(), 1, "{cgroups:?}");
    let pages = summary(&records)["reclaimed_pages"].as_u64().unwrap();
    eprintln!("pod: {pages} pages, vmstat {}", after - before);
    assert_within("the pod's reader", pages, after - before, 0.10);
}
