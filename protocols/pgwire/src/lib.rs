//! PostgreSQL wire protocol 3.0, decoded from captured bytes: no aya, no I/O, so it can be
//! fuzzed and reused (live tracing, offline `--read`, capture and replay).
//!
//! - [`frame`]: turns one direction of a connection's byte stream, possibly captured from the
//!   middle and with bytes missing, into whole messages, never inventing one.
//! - [`message`]: those messages, typed, in both directions.
//! - [`conn`]: a whole connection: negotiation, prepared statements, request/response
//!   stitching with pipelining.
//! - [`value`]: Bind parameters rendered for people (text, binary by type OID, hex).
#![forbid(unsafe_code)]

pub mod conn;
pub mod frame;
pub mod message;
pub mod value;

pub use frame::{Direction, Each, Frame, Framer, Frames, Sink};
pub use message::{Backend, DecodeError, Frontend};

/// Builders shared by the unit tests.
#[cfg(test)]
mod test_support {
    /// A typed message: tag, length (counting itself), body.
    pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }
}
