//! net_per_query's hooks: PostgreSQL's query__execute__start USDT sites (by
//! `pgbpf_common::pg_probes`), the socket layer's tracepoints (or, before Linux 6.4, the
//! exits of recvfrom and sendto) and sched_process_exit; `struct sock_common`'s offsets from
//! the kernel's BTF for the clients' addresses. `--dev`: the net_dev_start_xmit,
//! net_dev_xmit and netif_receive_skb tracepoints, `struct sk_buff`'s and `struct
//! net_device`'s offsets.

use net_per_query_ebpf::{global, probe};
use pgbpf_common::{
    kernel_btf::KernelTypes,
    loader::Loaded,
    output::Output,
    pg_probes::{self, Probes},
    runtime::Attached,
    tracefs,
};

use crate::{Args, report::Reporter};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/net_per_query"));

/// Resolves the target, finds the probe sites, loads and attaches.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let wanted: Vec<(&str, &str)> = SOCK_MEMBERS
        .iter()
        .chain(if args.dev { &DEV_MEMBERS[..] } else { &[] })
        .map(|(_, s, m)| (*s, *m))
        .collect();
    let k = KernelTypes::running(&wanted)?;
    let mut globals = Vec::new();
    for (global, s, m) in SOCK_MEMBERS
        .iter()
        .chain(if args.dev { &DEV_MEMBERS[..] } else { &[] })
    {
        globals.push((*global, k.offset(s, m)?));
    }
    let probes = Probes {
        tool: "net_per_query",
        object: OBJECT,
        program: "query_probe",
        probes: &[("query__execute__start", probe::EXECUTE)],
        what: "network traffic per statement",
        stacks: 0,
        map_sizes: &[],
        globals: &globals,
        required_symbols: &[],
        attach_more: Some(if args.dev {
            attach_sockets_and_devices
        } else {
            attach_sockets
        }),
    };
    pg_probes::start(
        &probes,
        &args.target,
        args.postgres.as_deref(),
        args.out.verbose,
        Reporter::new(args),
    )
}

/// The kernel members whose offsets the programs read: (global, struct, member).
const SOCK_MEMBERS: [(&str, &str, &str); 3] = [
    (global::FAMILY_OFFSET, "sock_common", "skc_family"),
    (global::DADDR_OFFSET, "sock_common", "skc_daddr"),
    (global::V6_DADDR_OFFSET, "sock_common", "skc_v6_daddr"),
];
const DEV_MEMBERS: [(&str, &str, &str); 10] = [
    (global::SKB_LEN_OFFSET, "sk_buff", "len"),
    (global::SKB_DATA_OFFSET, "sk_buff", "data"),
    (global::SKB_HEAD_OFFSET, "sk_buff", "head"),
    (global::SKB_MAC_HEADER_OFFSET, "sk_buff", "mac_header"),
    (
        global::SKB_NETWORK_HEADER_OFFSET,
        "sk_buff",
        "network_header",
    ),
    (global::SKB_DEV_OFFSET, "sk_buff", "dev"),
    (global::DEV_IFINDEX_OFFSET, "net_device", "ifindex"),
    (global::DEV_NAME_OFFSET, "net_device", "name"),
    (global::DEV_NET_OFFSET, "net_device", "nd_net.net"),
    (global::NET_INUM_OFFSET, "net", "ns.inum"),
];

/// `--dev`: the sockets' hooks, and the devices' packets both ways.
fn attach_sockets_and_devices(loaded: &mut Loaded) -> anyhow::Result<String> {
    let sockets = attach_sockets(loaded)?;
    loaded.attach_raw_tracepoint("dev_receive", "netif_receive_skb")?;
    loaded.attach_raw_tracepoint("dev_start_xmit", "net_dev_start_xmit")?;
    loaded.attach_raw_tracepoint("dev_xmit", "net_dev_xmit")?;
    Ok(format!("{sockets}, network devices"))
}

/// The bytes each socket call moved: the socket layer's tracepoints (Linux 6.4 and later),
/// else the exits of recvfrom and sendto (what PostgreSQL's backends call); and thread exits.
fn attach_sockets(loaded: &mut Loaded) -> anyhow::Result<String> {
    loaded.attach_tracepoint("thread_exit", "sched", "sched_process_exit")?;
    let events = ["sock_recv_length", "sock_send_length"];
    if events.iter().all(|e| tracefs::format("sock", e).is_ok()) {
        loaded.attach_raw_tracepoint("sock_recv", events[0])?;
        loaded.attach_raw_tracepoint("sock_send", events[1])?;
        return Ok("socket tracepoints".into());
    }
    loaded.attach_tracepoint("exit_recvfrom", "syscalls", "sys_exit_recvfrom")?;
    loaded.attach_tracepoint("exit_sendto", "syscalls", "sys_exit_sendto")?;
    Ok("recvfrom/sendto exits (no client addresses)".into())
}
