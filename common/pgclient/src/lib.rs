//! A small PostgreSQL client for the tools that talk to a server themselves: pg_replay's
//! sessions, and the tools that name what they saw (`locks --dsn`, `working_set --dsn`: relation numbers to names).
//!
//! - [`conninfo`]: libpq connection strings and URIs, environment defaults, `.pgpass`.
//! - [`client`]: connect and log in (trust, cleartext, md5, SCRAM-SHA-256).
//! - [`query`]: a simple query's rows as text, and a blocking connection for it.
//! - [`names`]: relation names for the numbers probes carry.

pub mod client;
pub mod conninfo;
pub mod names;
pub mod query;
