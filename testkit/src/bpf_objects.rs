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

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
            && self.maps.is_empty()
            && self.links.is_empty()
            && self.probe_events.is_empty()
    }
}
