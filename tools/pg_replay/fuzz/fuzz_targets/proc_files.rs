//! Arbitrary bytes as the /proc and cgroup texts the tools still parse by hand: mountinfo
//! (the cgroup v2 mount), a BPF map's fdinfo, /proc/PID/cgroup (net_cls/net_prio tags),
//! PostgreSQL's lock files (postmaster.pid, .s.PGSQL.N.lock), and each line as a cgroup
//! path (container ids, pod UIDs: names anyone who starts a container chooses). None may
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbpf_common::cgroup;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = cgroup::parse_cgroup2_mount(&text);
    let _ = pgbpf_common::map_memory::fdinfo_field(&text, "memlock:");
    let _ = pgbpf_common::server::lock_file_pid(&text);
    let _ = pgbpf_capture::sockets::tagging_lines(&text);
    for line in text.lines() {
        let placement = cgroup::Placement::of_path(line);
        assert!(placement.container.len() <= 12);
        let _ = cgroup::pod_uid(line);
    }
});
