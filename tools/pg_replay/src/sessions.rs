//! A capture file → the sessions to replay: per connection (as the server saw it) the
//! frontend messages sent after authentication, in order, each with the time it was sent,
//! and the statements the original server completed with their durations and errors (the
//! baseline of the regression report).
//!
//! The start-up message, SSL/GSS requests and every password message are left out: the
//! replay authenticates with its own credentials. A message whose bytes were not all
//! captured (longer than `--capture`, or lost) cannot be replayed: it is counted, and the
//! session is marked incomplete from there.

use std::{collections::BTreeMap, fs::File, io::BufReader, path::Path};

use anyhow::Context as _;
use pgbpf_capture::{
    Kind, Reader, Record,
    conns::{Connections, Stream},
};
use pgbpf_pgwire::{Direction, Framer, Frames, Frontend, conn::Completed, conn::Connection};

/// One frontend message, as it is sent again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// When the original client sent it (the capture's monotonic clock).
    pub ts_ns: u64,
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Message {
    /// The message on the wire: tag, length (counting itself), body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.tag);
        out.extend(((self.body.len() + 4) as u32).to_be_bytes());
        out.extend(&self.body);
    }
}

/// One session of the capture.
#[derive(Debug, Default)]
pub struct Session {
    pub conn_id: u64,
    /// The start-up parameters (user, database, application_name, ...); empty when the
    /// connection was joined midway.
    pub startup: Vec<(String, String)>,
    /// The capture saw the connection from its first byte.
    pub from_start: bool,
    pub messages: Vec<Message>,
    /// What the original server completed: statement, duration, error.
    pub original: Vec<Completed>,
    /// Messages that could not be kept whole (cut at the capture limit, or bytes lost); the
    /// session is not replayed past the first.
    pub incomplete: u64,
    /// Times of its first and last record.
    pub first_ns: u64,
    pub last_ns: u64,
    /// The connection switched to TLS: nothing of it can be replayed (until TLS capture).
    pub encrypted: bool,
}

/// The decoder of one captured connection: the pgwire connection (originals, and where the
/// authentication ends) and a framer of the client's bytes of its own for the raw messages.
struct SessionStream {
    conn: Connection,
    client: Framer,
    frames: Frames,
    session: Session,
    /// An SSLRequest or GSSENCRequest was sent: the server's next byte answers it.
    awaiting_encryption_answer: bool,
    /// Authentication done (or the session was joined after it): messages are kept.
    authenticated: bool,
    /// A message went missing: nothing after it is kept.
    broken: bool,
}

impl Stream for SessionStream {
    type Event = Completed;

    fn open(from_start: bool) -> SessionStream {
        SessionStream {
            conn: Connection::new(from_start),
            client: Framer::new(Direction::Frontend, from_start),
            frames: Frames::default(),
            session: Session {
                from_start,
                ..Session::default()
            },
            awaiting_encryption_answer: false,
            authenticated: !from_start,
            broken: false,
        }
    }

    fn client_bytes(&mut self, ts_ns: u64, data: &[u8], missing: u64, _: &mut Vec<Completed>) {
        self.touch(ts_ns);
        self.conn.client_bytes(ts_ns, data, missing);
        let mut frames = std::mem::take(&mut self.frames);
        frames.clear();
        self.client.feed(data, &mut frames);
        if missing > 0 {
            self.client.feed_gap(missing, &mut frames);
        }
        for f in frames.iter() {
            self.message(ts_ns, f.tag, f.body, f.truncated);
        }
        if !self.client.synced() && !self.broken {
            self.session.incomplete += 1;
            self.broken = true;
        }
        self.frames = frames;
    }

