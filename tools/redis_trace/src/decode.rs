//! Records → commands: a `pgbpf_resp::Connection` per captured connection (in the capture's
//! shared connection table), what it completes with who was talking, in wall-clock time.

use std::sync::Arc;

use pgbpf_capture::{
    Record,
    conns::{Conn, Connections, Stream, Tls},
};
use pgbpf_resp::{Completed, Connection, Event as Resp, Push, Transaction};

/// Who is talking: shared by every event of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Who {
    pub pid: u32,
    pub conn_id: u64,
    /// The client's address (server side) or the server's (client side).
    pub peer: Arc<str>,
    /// The connection is TLS, decoded from the TLS library's plaintext.
    pub tls: bool,
    /// The peer as lines show it: ` tls` after it for a TLS connection.
    pub label: Arc<str>,
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
    /// A TLS connection whose plaintext the TLS library did not give: not decodable.
    Encrypted {
        who: Who,
        reason: String,
    },
}

/// Totals over the whole trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub connections: u64,
    /// Of them TLS without plaintext: not decodable.
    pub encrypted: u64,
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
    /// (TLS, peer, label) as the connection's events report it.
    peer: Option<(bool, Arc<str>, Arc<str>)>,
    /// Reported as not decodable.
    reported: bool,
}

impl Stream for RespStream {
    type Event = Resp;

    fn open(from_start: bool) -> RespStream {
        RespStream {
            c: Connection::new(from_start),
            counted: Default::default(),
            peer: None,
            reported: false,
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

/// The decoder's fields `take` needs, borrowed apart from its connection table.
macro_rules! context {
    ($d:ident) => {
        Context {
            stats: &mut $d.stats,
            wall_offset_ns: $d.wall_offset_ns,
            tls_probed: $d.tls_probed.as_ref(),
            stop_capturing: &mut $d.stop_capturing,
        }
    };
}

/// Decodes every connection of a capture.
pub struct Decoder {
    conns: Connections<RespStream>,
    wall_offset_ns: i64,
    pub stats: DecodeStats,
    resp: Vec<Resp>,
    /// The libssl files the live capture probes (None reading a file).
    pub tls_probed: Option<pgbpf_capture::tls::Probed>,
    /// Connections not decodable, for the live capture to stop copying: (tgid, fd).
    pub stop_capturing: Vec<(u32, u32)>,
}

impl Decoder {
    /// `wall_offset_ns`: wall-clock minus monotonic time, to report record times as dates.
    pub fn new(wall_offset_ns: i64) -> Decoder {
        Decoder {
            conns: Connections::default(),
            wall_offset_ns,
            stats: DecodeStats::default(),
            resp: vec![],
            tls_probed: None,
            stop_capturing: vec![],
        }
    }

    /// Adds the totals of `other`, which decoded other connections of the same capture.
    pub fn absorb(&mut self, other: Decoder) {
        pgbpf_capture::add_counts!(
            self.stats,
            DecodeStats {
                connections,
                encrypted,
                commands,
                errors,
                transactions,
                pushes,
                unmatched,
                malformed,
                skipped_bytes,
                lost_bytes,
                truncated_bytes
            } = other.stats
        );
        self.conns.absorb(other.conns);
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
        let mut ctx = context!(self);
        self.conns
            .feed(r, &mut resp, |conn, resp| take(&mut ctx, conn, resp, out));
        self.resp = resp;
        self.totals();
    }

    /// Ends every connection still open.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        let mut resp = std::mem::take(&mut self.resp);
        let mut ctx = context!(self);
        let now = pgbpf_common::output::mono_ns();
        self.conns
            .finish(now, &mut resp, |conn, resp| take(&mut ctx, conn, resp, out));
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
        let mut ctx = context!(self);
        let gone = self
            .conns
            .close_exited(sampled_ns, alive, &mut resp, |conn, resp| {
                take(&mut ctx, conn, resp, out)
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

/// What `take` needs of the decoder.
struct Context<'a> {
    stats: &'a mut DecodeStats,
    wall_offset_ns: i64,
    tls_probed: Option<&'a pgbpf_capture::tls::Probed>,
    stop_capturing: &'a mut Vec<(u32, u32)>,
}

/// Moves what connection `conn` completed (`resp`) to `out` with who was talking; counts.
fn take(
    ctx: &mut Context<'_>,
    conn: &mut Conn<RespStream>,
    resp: &mut Vec<Resp>,
    out: &mut Vec<Event>,
) {
    let (stats, wall_offset_ns) = (&mut *ctx.stats, ctx.wall_offset_ns);
    let tls = conn.tls == Tls::Plaintext;
    let s = &mut conn.stream;
    let (_, peer, label) = match &s.peer {
        Some(p) if p.0 == tls => p.clone(),
        _ => {
            let label = if tls {
                format!("{} tls", conn.peer)
            } else {
                conn.peer.clone()
            };
            let p = (
                tls,
                Arc::from(conn.peer.as_str()),
                Arc::from(label.as_str()),
            );
            s.peer = Some(p.clone());
            p
        }
    };
    let who = Who {
        pid: conn.pid,
        conn_id: conn.id,
        peer,
        tls,
        label,
    };
    if conn.tls == Tls::Undecodable && !s.reported {
        s.reported = true;
        stats.encrypted += 1;
        ctx.stop_capturing.push((conn.pid, conn.fd));
        let reason = match ctx.tls_probed {
            Some(probed) => pgbpf_capture::tls::undecodable_reason(conn.pid, probed),
            None => "TLS, and the capture holds none of its plaintext".to_string(),
        };
        out.push(Event::Encrypted {
            who: who.clone(),
            reason,
        });
    }
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
