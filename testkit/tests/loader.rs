//! The common loader against the real kernel: a tracepoint, a uprobe and a perf event, each
//! with the in-kernel pid filter, counted and compared with what this process did; and the
//! verifier's refusal explained.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{process::Command, time::Instant};

use aya::{
    maps::Array,
    programs::{
        perf_event::{PerfEventConfig, SamplePolicy, SoftwareEvent},
        uprobe::UProbeAttachLocation,
    },
};
use pgbpf_common::{
    loader::{self, Loaded},
    target::{Target, TargetArgs},
};
use pgbpf_selftest_ebpf::{CPU_SAMPLES, GETPID, MARKER};
use pgbpf_testkit::{exclusive, require_root};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/selftest"));

fn load_for_this_process(verbose: bool) -> Loaded {
    let args = TargetArgs {
        pids: vec![std::process::id()],
        ..Default::default()
    };
    let mut target = Target::resolve(&args, None).unwrap();
    let mut loaded = loader::load("selftest", OBJECT, verbose, |l| target.set_globals(l)).unwrap();
    target.fill_maps(&mut loaded.ebpf).unwrap();
    loaded
}

fn count(loaded: &Loaded, index: u32) -> u64 {
    let map: Array<_, u64> = Array::try_from(loaded.ebpf.map("COUNTS").unwrap()).unwrap();
    map.get(&index, 0).unwrap()
}

#[test]
fn tracepoint_counts_only_the_target_process() {
    require_root();
    let _lock = exclusive();
    let mut loaded = load_for_this_process(false);
    loaded
        .attach_tracepoint("getpid_enter", "syscalls", "sys_enter_getpid")
        .unwrap();
    for _ in 0..1000 {
        // SAFETY: getpid has no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    // Another process calling getpid must not be counted.
    let other = Command::new("sh")
        .arg("-c")
        .arg("for i in $(seq 200); do /bin/true; done")
        .status()
        .unwrap();
    assert!(other.success());
    let n = count(&loaded, GETPID);
    assert!(
        (1000..1010).contains(&n),
        "counted {n} getpid calls of this process, made 1000"
    );
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pgbpf_selftest_marker(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_add(1)
}

#[test]
fn uprobe_counts_every_call() {
    require_root();
    let _lock = exclusive();
    let mut loaded = load_for_this_process(false);
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    loaded
        .attach_uprobe(
            "marker",
            &exe,
            UProbeAttachLocation::Symbol("pgbpf_selftest_marker"),
        )
        .unwrap();
    let mut acc = 0;
    for i in 0..250 {
        acc += pgbpf_selftest_marker(i);
    }
    assert!(acc > 0);
    assert_eq!(count(&loaded, MARKER), 250);
}

fn cpu_time_ms() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    tv(r.ru_utime) + tv(r.ru_stime)
}

#[test]
fn perf_event_samples_match_cpu_time() {
    require_root();
    let _lock = exclusive();
    let mut loaded = load_for_this_process(false);
    loaded
        .attach_perf_event_all_cpus(
            "cpu_sample",
            "cpu-clock",
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            SamplePolicy::Period(1_000_000), // one sample per ms of CPU time
        )
        .unwrap();
    let cpu_before = cpu_time_ms();
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed().as_millis() < 600 {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    let cpu_ms = cpu_time_ms() - cpu_before;
    let samples = count(&loaded, CPU_SAMPLES) as f64;
    assert!(
        (samples - cpu_ms).abs() <= 0.2 * cpu_ms,
        "{samples} cpu-clock samples at 1 per ms, getrusage says {cpu_ms:.0} ms of CPU"
    );
}

#[test]
fn verifier_refusal_is_explained() {
    require_root();
    let _lock = exclusive();
    let mut loaded = load_for_this_process(false);
    let e = loaded
        .attach_tracepoint("rejected", "syscalls", "sys_enter_getppid")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "the kernel's verifier rejected the program for tracepoint syscalls:sys_enter_getppid; \
         rerun with -v to see the verifier log"
    );
    let mut verbose = load_for_this_process(true);
    let e = verbose
        .attach_tracepoint("rejected", "syscalls", "sys_enter_getppid")
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid mem access"), "{e}");
}

#[test]
fn missing_tracepoint_names_the_hook() {
    require_root();
    let _lock = exclusive();
    let mut loaded = load_for_this_process(false);
    let e = loaded
        .attach_tracepoint("getpid_enter", "syscalls", "sys_enter_no_such_call")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("tracepoint syscalls:sys_enter_no_such_call does not exist on this kernel"),
        "{e}"
    );
}

#[test]
fn descendants_started_after_attach_are_followed() {
    require_root();
    let _lock = exclusive();
    let args = TargetArgs {
        pids: vec![std::process::id()],
        ..Default::default()
    };
    let mut target = Target::resolve(&args, None).unwrap();
    target.follow_descendants().unwrap();
    let mut loaded = loader::load("selftest", OBJECT, false, |l| target.set_globals(l)).unwrap();
    target.fill_maps(&mut loaded.ebpf).unwrap();
    target.attach_fork_tracking(&mut loaded).unwrap();
    loaded
        .attach_tracepoint("getpid_enter", "syscalls", "sys_enter_getpid")
        .unwrap();
    // A grandchild, forked after the attach: sh forks python3.
    let ok = Command::new("sh")
        .arg("-c")
        .arg("python3 -c 'import os\nfor _ in range(500): os.getpid()'")
        .status()
        .unwrap();
    assert!(ok.success());
    let n = count(&loaded, GETPID);
    assert!(
        (500..600).contains(&n),
        "counted {n} getpid calls of descendants, they made 500 (+ startup)"
    );
}
