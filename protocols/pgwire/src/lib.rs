//! PostgreSQL wire protocol 3.0, decoded from captured bytes: no aya, no I/O, so it can be
//! fuzzed and reused (live tracing, offline `--read`, capture and replay).
//!
//! - [`frame`]: turns one direction of a connection's byte stream, possibly captured from the
//!   middle and with bytes missing, into whole messages, never inventing one.
//! - [`message`]: those messages, typed, in both directions.
//! - [`conn`]: a whole connection: negotiation, prepared statements, request/response
//!   stitching with pipelining.
#![forbid(unsafe_code)]

pub mod conn;
pub mod frame;
pub mod message;

pub use frame::{Direction, Frame, Framer};
pub use message::{Backend, DecodeError, Frontend};
