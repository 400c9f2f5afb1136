//! redis_trace's NDJSON records (docs/schema/redis_trace.json): a `command` per command as it
//! ends, a `transaction` per MULTI…EXEC/DISCARD; with `--summary` a `command_stats` row per
//! command name (and with `--keys` a `key` row per top key and key prefix) in each report and
//! each interval's `interval`; the run's `summary` last. Field names follow
//! `pgbpf_common::records`.

use pgbpf_common::records::Scope;
use schemars::JsonSchema;
use serde::Serialize;

pub use pgbpf_capture::Lost;

/// Every line redis_trace prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// One command and how it ended.
    Command(Command<'a>),
    /// MULTI … EXEC or DISCARD: the commands in it are `command` records with its number.
    Transaction(Transaction<'a>),
    /// A TLS connection whose plaintext the TLS library did not give: not decodable.
    Encrypted(Encrypted<'a>),
    /// One command name's figures in a `--summary` report.
    CommandStats(CommandRow<'a>),
    /// A top key or key prefix (`--keys`).
    Key(KeyRow<'a>),
    /// The end of an interval report (`--summary` with INTERVAL).
    Interval(Totals),
    /// The end of the run (or of the capture file read).
    Summary(Totals),
}

#[derive(Serialize, JsonSchema)]
pub struct Command<'a> {
    /// When the command's first byte was seen.
    pub ts_ns: u64,
    /// The process that owns the connection (redis-server on the server side).
    pub pid: u32,
    /// The connection, unique within the trace.
    pub conn_id: u64,
    /// The client's address (server side) or the server's (client side).
    pub peer: &'a str,
    /// The connection is TLS (decoded from the TLS library's plaintext).
    pub tls: bool,
    /// The command, upper case, with the subcommand of container commands (`CONFIG GET`).
    pub command: &'a str,
    /// Its key, when it has one.
    pub key: Option<String>,
    /// The other arguments as text (bytes that are not UTF-8 escaped as \xNN); passwords
    /// are `(redacted)`; empty with `--redact`.
    pub args: Vec<String>,
    /// An argument was longer than what was captured or kept.
    pub truncated: bool,
    /// From the command's first byte to the reply's last; null when no reply came (CLIENT
    /// REPLY OFF), or inside EXEC (the transaction is timed as a whole).
    pub duration_ns: Option<u64>,
    /// `ok`, the error's code (`ERR`, `WRONGTYPE`, `OOM`, ...), `timeout` (a blocking
    /// command answered null), `noreply`, `aborted`, `discarded` or `unanswered`.
    pub status: &'a str,
    /// The error message (none with `--redact`).
    pub error: Option<&'a str>,
    /// The reply's type: `simple`, `error`, `integer`, `bulk`, `array`, `null`, `map`,
    /// `set`, `double`, `boolean`, `big_number`, `verbatim`, `bulk_error`.
    pub reply_type: Option<&'a str>,
    /// The reply's size on the wire.
    pub reply_bytes: Option<u64>,
    /// The command's size on the wire.
    pub request_bytes: u64,
    /// The transaction it was queued in (numbered per connection).
    pub transaction: Option<u64>,
    /// A command that may block (BLPOP, XREAD BLOCK, WAIT, ...): its duration is a wait.
    pub blocking: bool,
    /// Sent inline (`PING\r\n` as telnet and nc send it).
    pub inline: bool,
}

#[derive(Serialize, JsonSchema)]
pub struct Transaction<'a> {
    /// When MULTI's first byte was seen.
    pub ts_ns: u64,
    pub pid: u32,
    pub conn_id: u64,
    pub peer: &'a str,
    pub tls: bool,
    /// Its number on the connection.
    pub transaction: u64,
    /// From MULTI to the reply of EXEC (or DISCARD).
    pub duration_ns: u64,
    /// Commands queued.
    pub commands: u32,
    /// `executed`, `aborted` (EXEC refused: EXECABORT), `watch_failed` (a WATCHed key
    /// changed: nothing ran) or `discarded`.
    pub status: &'a str,
    /// The error code of an aborted EXEC.
    pub error: Option<&'a str>,
}

#[derive(Serialize, JsonSchema)]
pub struct Encrypted<'a> {
    pub ts_ns: u64,
    pub pid: u32,
    pub conn_id: u64,
    pub peer: &'a str,
    /// Why its payload cannot be decoded.
    pub reason: &'a str,
}

#[derive(Serialize, JsonSchema)]
pub struct CommandRow<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub command: &'a str,
    pub calls: u64,
    /// Calls answered with an error.
    pub errors: u64,
    /// Of the calls with a duration (not inside EXEC, not without a reply).
    pub total_ns: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// Log2 histogram of the durations, microseconds: slot i counts [2^i, 2^(i+1)) us.
    pub hist_log2_us: Vec<u64>,
    /// Bytes of the commands.
    pub request_bytes: u64,
    /// Bytes of their replies.
    pub reply_bytes: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct KeyRow<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// The key, or a key prefix (up to and with the first ':').
    pub key: &'a str,
    /// `key` is a prefix.
    pub prefix: bool,
    /// Commands on the key (or on keys with the prefix).
    pub calls: u64,
    pub request_bytes: u64,
    pub reply_bytes: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Totals {
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// Commands decoded (since the tool attached, also in `interval` records).
    pub commands: u64,
    /// Of them answered with an error.
    pub errors: u64,
    pub transactions: u64,
    /// Values the server sent unasked: pub/sub messages, invalidations, MONITOR lines.
    pub pushes: u64,
    pub connections: u64,
    /// Of them TLS without plaintext from the TLS library: not decodable.
    pub encrypted: u64,
    /// Replies that could not be paired with their command, and commands dropped
    /// unanswered, after bytes went missing.
    pub unmatched: u64,
    /// Values that did not frame.
    pub malformed: u64,
    /// Bytes skipped to find value boundaries again.
    pub skipped_bytes: u64,
    /// Bytes beyond the per-syscall capture limit.
    pub truncated_bytes: u64,
    pub lost: Lost,
}
