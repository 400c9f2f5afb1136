//! The BPF maps a process holds and the memory the kernel charges for each (`memlock` in
//! the map's fdinfo): what `-v` prints once a tool's object is loaded, and what the bench
//! records per tool. Kernels before 6.4 report an estimate from key and value sizes there
//! (a ring buffer shows as 0).

use std::collections::HashSet;

/// One map of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapMemory {
    /// The map's name in the object (empty when the kernel does not say).
    pub name: String,
    /// Bytes the kernel charges for it (entries preallocated or not, a ring's pages).
    pub bytes: u64,
}

/// A number field of a /proc/PID/fdinfo text (`key` with its colon: "memlock:").
pub fn fdinfo_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// The distinct BPF maps process `pid` holds descriptors of, largest first; None when its
/// descriptors cannot be read.
pub fn maps_of(pid: u32) -> Option<Vec<MapMemory>> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut seen = HashSet::new();
    let mut maps = vec![];
    for fd in fds.flatten() {
        let is_map =
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf-map");
        if !is_map {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
        let Ok(text) = std::fs::read_to_string(info) else {
            continue;
        };
        let (Some(id), Some(bytes)) = (
            fdinfo_field(&text, "map_id:"),
            fdinfo_field(&text, "memlock:"),
        ) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        let name = map_name(pid, &fd.file_name().to_string_lossy(), id).unwrap_or_default();
        maps.push(MapMemory { name, bytes });
    }
    maps.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    Some(maps)
}

/// The name of map `id`, held as descriptor `fd` by `pid`: through a duplicate of our own
/// descriptor (no privilege needed), else by its id (which needs CAP_SYS_ADMIN).
fn map_name(pid: u32, fd: &str, id: u64) -> Option<String> {
    let info = if pid == std::process::id() {
        let fd: i32 = fd.parse().ok()?;
        // SAFETY: a descriptor of this process, open while /proc listed it; duplicated, and
        // only the duplicate is owned (and closed) here. Closed in between, dup fails.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let own = borrowed.try_clone_to_owned().ok()?;
        aya::maps::MapData::from_fd(own).ok()?.info().ok()?
    } else {
        aya::maps::MapInfo::from_id(u32::try_from(id).ok()?).ok()?
    };
    info.name_as_str().map(str::to_string)
}

/// One line for `-v`: the total, then the maps of 64 KiB or more.
pub fn summary(maps: &[MapMemory]) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let total: u64 = maps.iter().map(|m| m.bytes).sum();
    let large: Vec<String> = maps
        .iter()
        .filter(|m| m.bytes >= 64 << 10)
        .map(|m| format!("{} {:.2} MiB", m.name, mib(m.bytes)))
        .collect();
    let small = maps.len() - large.len();
    let mut line = format!("{} BPF maps, {:.2} MiB", maps.len(), mib(total));
    if !large.is_empty() {
        line += &format!(": {}", large.join(", "));
    }
    if small > 0 {
        line += &format!(" and {small} under 64 KiB");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_the_large_maps() {
        let maps = [
            MapMemory {
                name: "EVENTS".into(),
                bytes: 16 << 20,
            },
            MapMemory {
                name: "SOCKS".into(),
                bytes: 3 << 19,
            },
            MapMemory {
                name: "PORTS".into(),
                bytes: 4096,
            },
        ];
        assert_eq!(
            summary(&maps),
            "3 BPF maps, 17.50 MiB: EVENTS 16.00 MiB, SOCKS 1.50 MiB and 1 under 64 KiB"
        );
    }

    #[test]
    fn a_process_without_maps_has_none() {
        assert_eq!(maps_of(std::process::id()), Some(vec![]));
        assert_eq!(maps_of(u32::MAX), None);
    }
}
