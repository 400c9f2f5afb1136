//! The tables per statement, backend type and client (and with `--dev` per network device),
//! for each interval and the whole run; or NDJSON rows.

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use net_per_query_ebpf::{NetEvent, NetState, counter, kind};
use pgbpf_common::{
    output::{self, Output},
    periods::{Periods, period_text},
    pg_probes::ProbeReport,
    postgres::BackendTypes,
    records::{self, Scope},
    sql,
};

use crate::{
    Args,
    devices::{DeviceRow, Devices},
    records::{Backend, Client, Device, Lost, Net, Record, Statement, Totals},
};

/// The label of the connections' own traffic.
const CONNECTION: &str = "[connection]";

impl pgbpf_common::bounded::Fold for Net {
    fn fold(&mut self, other: &Self) {
        self.calls += other.calls;
        self.recv_bytes += other.recv_bytes;
        self.sent_bytes += other.sent_bytes;
    }

    fn weight(&self) -> u64 {
        self.recv_bytes + self.sent_bytes
    }
}

impl Net {
    fn add(&mut self, recv: u64, sent: u64) {
        self.calls += 1;
        self.recv_bytes += recv;
        self.sent_bytes += sent;
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.calls.to_string(),
            output::human_bytes(self.recv_bytes),
            output::human_bytes(self.sent_bytes),
            output::human_bytes(self.sent_bytes / self.calls.max(1)),
        ]
    }
}

#[derive(Debug, Default)]
struct Period {
    all: Net,
    statements: HashMap<String, Net>,
    backends: HashMap<String, Net>,
    clients: HashMap<String, Net>,
}

pub struct Reporter {
    /// `--redact`.
    shown: sql::Shown,
    top: usize,
    periods: Periods<Period>,
    events: u64,
    backends: BackendTypes,
    /// The kernel's per-thread counts: at the end, the statements still counting.
    threads: Option<BpfHashMap<MapData, u32, NetState>>,
    /// `--dev`.
    dev: bool,
    devices: Option<Devices>,
}

impl Reporter {
    pub fn new(args: &Args) -> Reporter {
        Reporter {
            shown: args.redact.shown(),
            top: args.top.max(1),
            periods: Periods::new(),
            events: 0,
            backends: BackendTypes::default(),
            threads: None,
            dev: args.dev,
            devices: None,
        }
    }

    /// One statement's or connection's traffic into both periods.
    fn add(&mut self, e: &NetEvent) {
        let query = if e.kind == kind::CONNECTION {
            CONNECTION.to_string()
        } else {
            let len = (e.query_len as usize).min(e.query.len());
            let text = String::from_utf8_lossy(&e.query[..len]);
            if text.is_empty() {
                "[statement not read]".to_string()
            } else {
                self.shown.text(&text)
            }
        };
        let backend = self.backends.of(e.tgid);
        let client = client(e);
        for p in self.periods.each() {
            p.all.add(e.recv, e.sent);
            pgbpf_common::bounded::row(&mut p.statements, query.clone(), |k| {
                pgbpf_common::bounded::folded(k)
            })
            .add(e.recv, e.sent);
            p.backends
                .entry(backend.clone())
                .or_default()
                .add(e.recv, e.sent);
            p.clients
                .entry(client.clone())
                .or_default()
                .add(e.recv, e.sent);
        }
    }

    /// At the end: the statements whose response was still counting (their session's next
    /// statement had not started) and the connections still open.
    fn add_running(&mut self) {
        let Some(threads) = self.threads.as_ref() else {
            return;
        };
        let states: Vec<NetState> = threads.iter().flatten().map(|(_, s)| s).collect();
        for s in states {
            if s.current.kind == kind::STATEMENT {
                self.add(&s.current);
            }
            let mut c = s.current;
            c.kind = kind::CONNECTION;
            c.recv = s.outside_recv + s.pending_recv;
            c.sent = s.outside_sent;
            if c.recv + c.sent > 0 {
                self.add(&c);
            }
        }
    }
}

/// The client's address, `[local]` for a Unix socket, `unknown` when not learned.
fn client(e: &NetEvent) -> String {
    const AF_UNIX: u16 = 1;
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;
    match e.family {
        AF_UNIX => "[local]".to_string(),
        AF_INET => {
            let a: [u8; 4] = [e.client[0], e.client[1], e.client[2], e.client[3]];
            Ipv4Addr::from(a).to_string()
        }
        AF_INET6 => {
            let a = Ipv6Addr::from(e.client);
            a.to_ipv4_mapped()
                .map_or_else(|| a.to_string(), |v4| v4.to_string())
        }
        _ => "unknown".to_string(),
    }
}

/// Rows sorted by bytes sent and received, most first.
fn by_bytes(map: &HashMap<String, Net>) -> Vec<(&String, &Net)> {
    let mut rows: Vec<_> = map.iter().collect();
    let total = |n: &Net| n.sent_bytes + n.recv_bytes;
    rows.sort_by(|a, b| total(b.1).cmp(&total(a.1)).then(a.0.cmp(b.0)));
    rows
}

impl ProbeReport for Reporter {
    type Event = NetEvent;

    fn event(&mut self, _out: &mut Output, e: &NetEvent) -> io::Result<()> {
        self.events += 1;
        self.add(e);
        Ok(())
    }

