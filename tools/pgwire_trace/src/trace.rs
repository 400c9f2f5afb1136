//! Live capture: load and attach the socket (or syscall) tracepoints, tell the kernel which
//! sockets are PostgreSQL connections, then drain the ring buffer into the decoder (and
//! `--record`).

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fs::File,
    io::BufWriter,
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::maps::{Array, HashMap, MapData, RingBuf};
use pgbpf_common::{
    loader::{self, Loaded},
    output::{self, Output},
    postgres, procs,
    records::Scope,
    runtime::{Attached, Trace},
    target::Target,
    tracefs,
};
use pgwire_trace_ebpf::{
    HEADER_BYTES, KIND_CLOSE, KIND_DATA, KIND_OPEN, ROLE_CLIENT, ROLE_SERVER, RecordHeader,
    SockInfo, SockKey, counter,
};

use crate::{
    Args,
    capture_file::{Kind, Record, Writer},
    decode::{Decoder, Event},
    report::Reporter,
    sockets::{self, SocketState},
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pgwire_trace"));

/// Connection ids given by userspace to connections open at start (the kernel counts up
/// from 1, these from 2^63).
const EXISTING_ID_BASE: u64 = 1 << 63;

/// The read and write syscalls: one program at each exit (arguments come from the saved
/// registers). Used when the socket tracepoints are missing or --syscall-hooks asks.
const DATA_SYSCALLS: &[&str] = &[
    "read", "write", "recvfrom", "sendto", "readv", "writev", "recvmsg", "sendmsg",
];

/// The socket layer's tracepoints (Linux 6.4 and later): (program, event).
const SOCKET_TRACEPOINTS: &[(&str, &str)] = &[
    ("sock_recv", "sock_recv_length"),
    ("sock_send", "sock_send_length"),
];

/// Syscalls whose enter and exit are both traced.
const PAIRED_SYSCALLS: &[(&str, &str, &str)] = &[
    ("enter_accept", "exit_accept", "accept"),
    ("enter_accept", "exit_accept", "accept4"),
    ("enter_connect", "exit_connect", "connect"),
];

/// A process found at start and what it is.
struct Process {
    pid: u32,
    is_postgres: bool,
}

/// The processes whose sockets to look at: the target's, or every process.
fn processes_of(target: &Target) -> Vec<Process> {
    let pids: Vec<u32> = if !target.tgids.is_empty() {
        target.tgids.clone()
    } else if let Some(c) = &target.cgroup {
        c.processes()
    } else {
        procs::all_pids()
    };
    pids.into_iter()
        .map(|pid| Process {
            pid,
            is_postgres: postgres::binary_of_pid(pid)
                .is_ok_and(|(exe, _)| postgres::is_postgres_binary(&exe)),
        })
        .collect()
}

/// Sockets of the target found at start.
#[derive(Default)]
struct Found {
    listeners: Vec<(SockKey, u16)>,
    connections: Vec<(SockKey, SockInfo, String)>,
}

/// Reads every target process's sockets; `is_pg_port` says which are PostgreSQL server ports.
fn find_sockets(procs: &[Process], is_pg_port: impl Fn(u16) -> bool, clients: bool) -> Found {
    let mut by_netns: StdHashMap<String, StdHashMap<u64, SocketState>> = StdHashMap::new();
    let mut found = Found::default();
    let mut next_id = EXISTING_ID_BASE;
    for p in procs {
        let fds = procs::socket_fds(p.pid);
        if fds.is_empty() {
            continue;
        }
        let ns = std::fs::read_link(format!("/proc/{}/ns/net", p.pid))
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let table = by_netns
            .entry(ns)
            .or_insert_with(|| sockets::sockets_seen_by(p.pid));
        for (fd, inode) in fds {
            let key = SockKey { tgid: p.pid, fd };
            let (role, port, peer) = match (table.get(&inode), p.is_postgres) {
                (Some(SocketState::Listening { port }), true) if is_pg_port(*port) => {
                    found.listeners.push((key, *port));
                    continue;
                }
                (
                    Some(SocketState::Tcp {
                        local_port,
                        remote,
                        remote_port,
                        ..
                    }),
                    true,
                ) if is_pg_port(*local_port) => {
                    (ROLE_SERVER, *local_port, format!("{remote}:{remote_port}"))
                }
                (Some(SocketState::Unix { path: Some(path) }), true) => {
                    match sockets::pg_socket_port(path) {
                        Some(port) if is_pg_port(port) => {
                            (ROLE_SERVER, port, "[local]".to_string())
                        }
                        _ => continue,
                    }
                }
                (
                    Some(SocketState::Tcp {
                        remote,
                        remote_port,
                        ..
                    }),
                    false,
                ) if clients && is_pg_port(*remote_port) => {
                    (ROLE_CLIENT, *remote_port, format!("{remote}:{remote_port}"))
                }
                _ => continue,
            };
            next_id += 1;
            let info = SockInfo {
                conn_id: next_id,
                role,
                port: u32::from(port),
                ..SockInfo::default()
            };
            found.connections.push((key, info, peer));
        }
    }
    found
}

/// The server ports: `--port`, else those PostgreSQL servers on this machine listen on.
fn server_ports(args: &Args) -> HashSet<u16> {
    if !args.port.is_empty() {
        return args.port.iter().copied().collect();
    }
    let mut ports: HashSet<u16> = HashSet::from([5432]);
    let all: Vec<Process> = procs::all_pids()
        .into_iter()
        .filter(|&pid| {
            postgres::binary_of_pid(pid).is_ok_and(|(exe, _)| postgres::is_postgres_binary(&exe))
        })
        .map(|pid| Process {
            pid,
            is_postgres: true,
        })
        .collect();
    for (_, port) in find_sockets(&all, |_| true, false).listeners {
        ports.insert(port);
    }
    ports
}

/// A ring buffer item → `into` (OPEN payloads become address text); false for an item that
/// is not a record. `into`'s payload buffer is reused, so draining allocates nothing per item.
pub fn parse_item(item: &[u8], into: &mut Record) -> bool {
    if item.len() < HEADER_BYTES {
        return false;
    }
    // SAFETY: at least a whole header (checked), plain data, read unaligned.
    let h: RecordHeader = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
    let payload = &item[HEADER_BYTES..];
    let payload = &payload[..(h.captured as usize).min(payload.len())];
    let kind = match h.kind {
        KIND_DATA => Kind::Data,
        KIND_OPEN => Kind::Open,
        KIND_CLOSE => Kind::Close,
        _ => return false,
    };
    into.payload.clear();
    if kind == Kind::Open {
        into.payload
            .extend_from_slice(sockets::sockaddr_label(payload).as_bytes());
    } else {
        into.payload.extend_from_slice(payload);
    }
    into.kind = kind;
    into.role = h.role;
    into.dir = h.dir;
    into.tgid = h.tgid;
    into.tid = h.tid;
    into.fd = h.fd;
    into.port = h.port;
    into.conn_id = h.conn_id;
    into.ts_ns = h.ts_ns;
    into.len = h.len;
    into.lost = h.lost;
    true
}

/// Decoding, reporting and recording of records, shared by the live loop's steps.
struct Sink {
    decoder: Decoder,
    reporter: Reporter,
    recorder: Option<Writer<BufWriter<File>>>,
    /// What the record being fed completed (kept to reuse its memory).
    events: Vec<Event>,
}

impl Sink {
    /// Records `r` (with `--record`), then decodes and reports it; without an output (stdout
    /// closed) it is only recorded.
    fn feed(&mut self, out: Option<&mut Output>, r: &Record) -> anyhow::Result<()> {
        if let Some(w) = &mut self.recorder {
            w.write(r).context("writing the capture file")?;
        }
        let Some(out) = out else {
            return Ok(());
        };
        self.decoder.feed_into(r, &mut self.events);
        for e in self.events.drain(..) {
            self.reporter.event(out, &e)?;
        }
        Ok(())
    }

    /// Ends the capture file (with `--record`): the kernel's counters, then the file flushed.
    fn finish_recording(&mut self, kernel: &[u64]) -> anyhow::Result<()> {
        let Some(mut w) = self.recorder.take() else {
            return Ok(());
        };
        w.write(&Record {
            kind: Kind::Counters,
            role: 0,
            dir: 0,
            tgid: 0,
            tid: 0,
            fd: 0,
            port: 0,
            conn_id: 0,
            ts_ns: output::mono_ns(),
            len: 0,
            lost: [0, 0],
            payload: kernel.iter().flat_map(|c| c.to_le_bytes()).collect(),
        })?;
        w.finish().context("writing the capture file")?;
        Ok(())
    }
}

/// Resolves the target and the ports, loads and attaches, joins the connections open now.
pub fn start<'a>(args: &'a Args, out: &mut Output) -> anyhow::Result<Attached<'a>> {
    let mut target = Target::resolve(&args.target, None)?;
    loader::check_privileges()?;
    // A postmaster's backends are its children, also those forked later.
    target.follow_descendants()?;
    let procs = processes_of(&target);
    let targeted = !target.tgids.is_empty() || target.cgroup.is_some();
    let has_postgres = procs.iter().any(|p| p.is_postgres);
    let track_servers = u32::from(!targeted || has_postgres);
    let track_clients = u32::from(targeted && procs.iter().any(|p| !p.is_postgres));
    if targeted && procs.is_empty() {
        anyhow::bail!("no process in {}", target.describe());
    }
    let ports = server_ports(args);
    let capture = args.capture;
    let ring_bytes: u64 = u64::from(args.buffer_mb) << 20;
    let fork_offset = tracefs::field("sched", "sched_process_fork", "child_pid")?.offset;
    let pid_max = pid_max();
    check_architecture()?;
    let mut loaded = loader::load("pgwire_trace", OBJECT, args.out.verbose, |l| {
        target.set_globals(l);
        l.override_global("CAPTURE_LIMIT", &capture, true)
            .override_global("TRACK_CLIENTS", &track_clients, true)
            .override_global("TRACK_SERVERS", &track_servers, true)
            .override_global("FORK_CHILD_PID_OFFSET", &fork_offset, true)
            .override_global("RING_BYTES", &ring_bytes, true)
            .map_max_entries("EVENTS", ring_bytes as u32)
            .map_max_entries("HAS_SOCKS", pid_max);
    })?;
    target.fill_maps(&mut loaded.ebpf)?;
    {
        let mut map: HashMap<_, u16, u8> = HashMap::try_from(loaded.map_mut("PORTS")?)?;
        for p in &ports {
            map.insert(p, &1, 0)?;
        }
    }
    target.attach_fork_tracking(&mut loaded)?;
    loaded.attach_tracepoint("on_fork", "sched", "sched_process_fork")?;
    loaded.attach_tracepoint("enter_close", "syscalls", "sys_enter_close")?;
    loaded.attach_tracepoint("enter_bind", "syscalls", "sys_enter_bind")?;
    attach_data_hooks(&mut loaded, args.syscall_hooks)?;
    for (enter, exit, name) in PAIRED_SYSCALLS {
        loaded.attach_tracepoint(enter, "syscalls", &format!("sys_enter_{name}"))?;
        loaded.attach_tracepoint(exit, "syscalls", &format!("sys_exit_{name}"))?;
    }
    // Attached first, then told about existing sockets: a connection accepted in between is
    // either in /proc already or seen by accept().
    let found = find_sockets(&procs, |p| ports.contains(&p), track_clients == 1);
    let wall = output::wall_offset_ns();
    let mut sink = Sink {
        decoder: Decoder::new(wall),
        reporter: Reporter::new(crate::style(args)),
        recorder: match &args.record {
            Some(path) => Some(Writer::new(
                BufWriter::new(
                    File::create(path).with_context(|| format!("creating {}", path.display()))?,
                ),
                wall,
            )?),
            None => None,
        },
        events: vec![],
    };
    {
        let mut listeners: HashMap<_, SockKey, u32> =
            HashMap::try_from(loaded.map_mut("LISTENERS")?)?;
        for (key, port) in &found.listeners {
            listeners.insert(key, &u32::from(*port), 0)?;
        }
    }
    {
        let mut has: Array<_, u8> = Array::try_from(loaded.map_mut("HAS_SOCKS")?)?;
        let holders = found.listeners.iter().map(|(k, _)| k.tgid);
        for tgid in holders.chain(found.connections.iter().map(|(k, _, _)| k.tgid)) {
            // A pid beyond the array (pid_max raised since) is looked up in SOCKS anyway.
            let _ = has.set(tgid, &1, 0);
        }
    }
    {
        let mut socks: HashMap<_, SockKey, SockInfo> = HashMap::try_from(loaded.map_mut("SOCKS")?)?;
        let now = output::mono_ns();
        for (key, info, peer) in &found.connections {
            socks.insert(key, info, 0)?;
            sink.feed(
                Some(out),
                &Record {
                    kind: Kind::Existing,
                    role: info.role,
                    dir: 0,
                    tgid: key.tgid,
                    tid: key.tgid,
                    fd: key.fd,
                    port: info.port,
                    conn_id: info.conn_id,
                    ts_ns: now,
                    len: 0,
                    lost: [0, 0],
                    payload: peer.clone().into_bytes(),
                },
            )?;
        }
    }
    let mut ports_sorted: Vec<u16> = ports.iter().copied().collect();
    ports_sorted.sort_unstable();
    let ports_text: Vec<String> = ports_sorted.iter().map(u16::to_string).collect();
    let ring = loaded.take_ring_buffer("EVENTS")?;
    Ok(Attached {
        what: format!("Tracing PostgreSQL connections of {}", target.describe()),
        details: vec![
            format!("ports {}", ports_text.join("/")),
            format!("{} listening sockets", found.listeners.len()),
            format!("{} open connections", found.connections.len()),
        ],
        started: loaded.started,
        watch: target.roots(),
        trace: Box::new(WireTrace {
            loaded,
            ring,
            sink,
            last_prune: Instant::now(),
        }),
    })
}