    fn server_bytes(&mut self, ts_ns: u64, data: &[u8], missing: u64, out: &mut Vec<Completed>) {
        self.touch(ts_ns);
        if self.awaiting_encryption_answer {
            self.awaiting_encryption_answer = false;
            match data.first() {
                Some(b'S' | b'G') => self.session.encrypted = true,
                Some(_) => self.client.expect_startup(),
                None => {}
            }
        }
        let before = out.len();
        self.conn.server_bytes_into(ts_ns, data, missing, out);
        // AuthenticationOk or ReadyForQuery: the credentials are behind.
        if !self.authenticated && contains_auth_ok_or_ready(data) {
            self.authenticated = true;
        }
        let done: Vec<Completed> = out.drain(before..).collect();
        self.session.original.extend(done);
    }

    fn close(&mut self, _ts_ns: u64, _out: &mut Vec<Completed>) {
        self.session.original.extend(self.conn.close());
    }
}

impl SessionStream {
    fn touch(&mut self, ts_ns: u64) {
        if self.session.first_ns == 0 {
            self.session.first_ns = ts_ns;
        }
        self.session.last_ns = self.session.last_ns.max(ts_ns);
    }

    fn message(&mut self, ts_ns: u64, tag: u8, body: &[u8], truncated: bool) {
        if tag == 0 {
            // Untyped: start-up, SSL/GSS request, cancel.
            let frame = pgbpf_pgwire::Frame {
                tag,
                body,
                len: body.len() as u32,
                truncated,
            };
            match Frontend::decode(&frame) {
                Ok(Frontend::Startup { params, .. }) => self.session.startup = params,
                Ok(Frontend::SslRequest | Frontend::GssEncRequest) => {
                    self.awaiting_encryption_answer = true
                }
                _ => {}
            }
            return;
        }
        if tag == b'p' || !self.authenticated || self.broken || self.session.encrypted {
            return;
        }
        if truncated {
            self.session.incomplete += 1;
            self.broken = true;
            return;
        }
        self.session.messages.push(Message {
            ts_ns,
            tag,
            body: body.to_vec(),
        });
    }
}

/// Whether server bytes hold AuthenticationOk (`R` with code 0) or ReadyForQuery (`Z`) at a
/// message boundary, walking the messages from the start of the write.
fn contains_auth_ok_or_ready(data: &[u8]) -> bool {
    let mut i = 0;
    while i + 5 <= data.len() {
        let len = u32::from_be_bytes([data[i + 1], data[i + 2], data[i + 3], data[i + 4]]) as usize;
        let body = data
            .get(i + 5..(i + 1 + len).min(data.len()))
            .unwrap_or(&[]);
        if (data[i] == b'R' && body.starts_with(&[0, 0, 0, 0]) && len == 8) || data[i] == b'Z' {
            return true;
        }
        if len < 4 {
            return false;
        }
        i += 1 + len;
    }
    false
}

/// Reads every session of a PostgreSQL capture file, in the order they began.
pub fn read(path: &Path) -> anyhow::Result<Vec<Session>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = Reader::new(
        BufReader::with_capacity(1 << 20, file),
        &pgbpf_capture::POSTGRES,
    )
    .with_context(|| format!("reading {}", path.display()))?;
    let mut conns: Connections<SessionStream> = Connections::default();
    let mut ended: BTreeMap<u64, Session> = BTreeMap::new();
    let mut events = vec![];
    let mut r = Record::default();
    // The table hands over each connection it ends (a CLOSE, an OPEN reusing its id, the
    // end of the file); after a DATA record it hands over the connection still open.
    let mut keep = |c: &mut pgbpf_capture::conns::Conn<SessionStream>| {
        let mut s = std::mem::take(&mut c.stream.session);
        s.conn_id = c.id;
        ended.insert(c.id, s);
    };
    while reader
        .next_into(&mut r)
        .with_context(|| format!("{}: record {}", path.display(), reader.count + 1))?
    {
        let ends = matches!(r.kind, Kind::Close | Kind::Open | Kind::Existing);
        conns.feed(&r, &mut events, |c, _| {
            if ends {
                keep(c)
            }
        });
        events.clear();
    }
    conns.finish(u64::MAX, &mut events, |c, _| keep(c));
    let mut sessions: Vec<Session> = ended.into_values().collect();
    sessions.sort_by_key(|s| s.first_ns);
    Ok(sessions)
}
