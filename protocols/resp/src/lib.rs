//! Redis' RESP2 and RESP3, decoded from captured bytes: no aya, no I/O, so it can be fuzzed
//! and reused (live tracing, `--read`).
//!
//! - [`frame`]: one direction's byte stream, possibly joined midway and with bytes missing,
//!   into whole values (flattened), never inventing one; inline commands too.
//! - [`command`]: a request value into a command: name, key, arguments, secrets hidden, what
//!   it does to the connection.
//! - [`conn`]: a whole connection: each command paired with its reply, transactions,
//!   pub/sub, MONITOR, CLIENT REPLY, HELLO 3.
#![forbid(unsafe_code)]

pub mod command;
pub mod conn;
pub mod frame;

pub use command::{Arg, Command, Effect};
pub use conn::{Completed, Connection, Event, Outcome, Push, PushKind, Transaction, TxOutcome};
pub use frame::{Element, Frame, Framer, Side};
