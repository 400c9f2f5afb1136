//! `--dev`: the packets and bytes each network device moved each way, and PostgreSQL's part
//! of them. The kernel counts per device, direction and CPU (DEVICES), telling PostgreSQL's
//! packets by their TCP port on this host's side: one a traced server listens on, in the
//! device's network namespace (PORTS, filled here at attach from the servers' sockets in
//! /proc). Each report sums the CPUs and takes the difference with the previous reading.

use std::{collections::HashMap, os::unix::fs::MetadataExt as _};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap};
use net_per_query_ebpf::{DeviceCount, DeviceKey, PortKey, direction};
use pgbpf_common::{loader::Loaded, procs, records::Scope};

use crate::records::Traffic;

/// One device's traffic one way, in a report.
#[derive(Debug)]
pub struct DeviceRow {
    pub name: String,
    /// The inode number of the device's network namespace.
    pub netns: u64,
    /// Not the tool's own network namespace (another container's device).
    pub elsewhere: bool,
    pub direction: &'static str,
    pub traffic: Traffic,
}

pub struct Devices {
    counts: PerCpuHashMap<MapData, DeviceKey, DeviceCount>,
    ports: BpfHashMap<MapData, PortKey, u8>,
    /// Each device's totals at the previous interval report.
    at_interval: HashMap<DeviceKey, Traffic>,
    /// The ports PostgreSQL's part counts: (network namespace, port).
    pub listening: Vec<(u64, u16)>,
    own_netns: u64,
}

/// The inode number of `pid`'s network namespace ("self": the tool's).
fn netns_of(pid: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

fn add(sum: &mut Traffic, c: &DeviceCount) {
    sum.packets += c.packets;
    sum.bytes += c.bytes;
    sum.postgres_packets += c.postgres_packets;
    sum.postgres_bytes += c.postgres_bytes;
}

fn since(now: &Traffic, before: Option<&Traffic>) -> Traffic {
    let b = before.cloned().unwrap_or_default();
    Traffic {
        packets: now.packets.saturating_sub(b.packets),
        bytes: now.bytes.saturating_sub(b.bytes),
        postgres_packets: now.postgres_packets.saturating_sub(b.postgres_packets),
        postgres_bytes: now.postgres_bytes.saturating_sub(b.postgres_bytes),
    }
}

impl Devices {
    /// The kernel's tables (once after load).
    pub fn take(loaded: &mut Loaded) -> anyhow::Result<Devices> {
        Ok(Devices {
            counts: PerCpuHashMap::try_from(loaded.take_map("DEVICES")?)?,
            ports: BpfHashMap::try_from(loaded.take_map("PORTS")?)?,
            at_interval: HashMap::new(),
            listening: vec![],
            own_netns: netns_of("self").unwrap_or(0),
        })
    }

    /// The listening TCP ports of the servers among the target's `pids` (processes whose
    /// parent has another name: the postmasters, not their backends, whatever the binary is
    /// called), into the kernel's table.
    pub fn listen_on(&mut self, pids: &[u32]) {
        for &pid in pids {
            let name = procs::comm_of(pid);
            let parent = procs::parent_of(pid).and_then(procs::comm_of);
            if name.is_none() || parent == name {
                continue;
            }
            let Some(netns) = netns_of(&pid.to_string()) else {
                continue;
            };
            for port in procs::listening_tcp_ports(pid) {
                let key = PortKey {
                    netns: netns as u32,
                    port: u32::from(port),
                };
                if !self.listening.contains(&(netns, port))
                    && self.ports.insert(&key, &1, 0).is_ok()
                {
                    self.listening.push((netns, port));
                }
            }
        }
        self.listening.sort_unstable();
    }

    /// Every device's traffic each way over the report's period (the run, or the interval
    /// since the previous one), most bytes first; devices without traffic in it left out.
    pub fn rows(&mut self, scope: Scope) -> Vec<DeviceRow> {
        let mut now: HashMap<DeviceKey, (Traffic, String)> = HashMap::new();
        for (key, per_cpu) in self.counts.iter().flatten() {
            let (sum, name) = now.entry(key).or_default();
            for c in per_cpu.iter() {
                add(sum, c);
                if name.is_empty() && c.name[0] != 0 {
                    let len = c.name.iter().position(|&b| b == 0).unwrap_or(c.name.len());
                    *name = String::from_utf8_lossy(&c.name[..len]).into_owned();
                }
            }
        }
        let mut rows: Vec<DeviceRow> = now
            .iter()
            .map(|(key, (total, name))| {
                let traffic = match scope {
                    Scope::Total => total.clone(),
                    Scope::Interval => since(total, self.at_interval.get(key)),
                };
                DeviceRow {
                    name: if name.is_empty() {
                        format!("ifindex {}", key.ifindex)
                    } else {
                        name.clone()
                    },
                    netns: u64::from(key.netns),
                    elsewhere: u64::from(key.netns) != self.own_netns,
                    direction: if key.direction == direction::SENT {
                        "sent"
                    } else {
                        "received"
                    },
                    traffic,
                }
            })
            .filter(|r| r.traffic.packets > 0)
            .collect();
        if scope == Scope::Interval {
            self.at_interval = now.into_iter().map(|(k, (t, _))| (k, t)).collect();
        }
        rows.sort_by(|a, b| {
            (b.traffic.bytes, &a.name, a.direction).cmp(&(a.traffic.bytes, &b.name, b.direction))
        });
        rows
    }

    /// The ports counted as PostgreSQL's, for the table's title: "TCP port 5432", with the
    /// namespace of those outside the tool's own.
    pub fn ports_text(&self) -> String {
        if self.listening.is_empty() {
            return "no listening TCP port of a traced server found at attach".into();
        }
        let ports: Vec<String> = self
            .listening
            .iter()
            .map(|&(netns, port)| {
                if netns == self.own_netns {
                    port.to_string()
                } else {
                    format!("{port} (netns {netns})")
                }
            })
            .collect();
        let s = if ports.len() > 1 { "s" } else { "" };
        format!("PostgreSQL: TCP port{s} {}", ports.join(", "))
    }
}
