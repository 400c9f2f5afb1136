//! net_per_query's hooks: PostgreSQL's query__execute__start USDT sites (by
//! `pgbpf_common::pg_probes`), the socket layer's tracepoints (or, before Linux 6.4, the
//! exits of recvfrom and sendto) and sched_process_exit; `struct sock_common`'s offsets from
//! the kernel's BTF for the clients' addresses.

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
    let k = KernelTypes::running(&[
        ("sock_common", "skc_family"),
        ("sock_common", "skc_daddr"),
        ("sock_common", "skc_v6_daddr"),
    ])?;
    let globals = [
        (
            global::FAMILY_OFFSET,
            k.offset("sock_common", "skc_family")?,
        ),
        (global::DADDR_OFFSET, k.offset("sock_common", "skc_daddr")?),
        (
            global::V6_DADDR_OFFSET,
            k.offset("sock_common", "skc_v6_daddr")?,
        ),
    ];
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
        attach_more: Some(attach_sockets),
    };
    pg_probes::start(
        &probes,
        &args.target,
        args.postgres.as_deref(),
        args.out.verbose,
        Reporter::new(args),
    )
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
