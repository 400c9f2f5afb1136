//! Live capture: load and attach the socket (or syscall) tracepoints, tell the kernel which
//! sockets are the protocol's connections (listeners and connections open now, from /proc),
//! then hand each ring buffer record to the tool.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, RingBuf};
use pgbpf_capture_ebpf::{
    FLAG_TLS, HEADER_BYTES, KIND_CLOSE, KIND_DATA, KIND_OPEN, ROLE_CLIENT, ROLE_SERVER,
    RecordHeader, SockInfo, SockKey, counter,
};
use pgbpf_common::{
    loader::{self, Loaded},
    output, procs,
    target::{Target, TargetArgs},
    tracefs,
};

use crate::{
    Protocol,
    file::{Kind, Record},
    sockets::{self, SocketState},
    tls,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capture"));

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

/// How to capture.
#[derive(Clone, Debug)]
pub struct Options {
    /// Server ports (`--port`); empty: those the protocol's servers here listen on.
    pub ports: Vec<u16>,
    /// Bytes copied per read or write.
    pub capture: u32,
    /// Ring buffer size in MiB.
    pub buffer_mb: u32,
    /// The syscall exits instead of the socket tracepoints.
    pub syscall_hooks: bool,
    /// Read TLS plaintext through the processes' libssl.
    pub tls: bool,
    pub verbose: bool,
}

/// A process found at start and whether it is one of the protocol's servers.
struct Process {
    pid: u32,
    is_server: bool,
}

/// The processes whose sockets to look at: the target's, or every process.
fn processes_of(protocol: &Protocol, target: &Target) -> Vec<Process> {
    let pids: Vec<u32> = if !target.tgids.is_empty() {
        target.tgids.clone()
    } else if let Some(c) = &target.cgroup {
        c.processes()
    } else {
        procs::all_pids()
    };
    processes(protocol, &pids)
}

/// `pids`, each with whether it is one of the protocol's servers.
fn processes(protocol: &Protocol, pids: &[u32]) -> Vec<Process> {
    pids.iter()
        .map(|&pid| Process {
            pid,
            is_server: (protocol.is_server)(pid),
        })
        .collect()
}

/// Sockets of the target found at start.
#[derive(Default)]
struct Found {
    listeners: Vec<(SockKey, u16)>,
    connections: Vec<(SockKey, SockInfo, String)>,
}

/// Reads every target process's sockets; `is_port` says which are server ports (a Unix
/// socket whose path names no port, as Redis', counts whatever the ports).
/// Connections found get ids after `next_id` (which moves on past them).
fn find_sockets(
    protocol: &Protocol,
    procs: &[Process],
    is_port: impl Fn(u16) -> bool,
    clients: bool,
    next_id: &mut u64,
) -> Found {
    let mut by_netns: StdHashMap<String, StdHashMap<u64, SocketState>> = StdHashMap::new();
    let mut found = Found::default();
    let unix_port = |path: &str| (protocol.unix_port)(path).filter(|&p| p == 0 || is_port(p));
    let our_tags = sockets::tagging_cgroups("self");
    for p in procs {
        if !p.is_server && !clients {
            continue;
        }
        let fds = procs::socket_fds(p.pid);
        if fds.is_empty() {
            continue;
        }
        // Each socket asked through a duplicate of it, or where that is refused (an old
        // kernel, no ptrace right) or would re-tag the socket (net_cls, net_prio), looked up
        // in /proc/net once per network namespace.
        let asked = sockets::duplicating_is_harmless(our_tags.as_deref(), p.pid)
            .then(|| sockets::ProcessSockets::open(p.pid).ok())
            .flatten();
        // The process's network namespace, read once, when a socket needs the fallback.
        let mut netns: Option<String> = None;
        let mut state_of = |fd: u32, inode: u64| -> Option<SocketState> {
            match asked.as_ref().map(|a| a.state(fd, inode)) {
                Some(Ok(state)) => return state,
                Some(Err(nix::errno::Errno::EBADF)) => return None,
                _ => {}
            }
            let ns = netns.get_or_insert_with(|| {
                std::fs::read_link(format!("/proc/{}/ns/net", p.pid))
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let table = by_netns
                .entry(ns.clone())
                .or_insert_with(|| sockets::sockets_seen_by(p.pid));
            table.get(&inode).cloned()
        };
        for (fd, inode) in fds {
            let key = SockKey { tgid: p.pid, fd };
            let (role, port, peer) = match (state_of(fd, inode).as_ref(), p.is_server) {
                (Some(SocketState::Listening { port }), true) if is_port(*port) => {
                    found.listeners.push((key, *port));
                    continue;
                }
                (Some(SocketState::UnixBound { path }), true) => {
                    if let Some(port) = unix_port(path) {
                        found.listeners.push((key, port));
                    }
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
                ) if is_port(*local_port) => {
                    (ROLE_SERVER, *local_port, format!("{remote}:{remote_port}"))
                }
                (Some(SocketState::Unix { path: Some(path) }), true) => match unix_port(path) {
                    Some(port) => (ROLE_SERVER, port, "[local]".to_string()),
                    None => continue,
                },
                (
                    Some(SocketState::Tcp {
                        remote,
                        remote_port,
                        ..
                    }),
                    false,
                ) if clients && is_port(*remote_port) => {
                    (ROLE_CLIENT, *remote_port, format!("{remote}:{remote_port}"))
                }
                _ => continue,
            };
            *next_id += 1;
            let info = SockInfo {
                conn_id: *next_id,
                role,
                port: u32::from(port),
                ..SockInfo::default()
            };
            found.connections.push((key, info, peer));
        }
    }
    found
}

/// The server ports: `ports`, else those the protocol's servers on this machine listen on
/// (and the default port).
fn server_ports(protocol: &Protocol, ports: &[u16]) -> HashSet<u16> {
    if !ports.is_empty() {
        return ports.iter().copied().collect();
    }
    let mut found: HashSet<u16> = HashSet::from([protocol.default_port]);
    let all: Vec<Process> = procs::all_pids()
        .into_iter()
        .filter(|&pid| (protocol.is_server)(pid))
        .map(|pid| Process {
            pid,
            is_server: true,
        })
        .collect();
    let mut ids = EXISTING_ID_BASE;
    for (_, port) in find_sockets(protocol, &all, |_| true, false, &mut ids).listeners {
        if port != 0 {
            found.insert(port);
        }
    }
    found
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
    into.tls = h.flags & FLAG_TLS != 0;
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

/// The kernel's counters, as the capture file's COUNTERS record carries them.
pub type Counters = [u64; counter::COUNT as usize];

/// A live capture of one protocol's connections.
pub struct Capture {
    loaded: Loaded,
    ring: RingBuf<MapData>,
    pub protocol: &'static Protocol,
    pub target: Target,
    /// The server ports traced, sorted.
    pub ports: Vec<u16>,
    pub listeners: usize,
    /// The connections open at start, as EXISTING records: a tool feeds them to its decoder
    /// (and capture file) before the first drain.
    pub existing: Vec<Record>,
    /// The libssl files probed for TLS plaintext.
    pub libssl: Vec<tls::Libssl>,
    /// TLS plaintext is read (not `--no-tls`).
    pub tls_enabled: bool,
    last_prune: Instant,
    record: Record,
    /// The id the next connection found in /proc gets.
    next_existing_id: u64,
}

/// Tells the kernel about the sockets found in /proc: the listeners, and the connections
/// (returned as EXISTING records for the decoder).
fn tell_kernel(loaded: &mut Loaded, found: &Found) -> anyhow::Result<Vec<Record>> {
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
    let mut existing = Vec::with_capacity(found.connections.len());
    let mut socks: HashMap<_, SockKey, SockInfo> = HashMap::try_from(loaded.map_mut("SOCKS")?)?;
    let now = output::mono_ns();
    for (key, info, peer) in &found.connections {
        socks.insert(key, info, 0)?;
        existing.push(Record {
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
            tls: false,
            payload: peer.clone().into_bytes(),
        });
    }
    Ok(existing)
}

impl Capture {
    /// Resolves the target and the ports, loads and attaches, joins the connections open now.
    pub fn start(
        protocol: &'static Protocol,
        target_args: &TargetArgs,
        opts: &Options,
    ) -> anyhow::Result<Capture> {
        // `--port` says which traffic (`opts.ports`), not whose: any process serving it.
        let by_process = TargetArgs {
            port: vec![],
            ..target_args.clone()
        };
        let mut target = Target::resolve(&by_process, None)?;
        loader::check_privileges()?;
        // A server's children (a postmaster's backends) are covered, also those forked later.
        target.follow_descendants()?;
        let procs = processes_of(protocol, &target);
        let targeted = !target.tgids.is_empty() || target.cgroup.is_some();
        let has_server = procs.iter().any(|p| p.is_server);
        let track_servers = u32::from(!targeted || has_server);
        let track_clients = u32::from(targeted && procs.iter().any(|p| !p.is_server));
        if targeted && procs.is_empty() {
            anyhow::bail!("no process in {}", target.describe());
        }
        // Reading the servers' listening sockets walks the kernel's TCP tables (8 ms with a
        // large hash): on the other core, while the kernel loads the object.
        let given_ports = opts.ports.clone();
        let ports = std::thread::spawn(move || server_ports(protocol, &given_ports));
        let capture = opts.capture;
        let ring_bytes: u64 = u64::from(opts.buffer_mb) << 20;
        let fork_offset = tracefs::field("sched", "sched_process_fork", "child_pid")?.offset;
        let pid_max = procs::pid_max().unwrap_or(4_194_304);
        let pg_paths = u32::from(protocol.kernel_pg_paths);
        let accept_fork = u32::from(protocol.accept_fork);
        check_architecture(protocol)?;
        // The TLS libraries of the servers (and of the clients given as the target).
        let libssl = if opts.tls {
            let pids: Vec<u32> = procs
                .iter()
                .filter(|p| p.is_server || track_clients == 1)
                .map(|p| p.pid)
                .collect();
            tls::find(&pids)
        } else {
            vec![]
        };
        let tls_hooks = u32::from(!libssl.is_empty());
        let tls_plans = tls::plan_in_background(&libssl);
        let mut loaded = loader::load(protocol.tool, OBJECT, opts.verbose, |l| {
            target.set_globals(l);
            l.override_global("CAPTURE_LIMIT", &capture, true)
                .override_global("TRACK_CLIENTS", &track_clients, true)
                .override_global("TRACK_SERVERS", &track_servers, true)
                .override_global("UNIX_PG_PATHS", &pg_paths, true)
                .override_global("FOLLOW_ACCEPT_FORK", &accept_fork, true)
                .override_global("FORK_CHILD_PID_OFFSET", &fork_offset, true)
                .override_global("RING_BYTES", &ring_bytes, true)
                .override_global("TLS_HOOKS", &tls_hooks, true)
                .map_max_entries("EVENTS", ring_bytes as u32)
                .map_max_entries("HAS_SOCKS", pid_max);
            if tls_hooks == 0 {
                // No TLS probes: their maps (7.4 MiB, LRU maps are preallocated) stay empty.
                l.map_max_entries("SSL_FDS", 1)
                    .map_max_entries("TLS_CALLS", 1);
            }
        })?;
        target.fill_maps(&mut loaded.ebpf)?;
        let ports = ports
            .join()
            .map_err(|_| anyhow::anyhow!("finding the servers' ports failed"))?;
        {
            let mut map: HashMap<_, u16, u8> = HashMap::try_from(loaded.map_mut("PORTS")?)?;
            for p in &ports {
                map.insert(p, &1, 0)?;
            }
        }
        // The socket programs are most of the verifier's work (both cores at it), while
        // the TLS probes are placed: before the sockets are read from /proc, so that a TLS
        // call begun in between is placed by its socket I/O like any other.
        let plans = tls_plans
            .join()
            .map_err(|_| anyhow::anyhow!("planning the TLS probes failed"))?;
        let mut tls_probes = vec![];
        for (lib, sites) in libssl.iter().zip(plans) {
            let sites = sites.with_context(|| format!("probing {} for TLS plaintext", lib.path))?;
            tls_probes.extend(tls::uprobes(&loaded, lib, &sites));
        }
        let socket_layer = socket_layer(opts.syscall_hooks);
        let data_programs = data_programs(socket_layer);
        // The large data programs first in the loading queue, the small ones after (they
        // fill in while the large ones are verified instead of loading one by one below).
        let mut programs: Vec<&str> = data_programs.iter().map(String::as_str).collect();
        programs.extend(target.fork_tracking_programs());
        programs.extend(["on_fork", "enter_close", "enter_bind"]);
        for (enter, exit, _) in PAIRED_SYSCALLS {
            programs.extend([enter, exit]);
        }
        loaded
            .preload(&programs, &tls_probes)
            .context("probing libssl for TLS plaintext")?;
        target.attach_fork_tracking(&mut loaded)?;
        loaded.attach_tracepoint("on_fork", "sched", "sched_process_fork")?;
        loaded.attach_tracepoint("enter_close", "syscalls", "sys_enter_close")?;
        loaded.attach_tracepoint("enter_bind", "syscalls", "sys_enter_bind")?;
        attach_data_hooks(&mut loaded, socket_layer)?;
        for (enter, exit, name) in PAIRED_SYSCALLS {
            loaded.attach_tracepoint(enter, "syscalls", &format!("sys_enter_{name}"))?;
            loaded.attach_tracepoint(exit, "syscalls", &format!("sys_exit_{name}"))?;
        }
        // Attached first, then told about existing sockets: a connection accepted in between
        // is either in /proc already or seen by accept().
        let mut next_existing_id = EXISTING_ID_BASE;
        let found = find_sockets(
            protocol,
            &procs,
            |p| ports.contains(&p),
            track_clients == 1,
            &mut next_existing_id,
        );
        let existing = tell_kernel(&mut loaded, &found)?;
        let mut ports: Vec<u16> = ports.into_iter().collect();
        ports.sort_unstable();
        let ring = loaded.take_ring_buffer("EVENTS")?;
        Ok(Capture {
            loaded,
            ring,
            protocol,
            target,
            ports,
            listeners: found.listeners.len(),
            existing,
            next_existing_id,
            libssl,
            tls_enabled: opts.tls,
            last_prune: Instant::now(),
            record: Record::default(),
        })
    }

    /// The start-up line's beginning: "Tracing PostgreSQL connections of PID 4242".
    pub fn what(&self) -> String {
        format!(
            "Tracing {} connections of {}",
            self.protocol.name,
            self.target.describe()
        )
    }

    /// The start-up line's facts: ports, listening sockets, open connections.
    pub fn details(&self) -> Vec<String> {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let mut details = vec![
            format!("ports {}", ports.join("/")),
            format!("{} listening sockets", self.listeners),
            format!("{} open connections", self.existing.len()),
        ];
        if !self.libssl.is_empty() {
            let libs: Vec<&str> = self.libssl.iter().map(|l| l.path.as_str()).collect();
            details.push(format!("TLS through {}", libs.join(", ")));
        }
        details
    }

    /// What is probed for TLS plaintext, for [`tls::undecodable_reason`].
    pub fn tls_probed(&self) -> tls::Probed {
        tls::Probed {
            enabled: self.tls_enabled,
            libssl: self.libssl.iter().map(|l| l.path.clone()).collect(),
        }
    }

    /// When loading began.
    pub fn started(&self) -> Instant {
        self.loaded.started
    }

    /// Waits up to `timeout` for records (the kernel wakes us early only when the buffer
    /// fills past a quarter).
    pub fn wait(&self, timeout: Duration) {
        loader::wait_readable(&self.ring, timeout);
    }

    /// Hands every record waiting in the ring buffer to `f`.
    pub fn drain(
        &mut self,
        mut f: impl FnMut(&Record) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        while let Some(item) = self.ring.next() {
            if parse_item(&item, &mut self.record) {
                f(&self.record)?;
            }
        }
        Ok(())
    }

    /// Processes the target gained after start (a restarted server's): their listening
    /// sockets (bound before the kernel filter had them, so the bind hook missed them) and
    /// their connections open now, as EXISTING records for the decoder.
    pub fn learn(&mut self, pids: &[u32]) -> anyhow::Result<Vec<Record>> {
        let protocol = self.protocol;
        let procs = processes(protocol, pids);
        let ports = &self.ports;
        let found = find_sockets(
            protocol,
            &procs,
            |p| ports.contains(&p),
            false,
            &mut self.next_existing_id,
        );
        self.listeners += found.listeners.len();
        tell_kernel(&mut self.loaded, &found)
    }

    /// Once a second: the processes alive now and when that was sampled, for the decoder to
    /// end the connections of processes that exited (they have sent all they will send once
    /// the drain that follows is done).
    pub fn prune_due(&mut self) -> Option<(u64, HashSet<u32>)> {
        if self.last_prune.elapsed() < Duration::from_secs(1) {
            return None;
        }
        self.last_prune = Instant::now();
        Some((output::mono_ns(), procs::all_pids().into_iter().collect()))
    }

    /// Stops capturing descriptors (tgid, fd): encrypted connections, or those of exited
    /// processes. Already gone (closed, evicted) is fine.
    pub fn forget(&mut self, keys: &[(u32, u32)]) -> anyhow::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut socks: HashMap<_, SockKey, SockInfo> =
            HashMap::try_from(self.loaded.map_mut("SOCKS")?)?;
        for &(tgid, fd) in keys {
            let _ = socks.remove(&SockKey { tgid, fd });
        }
        Ok(())
    }

    /// The loaded object (its programs' statistics, its maps).
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }

    /// The kernel's counters (lost records and bytes, truncated reads and writes, ...).
    pub fn counters(&self) -> anyhow::Result<Counters> {
        self.loaded.counters()
    }
}

/// Where reads and writes are captured: the socket layer's tracepoints when the kernel has
/// them (they fire for socket I/O only, and a raw tracepoint calls the program without the
/// perf record a syscall tracepoint builds for every call of every process first), else the
/// exits of the read and write syscalls (`socket_layer` from [`socket_layer`]).
fn attach_data_hooks(loaded: &mut Loaded, socket_layer: bool) -> anyhow::Result<()> {
    if socket_layer {
        for (prog, event) in SOCKET_TRACEPOINTS {
            loaded.attach_raw_tracepoint(prog, event)?;
        }
        return Ok(());
    }
    for name in DATA_SYSCALLS {
        loaded
            .attach_tracepoint(
                &format!("exit_{name}"),
                "syscalls",
                &format!("sys_exit_{name}"),
            )
            .with_context(|| format!("attaching to the exit of {name}"))?;
    }
    Ok(())
}

/// The socket layer's tracepoints are used (not `--syscall-hooks`, and this kernel has them).
fn socket_layer(syscall_hooks: bool) -> bool {
    !syscall_hooks
        && SOCKET_TRACEPOINTS
            .iter()
            .all(|(_, event)| tracefs::format("sock", event).is_ok())
}

/// The programs [`attach_data_hooks`] will attach, for loading them ahead.
fn data_programs(socket_layer: bool) -> Vec<String> {
    if socket_layer {
        SOCKET_TRACEPOINTS
            .iter()
            .map(|(prog, _)| prog.to_string())
            .collect()
    } else {
        DATA_SYSCALLS
            .iter()
            .map(|name| format!("exit_{name}"))
            .collect()
    }
}

/// The kernel programs read syscall arguments from saved registers, whose layout they know
/// for these architectures only.
fn check_architecture(protocol: &Protocol) -> anyhow::Result<()> {
    match std::env::consts::ARCH {
        "x86_64" | "aarch64" => Ok(()),
        arch => anyhow::bail!(
            "{} does not know the syscall registers of {arch}",
            protocol.tool
        ),
    }
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
