//! net_per_query's NDJSON records (docs/schema/net_per_query.json): in each report a
//! `statement` row per statement, a `backend` row per backend type and a `client` row per
//! client; then the report's `interval` or the run's `summary`. Field names follow
//! `pgbpf_common::records`.

use pgbpf_common::records::Scope;
use schemars::JsonSchema;
use serde::Serialize;

/// Every line net_per_query prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// The traffic of one statement (normalized), every backend together; `[connection]`:
    /// the connections' own (startup, authentication, termination).
    Statement(Statement<'a>),
    /// The traffic of one backend type's processes.
    Backend(Backend<'a>),
    /// The traffic of one client (its address; `[local]` for a Unix socket).
    Client(Client<'a>),
    /// `--dev`: the packets one network device moved one way, and PostgreSQL's part.
    Device(Device<'a>),
    /// The end of an interval report.
    Interval(Totals),
    /// The end of the run.
    Summary(Totals),
}

/// Bytes moved by a set of statements.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Net {
    /// Executions (connections, for `[connection]`).
    pub calls: u64,
    /// Bytes received from the client: requests, COPY data.
    pub recv_bytes: u64,
    /// Bytes sent to the client: responses.
    pub sent_bytes: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Statement<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// The statement (normalized as pg_stat_statements does).
    pub query: &'a str,
    #[serde(flatten)]
    pub net: Net,
}

#[derive(Serialize, JsonSchema)]
pub struct Backend<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub backend_type: &'a str,
    #[serde(flatten)]
    pub net: Net,
}

#[derive(Serialize, JsonSchema)]
pub struct Client<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// The client's address (`[local]`: a Unix socket; `unknown` without socket
    /// tracepoints).
    pub client: &'a str,
    #[serde(flatten)]
    pub net: Net,
}

#[derive(Serialize, JsonSchema)]
pub struct Device<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// The device's name.
    pub device: &'a str,
    /// The inode number of the device's network namespace (`ls -Li /proc/PID/ns/net`).
    pub netns: u64,
    /// `received` or `sent`.
    pub direction: &'a str,
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// What a network device moved one way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Traffic {
    /// Packets as the kernel handled them (after GRO, before segmentation offload).
    pub packets: u64,
    /// Bytes as /proc/net/dev counts them (link-layer headers included).
    pub bytes: u64,
    /// TCP packets to or from a traced server's listening port.
    pub postgres_packets: u64,
    pub postgres_bytes: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Totals {
    pub ts_ns: u64,
    /// The report's period: the interval, or the whole run in the summary.
    pub interval_ns: u64,
    /// Every statement and connection together.
    #[serde(flatten)]
    pub net: Net,
    /// Statements and connections received from the kernel since the tool attached.
    pub events: u64,
    pub lost: Lost,
}

/// What the kernel side could not count, since the tool attached.
#[derive(Serialize, JsonSchema)]
pub struct Lost {
    /// A statement's traffic did not fit in the ring buffer.
    pub ringbuf_full: u64,
    /// Socket calls of threads past the thread table's size: not counted.
    pub threads_full: u64,
    /// Bytes moved on sockets other than the clients' (postgres_fdw, dblink): not counted.
    pub other_socket_bytes: u64,
    /// `--dev`: packets of devices past the device table's size: not counted.
    pub devices_full: u64,
}
