//! pg_replay: replays the PostgreSQL sessions of a capture file (`pgwire_trace --record`)
//! into another server, each on its own connection and schedule, and reports per statement
//! how the replay's latencies and errors compare with the original's (issue 17).
//!
//! Work in progress: [`sessions`] turns a capture file into the sessions to replay.

pub mod sessions;