/// Where reads and writes are captured: the socket layer's tracepoints when the kernel has
/// them (they fire for socket I/O only, and a raw tracepoint calls the program without the
/// perf record a syscall tracepoint builds for every call of every process first), else the
/// exits of the read and write syscalls.
fn attach_data_hooks(loaded: &mut Loaded, syscall_hooks: bool) -> anyhow::Result<()> {
    let socket_layer = !syscall_hooks
        && SOCKET_TRACEPOINTS
            .iter()
            .all(|(_, event)| tracefs::format("sock", event).is_ok());
    if socket_layer {
        for (prog, event) in SOCKET_TRACEPOINTS {
            loaded.attach_raw_tracepoint(prog, event)?;
        }
        return Ok(());
    }
    for name in DATA_SYSCALLS {
        loaded.attach_tracepoint(
            &format!("exit_{name}"),
            "syscalls",
            &format!("sys_exit_{name}"),
        )?;
    }
    Ok(())
}

/// Every read and write of a traced connection is a ring buffer record.
struct WireTrace {
    loaded: Loaded,
    ring: RingBuf<MapData>,
    sink: Sink,
    last_prune: Instant,
}

impl Trace for WireTrace {
    fn wait(&mut self, timeout: Duration) {
        // The kernel wakes us early only when the buffer fills past a quarter.
        loader::wait_readable(&self.ring, timeout);
    }

