//! The kernel's BPF objects and probe definitions now, for tests that check a tool left
//! nothing behind: program, map and link ids (the kernel's BPF_*_GET_NEXT_ID walk, through
//! aya), and the lines of tracefs' uprobe_events and kprobe_events (probes made through
//! tracefs rather than perf_event_open's PMUs).

use std::collections::BTreeSet;

/// What the kernel holds at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BpfObjects {
    /// (id, name) of each loaded program.
    pub programs: BTreeSet<(u32, String)>,
    pub maps: BTreeSet<(u32, String)>,
    pub links: BTreeSet<u32>,
    /// Lines of uprobe_events and kprobe_events.
    pub probe_events: BTreeSet<String>,
}

fn tracefs_lines(file: &str) -> Vec<String> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|dir| std::fs::read_to_string(format!("{dir}/{file}")).ok())
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

impl BpfObjects {
    pub fn now() -> BpfObjects {
        BpfObjects {
            programs: aya::programs::loaded_programs()
                .flatten()
                .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
                .collect(),
            maps: aya::maps::loaded_maps()
                .flatten()
                .map(|m| (m.id(), m.name_as_str().unwrap_or("").to_string()))
                .collect(),
            links: aya::programs::loaded_links()
                .flatten()
                .map(|l| l.id())
                .collect(),
            probe_events: tracefs_lines("uprobe_events")
                .into_iter()
                .chain(tracefs_lines("kprobe_events"))
                .collect(),
        }
    }

    /// What `self` holds that `before` did not.
    pub fn added_since(&self, before: &BpfObjects) -> BpfObjects {
        BpfObjects {
            programs: self
                .programs
                .difference(&before.programs)
                .cloned()
                .collect(),
            maps: self.maps.difference(&before.maps).cloned().collect(),
            links: self.links.difference(&before.links).copied().collect(),
            probe_events: self
                .probe_events
                .difference(&before.probe_events)
                .cloned()
                .collect(),
        }
    }

    /// What of `ours` is still in `self`.
    pub fn still_holding(&self, ours: &BpfObjects) -> BpfObjects {
        BpfObjects {
            programs: self
                .programs
                .intersection(&ours.programs)
                .cloned()
                .collect(),
            maps: self.maps.intersection(&ours.maps).cloned().collect(),
            links: self.links.intersection(&ours.links).copied().collect(),
            probe_events: self
                .probe_events
                .intersection(&ours.probe_events)
                .cloned()
                .collect(),
        }
    }

    /// Waits (up to 5 s) until the kernel has released every object of `ours` (a killed
    /// process's go asynchronously): what is left then, and how long the wait took.
    pub fn wait_released(ours: &BpfObjects) -> (BpfObjects, std::time::Duration) {
        let start = std::time::Instant::now();
        loop {
            let left = BpfObjects::now().still_holding(ours);
            if left.is_empty() || start.elapsed() > std::time::Duration::from_secs(5) {
                return (left, start.elapsed());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
            && self.maps.is_empty()
            && self.links.is_empty()
            && self.probe_events.is_empty()
    }
}

/// Entries in map `id` now, for hash maps (plain, per-CPU, LRU): the distinct keys met
/// walking with BPF_MAP_GET_NEXT_KEY (aya has no key walk for a map whose types it does not
/// know). A key deleted under the walk restarts it from the first key: keys are counted
/// once each and the walk stops after twice the map's size. None for other kinds of maps
/// (arrays are full by construction) or a map gone.
pub fn hash_map_entries(id: u32) -> Option<u64> {
    use aya::maps::MapType;
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let info = aya::maps::MapInfo::from_id(id).ok()?;
    if !matches!(
        info.map_type().ok()?,
        MapType::Hash | MapType::PerCpuHash | MapType::LruHash | MapType::LruPerCpuHash
    ) {
        return None;
    }
    let fd = info.fd().ok()?;
    let size = info.key_size() as usize;
    /// union bpf_attr, as BPF_MAP_GET_NEXT_KEY reads it.
    #[repr(C)]
    struct NextKey {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let (mut key, mut next) = (vec![0u8; size], vec![0u8; size]);
    let mut seen = std::collections::HashSet::new();
    let mut first = true;
    for _ in 0..2 * u64::from(info.max_entries()) + 1 {
        let attr = NextKey {
            map_fd: fd.as_fd().as_raw_fd() as u32,
            _pad: 0,
            // A null key asks for the first one.
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: bpf(2) with an attr of the size given, whose pointers are buffers of the
        // map's key size that live through the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const NextKey,
                std::mem::size_of::<NextKey>(),
            )
        };
        if rc != 0 {
            break;
        }
        seen.insert(next.clone());
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
    Some(seen.len() as u64)
}

/// Kills `traced` with SIGKILL and checks that the kernel let go of everything it had loaded
/// (`ours`: what it added, from [`BpfObjects::added_since`]) and that the USDT semaphores at
/// `offsets` of the postgres binary, as backend `backend_pid` sees them, are back to 0 (the
/// kernel lowers them when the last reference goes). `name` labels failures and the line
/// printed with the counts and how long the release took.
pub fn kill_9_releases_everything(
    name: &str,
    traced: crate::tool::Traced,
    ours: &BpfObjects,
    backend_pid: u32,
    offsets: &[u64],
) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(traced.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let finished = traced.wait(std::time::Duration::from_secs(10)).unwrap();
    assert!(!finished.status.success(), "{name} was killed");
    let (left, released_in) = BpfObjects::wait_released(ours);
    assert!(
        left.is_empty(),
        "{name} left behind after kill -9: {left:?}"
    );
    for &off in offsets {
        let v = crate::wait_semaphore(backend_pid, "/bin/postgres", off, 0).unwrap();
        assert_eq!(v, 0, "{name}: semaphore at {off:#x} still raised");
    }
    eprintln!(
        "{name}: {} programs, {} maps, {} links released {} ms after kill -9",
        ours.programs.len(),
        ours.maps.len(),
        ours.links.len(),
        released_in.as_millis()
    );
}
