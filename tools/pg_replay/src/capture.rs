//! A pgwire_trace capture file → replay events, read as the replay goes: per connection (as
//! the server saw it, or the client) the frontend messages sent after authentication, one
//! `Send` per captured write, with the time it was sent and how many answers the client had
//! by then; the statements the original server completed, with their durations and errors.
//!
//! The start-up message, SSL/GSS requests and every password message are left out: the
//! replay logs in with its own credentials. A message whose bytes were not all captured
//! (longer than `--capture`, or lost) cannot be replayed: the session is counted as
//! incomplete and nothing after it is sent. A statement prepared before `--start` is
//! prepared again just before its first use in the window (its Parse was captured);
//! statements prepared before the capture began are unknown to the replay's server: their
//! Binds, Executes and Describes are skipped and counted.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader},
    path::Path,
};

use anyhow::Context as _;
use foldhash::{HashMap, HashSet};
use pgbpf_capture::{
    Kind, Reader, Record,
    conns::{Conn, Connections, Stream},
};
use pgbpf_pgwire::{Direction, Framer, Frames, Frontend, conn::Completed, conn::Connection};

use crate::source::{Event, InputStats, Place, Source, Window, answers_asked};

/// Named statements' Parse messages kept per session, and their bytes at most.
const PARSES_KEPT: usize = 1024;
const PARSE_BYTES_KEPT: usize = 1 << 20;

/// What becomes of a message in the replay.
enum Use {
    Send,
    /// Uses a statement the replay's server does not know: left out.
    Skip,
    /// Uses a statement prepared before the window: its Parse goes first.
    PrepareFirst(Vec<u8>),
}

/// A frontend message as it goes on the wire.
fn encode(tag: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    out.extend(((body.len() + 4) as u32).to_be_bytes());
    out.extend(body);
}

/// The decoder of one captured connection.
struct SessionStream {
    /// The original's statements and ReadyForQuery count.
    conn: Connection,
    /// The client's bytes framed again, for the raw messages.
    client: Framer,
    frames: Frames,
    from_start: bool,
    startup: Vec<(String, String)>,
    /// An SSLRequest or GSSENCRequest was sent: the server's next byte answers it.
    awaiting_encryption_answer: bool,
    requested_gss: bool,
    /// Nothing of the session is visible: GSS, or TLS without the library's plaintext.
    encrypted: bool,
    /// The server answered the SSLRequest with `S`: the TLS plaintext (a TLS capture)
    /// continues the session from its start-up message.
    tls_negotiated: bool,
    /// A message went missing: nothing after it is kept.
    broken: bool,
    /// The messages of the client bytes fed last that are to be replayed, encoded.
    kept: Vec<u8>,
    /// Messages skipped because they use a statement prepared before the input began.
    skipped: u64,
    /// Prepared statements and portals the replay's server will know.
    statements: HashSet<Vec<u8>>,
    portals: HashSet<Vec<u8>>,
    /// The Parse message of every named statement seen, so that one prepared before the
    /// window is prepared again at its first use in it (bounded: [`PARSES_KEPT`]).
    parses: HashMap<Vec<u8>, Vec<u8>>,
    parse_bytes: usize,
    /// Monotonic time of the connection's first record.
    opened_ns: u64,
    /// The Begin event was given, with the original's ReadyForQuery count then.
    begun: Option<u64>,
}

impl Stream for SessionStream {
    type Event = Completed;

    fn open(from_start: bool) -> SessionStream {
        SessionStream {
            conn: Connection::new(from_start),
            client: Framer::new(Direction::Frontend, from_start),
            frames: Frames::default(),
            from_start,
            startup: vec![],
            awaiting_encryption_answer: false,
            requested_gss: false,
            encrypted: false,
            tls_negotiated: false,
            broken: false,
            kept: vec![],
            skipped: 0,
            statements: HashSet::default(),
            portals: HashSet::default(),
            parses: HashMap::default(),
            parse_bytes: 0,
            opened_ns: 0,
            begun: None,
        }
    }

    fn client_bytes(&mut self, ts_ns: u64, data: &[u8], missing: u64, _: &mut Vec<Completed>) {
        self.conn.client_bytes(ts_ns, data, missing);
        self.kept.clear();
        let mut frames = std::mem::take(&mut self.frames);
        frames.clear();
        self.client.feed(data, &mut frames);
        if missing > 0 {
            self.client.feed_gap(missing, &mut frames);
        }
        for f in frames.iter() {
            self.message(f.tag, f.body, f.truncated);
        }
        // Joined midway, the framer finds its step; after that, losing it loses messages.
        if !self.client.synced() && (self.from_start || self.logged_in()) {
            self.broken = true;
        }
        self.frames = frames;
    }

    fn server_bytes(&mut self, ts_ns: u64, data: &[u8], missing: u64, out: &mut Vec<Completed>) {
        if self.awaiting_encryption_answer {
            self.awaiting_encryption_answer = false;
            match data.first() {
                Some(b'S' | b'G') => {
                    self.encrypted = true;
                    self.tls_negotiated = data.first() == Some(&b'S') && !self.requested_gss;
                }
                Some(_) => self.client.expect_startup(),
                None => {}
            }
        }
        self.conn.server_bytes_into(ts_ns, data, missing, out);
    }

