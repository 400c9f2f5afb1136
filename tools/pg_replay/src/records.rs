//! pg_replay's NDJSON records (docs/schema/pg_replay.json): a `progress` record at each
//! INTERVAL; at the end a `statement` row per normalized statement (original against
//! replay), a `session` row per session that lagged, failed or waited for a connection,
//! and the run's `summary` last. Field names follow `pgbpf_common::records`.

use schemars::JsonSchema;
use serde::Serialize;

/// Every line pg_replay prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// Where the replay is (at each INTERVAL).
    Progress(Progress),
    /// One normalized statement: the original's figures and the replay's.
    Statement(StatementRow<'a>),
    /// A session that fell behind, failed, left writes unsent or waited for a connection.
    Session(SessionRow<'a>),
    /// The end of the replay.
    Summary(Summary<'a>),
}

#[derive(Serialize, JsonSchema)]
pub struct Progress {
    pub ts_ns: u64,
    /// Wall time since the replay began.
    pub elapsed_ns: u64,
    /// How far into the input the replay has read (its own time line, from its first event).
    pub input_ns: u64,
    pub sessions_open: u64,
    /// Waiting for a connection (`--max-connections`).
    pub sessions_queued: u64,
    pub sessions_done: u64,
    pub sessions_failed: u64,
    /// Statements the replay completed so far, and of them errors.
    pub statements: u64,
    pub errors: u64,
    /// The furthest behind its schedule any write has gone out so far.
    pub max_lag_ns: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct StatementRow<'a> {
    /// The statement, normalized (constants as `$n`), as pgwire_trace's summary shows it.
    pub query: &'a str,
    pub truncated: bool,
    pub original: Side<'a>,
    pub replay: Side<'a>,
    /// Replay mean over original mean (null without both).
    pub ratio: Option<f64>,
    /// Replay total minus original total: what the new server added (negative: saved).
    pub added_ns: i64,
}

/// One side's figures of a statement.
#[derive(Serialize, JsonSchema)]
pub struct Side<'a> {
    pub calls: u64,
    /// Of them with a known duration (all in a capture and in the replay; in a log only
    /// with `log_min_duration_statement = 0`): the times below are of these.
    pub timed_calls: u64,
    /// Calls answered with an error.
    pub errors: u64,
    pub total_ns: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// The first error, as `SQLSTATE: message`.
    pub first_error: Option<&'a str>,
}

#[derive(Serialize, JsonSchema)]
pub struct SessionRow<'a> {
    /// The session's id in the input (a capture's connection id, a log's session id).
    pub session: u64,
    pub user: &'a str,
    pub database: &'a str,
    pub application_name: &'a str,
    /// Writes sent, and how late they went out against their schedule.
    pub writes: u64,
    pub lag_p50_ns: u64,
    pub lag_p99_ns: u64,
    pub lag_max_ns: u64,
    /// Writes not sent (the session failed, or the replay was stopped).
    pub unsent: u64,
    /// It waited for a free connection (`--max-connections`).
    pub queued: bool,
    /// Why it could not connect or ended early.
    pub error: Option<&'a str>,
}

#[derive(Serialize, JsonSchema)]
pub struct Summary<'a> {
    pub ts_ns: u64,
    /// `--check`: the input was only read, nothing replayed (the replay figures are 0).
    pub check: bool,
    /// Wall time of the replay.
    pub elapsed_ns: u64,
    /// The input's time line replayed (first to last event).
    pub input_ns: u64,
    /// The `--speed` asked (null: unbounded).
    pub speed: Option<f64>,
    pub sessions: u64,
    pub sessions_failed: u64,
    pub sessions_queued: u64,
    /// Sessions the filters left out.
    pub sessions_filtered: u64,
    /// Statements completed by the original, and by the replay.
    pub statements_original: u64,
    pub statements_replay: u64,
    pub errors_original: u64,
    pub errors_replay: u64,
    /// Errors of statements that had none (or fewer) in the original.
    pub new_errors: u64,
    /// Lag behind the schedule over every write.
    pub lag_p50_ns: u64,
    pub lag_p99_ns: u64,
    pub lag_max_ns: u64,
    pub unsent: u64,
    pub input: InputCounts<'a>,
}

/// What the input could not give to the replay.
#[derive(Serialize, JsonSchema)]
pub struct InputCounts<'a> {
    /// capture, stderr, csvlog or jsonlog.
    pub format: &'a str,
    pub bytes: u64,
    /// Sessions that switched to TLS (not visible in a socket capture).
    pub encrypted_sessions: u64,
    /// Sessions cut short where a message was not captured whole.
    pub incomplete_sessions: u64,
    /// Binds, Executes and Describes of statements prepared before the input began.
    pub skipped_unprepared: u64,
    /// `COPY … FROM STDIN` statements of a log (their data is not in it), skipped.
    pub skipped_copy: u64,
    /// Lines (or records) that did not parse.
    pub bad_lines: u64,
}
