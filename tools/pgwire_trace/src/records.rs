//! pgwire_trace's NDJSON records (docs/schema/pgwire_trace.json): a `request` per statement
//! as it completes, `encrypted` once per connection whose payload cannot be seen (GSS, or
//! TLS without plaintext from the TLS library); with
//! `--summary` a `statement` row per normalized statement in each report and each interval's
//! `interval`; the run's `summary` last. Field names follow `pgbpf_common::records`.

use pgbpf_common::records::Scope;
use schemars::JsonSchema;
use serde::Serialize;

pub use pgbpf_capture::Lost;

/// Every line pgwire_trace prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// One request and its response.
    Request(Request<'a>),
    /// A connection's payload is not visible: GSS encryption, or TLS whose plaintext the
    /// TLS library did not give (not a dynamically linked OpenSSL, `--no-tls`).
    Encrypted(Encrypted<'a>),
    /// One normalized statement in a `--summary` report.
    Statement(StatementRow<'a>),
    /// The end of an interval report (`--summary` with INTERVAL).
    Interval(Totals),
    /// The end of the run (or of the capture file read).
    Summary(Totals),
}

#[derive(Serialize, JsonSchema)]
pub struct Request<'a> {
    /// When the request's first byte was seen.
    pub ts_ns: u64,
    /// The process that owns the connection (the backend on the server side).
    pub pid: u32,
    /// The connection, unique within the trace.
    pub conn_id: u64,
    /// The client's address (server side) or the server's (client side).
    pub peer: &'a str,
    /// The connection is TLS (decoded from the TLS library's plaintext).
    pub tls: bool,
    /// The user of the connection (from its start-up message).
    pub user: Option<&'a str>,
    /// Its database.
    pub database: Option<&'a str>,
    /// Its application_name.
    pub application: Option<&'a str>,
    /// `simple` (Query) or `extended` (Parse/Bind/Execute).
    pub protocol: &'a str,
    /// The prepared statement's name, for a named prepared statement.
    pub statement_name: Option<&'a str>,
    /// The statement: whole, or normalized with `--redact`.
    pub query: String,
    /// The statement or its parameters were longer than `--capture`.
    pub truncated: bool,
    /// The parameters as text (binary ones rendered by type); empty with `--redact`.
    pub params: Vec<String>,
    /// From the request's first byte to the response's completion.
    pub duration_ns: u64,
    /// `ok`, or the SQLSTATE of the error.
    pub status: &'a str,
    /// The error message (none with `--redact`).
    pub error: Option<&'a str>,
    /// The command tag: SELECT 1, INSERT 0 1, COPY 3, ...
    pub tag: Option<&'a str>,
    /// Rows, from the command tags.
    pub rows: Option<u64>,
    /// The transaction state after it: idle, transaction, failed, unknown.
    pub transaction: &'a str,
}

#[derive(Serialize, JsonSchema)]
pub struct Encrypted<'a> {
    pub ts_ns: u64,
    pub pid: u32,
    /// The connection, unique within the trace.
    pub conn_id: u64,
    /// The client's address (server side) or the server's (client side).
    pub peer: &'a str,
    /// Why its payload cannot be decoded.
    pub reason: &'a str,
}

#[derive(Serialize, JsonSchema)]
pub struct StatementRow<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// The statement normalized (constants as `$n`).
    pub query: &'a str,
    pub calls: u64,
    /// Of them, answered with an error.
    pub errors: u64,
    /// Rows, from the command tags.
    pub rows: u64,
    pub total_ns: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Totals {
    pub ts_ns: u64,
    /// The report's period: the interval, or the whole run in the summary.
    pub interval_ns: u64,
    /// Requests completed since the tool attached (or in the capture file).
    pub requests: u64,
    /// Of them, answered with an error.
    pub errors: u64,
    /// Connections seen.
    pub connections: u64,
    /// Of them, not decodable (GSS, or TLS without plaintext).
    pub encrypted: u64,
    /// Responses not paired with a request because bytes around them were lost.
    pub unmatched: u64,
    /// Bytes of reads and writes beyond `--capture`, not copied (framing is kept).
    pub truncated_bytes: u64,
    /// Messages that did not decode.
    pub malformed: u64,
    pub lost: Lost,
}