    fn close(&mut self, _ts_ns: u64, out: &mut Vec<Completed>) {
        out.extend(self.conn.close());
    }

    fn negotiated_encryption(&self) -> bool {
        self.tls_negotiated && self.encrypted
    }

    fn tls_begins(&mut self) {
        self.conn.tls_begins();
        if self.encrypted && self.tls_negotiated {
            self.encrypted = false;
            self.client.expect_startup();
        }
    }

    fn tls_undecodable(&mut self) {
        self.encrypted = true;
    }
}

impl SessionStream {
    /// The start-up is behind (its first ReadyForQuery came), or the capture joined the
    /// connection after it.
    fn logged_in(&self) -> bool {
        !self.from_start || self.conn.ready > 0
    }

    fn message(&mut self, tag: u8, body: &[u8], truncated: bool) {
        if tag == 0 {
            // Untyped: start-up, SSL/GSS request, cancel.
            let frame = pgbpf_pgwire::Frame {
                tag,
                body,
                len: body.len() as u32,
                truncated,
            };
            match Frontend::decode(&frame) {
                Ok(Frontend::Startup { params, .. }) => self.startup = params,
                Ok(Frontend::SslRequest) => {
                    self.awaiting_encryption_answer = true;
                    self.requested_gss = false;
                }
                Ok(Frontend::GssEncRequest) => {
                    self.awaiting_encryption_answer = true;
                    self.requested_gss = true;
                }
                _ => {}
            }
            return;
        }
        if tag == b'p' || !self.logged_in() || self.broken || self.encrypted {
            return;
        }
        if truncated {
            self.broken = true;
            return;
        }
        match self.known(tag, body) {
            Use::Send => {}
            Use::Skip => {
                self.skipped += 1;
                return;
            }
            Use::PrepareFirst(parse) => self.kept.extend(parse),
        }
        encode(tag, body, &mut self.kept);
    }

    /// Whether the replay's server will know the statement or portal a message uses;
    /// records what Parse and Bind define and Close removes.
    fn known(&mut self, tag: u8, body: &[u8]) -> Use {
        let name = |b: &[u8]| -> Vec<u8> { b.split(|&c| c == 0).next().unwrap_or(&[]).to_vec() };
        let known = |yes: bool| if yes { Use::Send } else { Use::Skip };
        match tag {
            b'P' => {
                let statement = name(body);
                self.remember_parse(&statement, body);
                self.statements.insert(statement);
                Use::Send
            }
            b'B' => {
                let portal = name(body);
                let statement = name(body.get(portal.len() + 1..).unwrap_or(&[]));
                let used = self.statement_use(&statement);
                if matches!(used, Use::Skip) {
                    self.portals.remove(&portal);
                } else {
                    self.portals.insert(portal);
                }
                used
            }
            b'E' => known(self.portals.contains(&name(body))),
            b'D' | b'C' => {
                let (kind, rest) = body.split_first().unwrap_or((&0, &[]));
                let target = name(rest);
                if tag == b'C' {
                    match kind {
                        b'S' => {
                            self.statements.remove(&target);
                            if let Some(old) = self.parses.remove(&target) {
                                self.parse_bytes -= old.len();
                            }
                        }
                        _ => {
                            self.portals.remove(&target);
                        }
                    };
                    // A Close of an unknown name is harmless (the server says CloseComplete).
                    return Use::Send;
                }
                match kind {
                    b'S' => self.statement_use(&target),
                    _ => known(self.portals.contains(&target)),
                }
            }
            _ => Use::Send,
        }
    }

    /// A message using statement `name`: sent, sent after its Parse again, or skipped.
    fn statement_use(&mut self, name: &[u8]) -> Use {
        if self.statements.contains(name) {
            return Use::Send;
        }
        match self.parses.get(name) {
            Some(parse) => {
                let parse = parse.clone();
                self.statements.insert(name.to_vec());
                Use::PrepareFirst(parse)
            }
            None => Use::Skip,
        }
    }

    fn remember_parse(&mut self, name: &[u8], body: &[u8]) {
        if name.is_empty() {
            return; // the unnamed statement is parsed again before each use
        }
        if self.parses.len() >= PARSES_KEPT || self.parse_bytes + body.len() > PARSE_BYTES_KEPT {
            return;
        }
        let mut parse = Vec::with_capacity(body.len() + 5);
        encode(b'P', body, &mut parse);
        self.parse_bytes += parse.len();
        if let Some(old) = self.parses.insert(name.to_vec(), parse) {
            self.parse_bytes -= old.len();
        }
    }
}

/// A capture file being read.
pub struct CaptureSource {
    reader: Reader<Box<dyn BufRead + Send>>,
    path: String,
    conns: Connections<SessionStream>,
    record: Record,
    completed: Vec<Completed>,
    /// Events of the records read, not yet taken.
    queue: VecDeque<Event>,
    window: Window,
    first_ns: Option<u64>,
    stats: InputStats,
    done: bool,
}