    fn take_maps(&mut self, loaded: &mut pgbpf_common::loader::Loaded) -> anyhow::Result<()> {
        self.threads = Some(BpfHashMap::try_from(loaded.take_map("THREADS")?)?);
        if self.dev {
            self.devices = Some(Devices::take(loaded)?);
        }
        Ok(())
    }

    fn processes(&mut self, pids: &[u32]) {
        if let Some(d) = self.devices.as_mut() {
            d.listen_on(pids);
        }
    }

    /// A restarted server may listen on other ports: added (the old ones stay, for a server
    /// that comes back on them).
    fn server_ready(&mut self, pids: &[u32]) {
        self.processes(pids);
    }

    fn report(&mut self, sink: &mut Output, scope: Scope, kernel: &[u64]) -> io::Result<()> {
        if scope == Scope::Total {
            self.add_running();
        }
        let (p, period) = self.periods.end(scope);
        let devices: Vec<DeviceRow> = self
            .devices
            .as_mut()
            .map(|d| d.rows(scope))
            .unwrap_or_default();
        let at = |i: u32| kernel.get(i as usize).copied().unwrap_or(0);
        let totals = Totals {
            ts_ns: output::unix_ns(),
            interval_ns: records::ns(period),
            net: p.all.clone(),
            events: self.events,
            lost: Lost {
                ringbuf_full: at(counter::RINGBUF_FULL),
                threads_full: at(counter::THREADS_FULL),
                other_socket_bytes: at(counter::OTHER_SOCKET_BYTES),
                devices_full: at(counter::DEVICES_FULL),
            },
        };
        if sink.json {
            let (ts_ns, interval_ns) = (totals.ts_ns, totals.interval_ns);
            for (query, net) in &p.statements {
                sink.record(&Record::Statement(Statement {
                    scope,
                    ts_ns,
                    interval_ns,
                    query,
                    net: net.clone(),
                }))?;
            }
            for (backend_type, net) in &p.backends {
                sink.record(&Record::Backend(Backend {
                    scope,
                    ts_ns,
                    interval_ns,
                    backend_type,
                    net: net.clone(),
                }))?;
            }
            for (client, net) in &p.clients {
                sink.record(&Record::Client(Client {
                    scope,
                    ts_ns,
                    interval_ns,
                    client,
                    net: net.clone(),
                }))?;
            }
            for d in devices {
                sink.record(&Record::Device(Device {
                    scope,
                    ts_ns,
                    interval_ns,
                    device: &d.name,
                    netns: d.netns,
                    direction: d.direction,
                    traffic: d.traffic,
                }))?;
            }
            return sink.record(&match scope {
                Scope::Interval => Record::Interval(totals),
                Scope::Total => Record::Summary(totals),
            });
        }
        let (top, width) = (self.top, sink.width);
        let mut out = format!(
            "{}Received {}, sent {} in {} statements and connections {}\n",
            sink.prefix(),
            output::human_bytes(p.all.recv_bytes),
            output::human_bytes(p.all.sent_bytes),
            p.all.calls,
            period_text(scope, period)
        );
        let header = ["CALLS", "RECEIVED", "SENT", "SENT/CALL"];
        for (title, first, map, last) in [
            ("By statement", None, &p.statements, Some("QUERY")),
            ("By backend type", Some("BACKEND"), &p.backends, None),
            ("By client", Some("CLIENT"), &p.clients, None),
        ] {
            out.push_str(&format!("\n{title}:\n"));
            let h: Vec<&str> = first.into_iter().chain(header).chain(last).collect();
            output::top_table(&mut out, &h, &by_bytes(map), top, width, |(k, n)| {
                let mut cells = Vec::new();
                if first.is_some() {
                    cells.push(k.to_string());
                }
                cells.extend(n.cells());
                if last.is_some() {
                    cells.push(output::one_line(k));
                }
                cells
            });
        }
        if let Some(d) = self.devices.as_ref() {
            out.push_str(&format!("\nBy network device ({}):\n", d.ports_text()));
            let header = [
                "DEVICE",
                "DIRECTION",
                "PACKETS",
                "BYTES",
                "POSTGRES PACKETS",
                "POSTGRES BYTES",
            ];
            output::top_table(&mut out, &header, &devices, usize::MAX, width, |d| {
                let t = &d.traffic;
                vec![
                    if d.elsewhere {
                        format!("{} (netns {})", d.name, d.netns)
                    } else {
                        d.name.clone()
                    },
                    d.direction.to_string(),
                    t.packets.to_string(),
                    output::human_bytes(t.bytes),
                    t.postgres_packets.to_string(),
                    output::human_bytes(t.postgres_bytes),
                ]
            });
        }
        let devices_lost = if self.dev {
            format!(
                ", {} packets of devices past the table",
                totals.lost.devices_full
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "lost: {} statements (ring buffer full), {} threads not followed (table \
             full){devices_lost}; not counted: {} moved on other sockets than the clients'\n\n",
            totals.lost.ringbuf_full,
            totals.lost.threads_full,
            output::human_bytes(totals.lost.other_socket_bytes)
        ));
        sink.text(&out)
    }
}