    fn drain(&mut self, out: &mut Output) -> anyhow::Result<()> {
        // Processes gone before this drain have sent all they will send.
        let prune = self.last_prune.elapsed() >= Duration::from_secs(1);
        let alive_before: Option<(u64, HashSet<u32>)> =
            prune.then(|| (output::mono_ns(), procs::all_pids().into_iter().collect()));
        drain(&mut self.ring, &mut self.sink, Some(out))?;
        stop_capturing(&mut self.loaded, &mut self.sink)?;
        if let Some((sampled_ns, alive)) = alive_before {
            self.last_prune = Instant::now();
            let (events, gone) = self
                .sink
                .decoder
                .close_exited(sampled_ns, |pid| alive.contains(&pid));
            let gone: Vec<SockKey> = gone
                .into_iter()
                .map(|(tgid, fd)| SockKey { tgid, fd })
                .collect();
            for e in events {
                self.sink.reporter.event(out, &e)?;
            }
            forget_sockets(&mut self.loaded, &gone)?;
        }
        Ok(())
    }

    fn interval(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let kernel = counters(&self.loaded)?;
        let sink = &mut self.sink;
        Ok(sink
            .reporter
            .report(out, Scope::Interval, &sink.decoder.stats, &kernel)?)
    }

    fn finish(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let kernel = counters(&self.loaded)?;
        let sink = &mut self.sink;
        for e in sink.decoder.finish() {
            sink.reporter.event(out, &e)?;
        }
        sink.finish_recording(&kernel)?;
        Ok(sink
            .reporter
            .report(out, Scope::Total, &sink.decoder.stats, &kernel)?)
    }

