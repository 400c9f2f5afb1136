//! Records → commands: a `pgbpf_resp::Connection` per captured connection (in the capture's
//! shared connection table), what it completes with who was talking, in wall-clock time.

use std::sync::Arc;

use pgbpf_capture::{
    Record,
    conns::{Conn, Connections, Stream},
};
use pgbpf_resp::{Completed, Connection, Event as Resp, Push, Transaction};

/// Who is talking: shared by every event of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Who {
    pub pid: u32,
    pub conn_id: u64,
    /// The client's address (server side) or the server's (client side).
    pub peer: Arc<str>,
}

/// What the decoder tells the reporter; times are wall-clock ns.
#[derive(Clone, Debug)]
pub enum Event {
    Command {
        who: Who,
        start_unix_ns: u64,
        end_unix_ns: u64,
        done: Completed,
    },
    Transaction {
        who: Who,
        start_unix_ns: u64,
        end_unix_ns: u64,
        tx: Transaction,
    },
    Push {
        who: Who,
        push: Push,
    },
}

/// Totals over the whole trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub connections: u64,
    pub commands: u64,
    pub errors: u64,
    pub transactions: u64,
    pub pushes: u64,
    /// Replies that could not be paired, and commands dropped unanswered after a loss.
    pub unmatched: u64,
    /// Values that did not frame.
    pub malformed: u64,
    /// Bytes skipped to find value boundaries again.
    pub skipped_bytes: u64,
    /// Bytes lost in the kernel (ring buffer full), as reported with later records.
    pub lost_bytes: u64,
    /// Bytes beyond the per-syscall capture limit.
    pub truncated_bytes: u64,
}

/// The RESP decoder of one connection and what the totals have taken from it.
pub struct RespStream {
    c: Connection,
    counted: pgbpf_resp::conn::Counts,
    peer: Option<Arc<str>>,
}

impl Stream for RespStream {
    type Event = Resp;

    fn open(from_start: bool) -> RespStream {
        RespStream {
            c: Connection::new(from_start),
            counted: Default::default(),
            peer: None,
        }
    }

    fn client_bytes(&mut self, ts_ns: u64, data: &[u8], missing: u64, out: &mut Vec<Resp>) {
        self.c.client_bytes(ts_ns, data, missing, out);
    }

    fn server_bytes(&mut self, ts_ns: u64, data: &[u8], missing: u64, out: &mut Vec<Resp>) {
        self.c.server_bytes(ts_ns, data, missing, out);
    }

    fn close(&mut self, ts_ns: u64, out: &mut Vec<Resp>) {
        self.c.close(ts_ns, out);
    }

    fn client_secrets(&self) -> &[(usize, usize)] {
        self.c.secrets()
    }
}

/// Decodes every connection of a capture.
pub struct Decoder {
    conns: Connections<RespStream>,
    wall_offset_ns: i64,
    pub stats: DecodeStats,
    resp: Vec<Resp>,
}

impl Decoder {
    /// `wall_offset_ns`: wall-clock minus monotonic time, to report record times as dates.
    pub fn new(wall_offset_ns: i64) -> Decoder {
        Decoder {
            conns: Connections::default(),
            wall_offset_ns,
            stats: DecodeStats::default(),
            resp: vec![],
        }
    }

    pub fn kernel_counters(&self) -> Option<&[u64]> {
        self.conns.kernel_counters.as_deref()
    }

    /// Secret ranges of the payload of the record fed last.
    pub fn secrets(&self) -> &[(usize, usize)] {
        self.conns.secrets()
    }

    /// Feeds one record; appends what it completed to `out`.
    pub fn feed_into(&mut self, r: &Record, out: &mut Vec<Event>) {
        let mut resp = std::mem::take(&mut self.resp);
        let (stats, wall) = (&mut self.stats, self.wall_offset_ns);
        self.conns.feed(r, &mut resp, |conn, resp| {
            take(stats, wall, conn, resp, out)
        });
        self.resp = resp;
        self.totals();
    }

    /// Ends every connection still open.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        let mut resp = std::mem::take(&mut self.resp);
        let (stats, wall) = (&mut self.stats, self.wall_offset_ns);
        let now = pgbpf_common::output::mono_ns();
        self.conns.finish(now, &mut resp, |conn, resp| {
            take(stats, wall, conn, resp, out)
        });
        self.resp = resp;
        self.totals();
    }

    /// Ends the connections of processes gone at `sampled_ns`; returns their (tgid, fd).
    pub fn close_exited(
        &mut self,
        sampled_ns: u64,
        alive: &dyn Fn(u32) -> bool,
        out: &mut Vec<Event>,
    ) -> Vec<(u32, u32)> {
        let mut resp = std::mem::take(&mut self.resp);
        let (stats, wall) = (&mut self.stats, self.wall_offset_ns);
        let gone = self
            .conns
            .close_exited(sampled_ns, alive, &mut resp, |conn, resp| {
                take(stats, wall, conn, resp, out)
            });
        self.resp = resp;
        self.totals();
        gone
    }

    fn totals(&mut self) {
        let t = self.conns.totals;
        self.stats.connections = t.connections;
        self.stats.lost_bytes = t.lost_bytes;
        self.stats.truncated_bytes = t.truncated_bytes;
    }
}

/// Moves what connection `conn` completed (`resp`) to `out` with who was talking; counts.
fn take(
    stats: &mut DecodeStats,
    wall_offset_ns: i64,
    conn: &mut Conn<RespStream>,
    resp: &mut Vec<Resp>,
    out: &mut Vec<Event>,
) {
    let s = &mut conn.stream;
    let now = s.c.counts();
    stats.unmatched += now.unmatched - s.counted.unmatched;
    stats.malformed += now.malformed - s.counted.malformed;
    stats.skipped_bytes = stats
        .skipped_bytes
        .saturating_add(now.skipped - s.counted.skipped);
    s.counted = now;
    if resp.is_empty() {
        return;
    }
    let peer = s
        .peer
        .get_or_insert_with(|| Arc::from(conn.peer.as_str()))
        .clone();
    let who = Who {
        pid: conn.pid,
        conn_id: conn.id,
        peer,
    };
    let wall = |ns: u64| pgbpf_common::output::wall_of(wall_offset_ns, ns);
    for e in resp.drain(..) {
        out.push(match e {
            Resp::Command(done) => {
                stats.commands += 1;
                stats.errors += u64::from(done.error().is_some());
                Event::Command {
                    who: who.clone(),
                    start_unix_ns: wall(done.command.started_ns),
                    end_unix_ns: wall(done.finished_ns),
                    done,
                }
            }
            Resp::Transaction(tx) => {
                stats.transactions += 1;
                Event::Transaction {
                    who: who.clone(),
                    start_unix_ns: wall(tx.started_ns),
                    end_unix_ns: wall(tx.finished_ns),
                    tx,
                }
            }
            Resp::Push(push) => {
                stats.pushes += 1;
                Event::Push {
                    who: who.clone(),
                    push,
                }
            }
        });
    }
}