impl CaptureSource {
    pub fn open(path: &Path, window: Window) -> anyhow::Result<CaptureSource> {
        let file = pgbpf_common::cli::open_input(path)?;
        let input = Box::new(BufReader::with_capacity(1 << 20, file));
        CaptureSource::from_reader(&path.display().to_string(), input, window)
    }

    /// A capture read from `input` (`name` is how messages call it).
    pub fn from_reader(
        name: &str,
        input: Box<dyn BufRead + Send>,
        window: Window,
    ) -> anyhow::Result<CaptureSource> {
        let reader = Reader::new(input, &pgbpf_capture::POSTGRES)
            .with_context(|| format!("reading {name}"))?;
        Ok(CaptureSource {
            reader,
            path: name.to_string(),
            conns: Connections::default(),
            record: Record::default(),
            completed: vec![],
            queue: VecDeque::new(),
            window,
            first_ns: None,
            stats: InputStats::default(),
            done: false,
        })
    }

    /// Reads one record and queues its events; false at the end of the file (or of the
    /// window).
    fn read_record(&mut self) -> bool {
        let more = match self.reader.next_into(&mut self.record) {
            Ok(more) => more,
            Err(e) => {
                // What came before is replayed: a capture cut short by a killed tool or a
                // full disk still holds whole sessions.
                let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
                eprintln!(
                    "pg_replay: warning: {}: {}; replaying what came before",
                    self.path,
                    chain.join(": ")
                );
                self.stats.bad_lines += 1;
                false
            }
        };
        let r = &self.record;
        let first = *self.first_ns.get_or_insert(r.ts_ns);
        let (window, stats, queue) = (self.window, &mut self.stats, &mut self.queue);
        if !more || window.place(first, r.ts_ns) == Place::After {
            self.conns
                .finish(u64::MAX, &mut self.completed, |c, completed| {
                    let last = c.last_ns;
                    on_conn(c, completed, true, last, window, first, stats, queue);
                });
            return false;
        }
        stats.bytes += 60 + r.payload.len() as u64;
        let closing = matches!(r.kind, Kind::Close | Kind::Open | Kind::Existing);
        let ts = r.ts_ns;
        self.conns.feed(r, &mut self.completed, |c, completed| {
            on_conn(c, completed, closing, ts, window, first, stats, queue);
        });
        self.completed.clear();
        true
    }
}

/// Turns what one record did to a connection into events.
#[allow(clippy::too_many_arguments)] // the source's fields, borrowed apart from the table
fn on_conn(
    c: &mut Conn<SessionStream>,
    completed: &mut Vec<Completed>,
    closing: bool,
    ts_ns: u64,
    window: Window,
    first: u64,
    stats: &mut InputStats,
    queue: &mut VecDeque<Event>,
) {
    let key = c.id;
    let s = &mut c.stream;
    if s.opened_ns == 0 {
        s.opened_ns = ts_ns;
    }
    for done in completed.drain(..) {
        if s.begun.is_some() && window.place(first, done.started_ns) == Place::Inside {
            queue.push_back(Event::Original {
                key,
                completed: done,
                timed: true,
            });
        }
    }
    let place = window.place(first, ts_ns);
    let opened = s.opened_ns;
    if closing {
        stats.encrypted_sessions += u64::from(s.encrypted);
        stats.incomplete_sessions += u64::from(s.broken && s.begun.is_some());
        stats.skipped_unprepared += s.skipped;
        if s.begun.is_some() {
            let end = if place == Place::After {
                first + window.end_ns.unwrap_or(0)
            } else {
                ts_ns
            };
            queue.push_back(Event::End { key, ts_ns: end });
        }
        return;
    }
    // A session begins at its open (if that is in the window), else at the window's start.
    let begin_now = s.begun.is_none()
        && s.logged_in()
        && !s.encrypted
        && place == Place::Inside
        && (s.from_start || !s.kept.is_empty());
    if begin_now {
        stats.sessions += 1;
        let at = if window.place(first, opened) == Place::Inside {
            opened
        } else {
            first + window.start_ns
        };
        let base = if s.from_start { 1 } else { s.conn.ready };
        s.begun = Some(base);
        queue.push_back(Event::Begin {
            key,
            ts_ns: at,
            startup: std::mem::take(&mut s.startup),
        });
    }
    match (s.begun, place) {
        (Some(base), Place::Inside) if !s.kept.is_empty() => {
            let bytes = std::mem::take(&mut s.kept);
            queue.push_back(Event::Send {
                key,
                ts_ns,
                answers: answers_asked(&bytes),
                after_ready: s.conn.ready.saturating_sub(base),
                bytes,
            });
        }
        // Before the window: what it prepares is not replayed, so it is not known.
        (None, Place::Before) => {
            s.kept.clear();
            s.statements.clear();
            s.portals.clear();
        }
        _ => s.kept.clear(),
    }
}

impl Source for CaptureSource {
    fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Ok(Some(e));
            }
            if self.done {
                return Ok(None);
            }
            self.done = !self.read_record();
        }
    }

    fn stats(&mut self) -> InputStats {
        self.stats.clone()
    }
}