    /// stdout is gone: what the kernel still holds goes to the capture file, which is then
    /// ended as at a normal finish (readable to its end, with the counters).
    fn output_gone(&mut self) -> anyhow::Result<()> {
        if self.sink.recorder.is_none() {
            return Ok(());
        }
        drain(&mut self.ring, &mut self.sink, None)?;
        let kernel = counters(&self.loaded)?;
        self.sink.finish_recording(&kernel)
    }
}

/// Feeds every record waiting in the ring buffer to the sink (to the recorder alone without
/// an output).
fn drain(
    ring: &mut RingBuf<MapData>,
    sink: &mut Sink,
    mut out: Option<&mut Output>,
) -> anyhow::Result<()> {
    let mut record = Record::default();
    while let Some(item) = ring.next() {
        if parse_item(&item, &mut record) {
            sink.feed(out.as_deref_mut(), &record)?;
        }
    }
    Ok(())
}

/// Encrypted connections: nothing to decode, so the kernel stops copying them.
fn stop_capturing(loaded: &mut Loaded, sink: &mut Sink) -> anyhow::Result<()> {
    let keys: Vec<SockKey> = sink
        .decoder
        .stop_capturing
        .drain(..)
        .map(|(tgid, fd)| SockKey { tgid, fd })
        .collect();
    forget_sockets(loaded, &keys)
}

fn forget_sockets(loaded: &mut Loaded, keys: &[SockKey]) -> anyhow::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut socks: HashMap<_, SockKey, SockInfo> = HashMap::try_from(loaded.map_mut("SOCKS")?)?;
    for k in keys {
        // Already gone (closed, evicted) is fine.
        let _ = socks.remove(k);
    }
    Ok(())
}

/// The kernel programs read syscall arguments from saved registers, whose layout they know
/// for these architectures only.
fn check_architecture() -> anyhow::Result<()> {
    match std::env::consts::ARCH {
        "x86_64" | "aarch64" => Ok(()),
        arch => anyhow::bail!("pgwire_trace does not know the syscall registers of {arch}"),
    }
}

/// Highest pid + 1 the kernel hands out (sizes the per-process filter array).
fn pid_max() -> u32 {
    procs::pid_max().unwrap_or(4_194_304)
}

fn counters(loaded: &Loaded) -> anyhow::Result<[u64; counter::COUNT as usize]> {
    loaded.counters()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_items_become_records() {
        let h = RecordHeader {
            ts_ns: 5,
            conn_id: 9,
            len: 10,
            captured: 3,
            kind: KIND_DATA,
            role: ROLE_SERVER,
            ..RecordHeader::default()
        };
        let mut item = vec![0u8; HEADER_BYTES];
        // SAFETY: writing a plain-data header into a buffer of its size.
        unsafe { std::ptr::write_unaligned(item.as_mut_ptr().cast(), h) };
        item.extend(b"abcpadding");
        let mut r = Record::default();
        assert!(parse_item(&item, &mut r));
        assert_eq!((r.payload.as_slice(), r.missing()), (&b"abc"[..], 7));
        assert!(!parse_item(&item[..HEADER_BYTES - 1], &mut r));
    }
}
