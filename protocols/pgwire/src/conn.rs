//! One connection, both directions: framing, SSL/GSS negotiation, prepared statements and
//! portals, and stitching each request to its response — simple queries (also several
//! statements in one Query), the extended protocol, and pipelining (several Sync batches in
//! flight). A statement is reported when its CommandComplete, EmptyQueryResponse or
//! ErrorResponse arrives.

use std::collections::{HashMap, VecDeque};

use crate::{
    frame::{Direction, Each, Frame, Framer, Frames, Sink},
    message::{Backend, Frontend},
};

/// A finished statement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Completed {
    pub sql: String,
    /// The statement text or its parameters were cut at the capture limit.
    pub truncated: bool,
    pub extended: bool,
    /// Bind parameters, for the extended protocol.
    pub params: Params,
    /// Name of the prepared statement, if not the unnamed one.
    pub statement: Option<String>,
    /// Timestamp of the bytes that carried the request, and of the response.
    pub started_ns: u64,
    pub finished_ns: u64,
    /// SQLSTATE of the error, None when it succeeded.
    pub sqlstate: Option<String>,
    pub error: Option<String>,
    /// The CommandComplete tag ("SELECT 5") and the rows it reports.
    pub tag: Option<String>,
    pub rows: Option<u64>,
    /// Transaction state the server reported at the end of the request's batch
    /// (ReadyForQuery: b'I' idle, b'T' in a transaction, b'E' failed); None when the
    /// connection ended before it.
    pub transaction: Option<u8>,
}

/// The parameters of one Bind: nothing allocated when there are none (every statement of the
/// simple protocol), and one pointer wide in the statement, which moves through every stage
/// of decoding (72 bytes inline made each move a third longer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(Option<Box<ParamValues>>);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ParamValues {
    values: Vec<Option<Vec<u8>>>,
    formats: Vec<i16>,
    types: Vec<u32>,
}

impl Params {
    /// Values (None for NULL), format codes (none: all text, one for all, or one per value; 0
    /// text, 1 binary) and the types the Parse declared (0 or missing: left to the server).
    pub fn new(values: Vec<Option<Vec<u8>>>, formats: Vec<i16>, types: Vec<u32>) -> Params {
        if values.is_empty() && formats.is_empty() && types.is_empty() {
            return Params(None);
        }
        Params(Some(Box::new(ParamValues {
            values,
            formats,
            types,
        })))
    }

    /// The values, None for NULL.
    pub fn values(&self) -> &[Option<Vec<u8>>] {
        self.0.as_ref().map_or(&[], |p| &p.values)
    }

    /// Format code of value `i`.
    pub fn format(&self, i: usize) -> i16 {
        let formats = self.0.as_ref().map_or(&[][..], |p| &p.formats);
        match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => formats.get(i).copied().unwrap_or(0),
        }
    }

    /// Declared type of value `i` (0 when unknown).
    pub fn type_oid(&self, i: usize) -> u32 {
        self.0
            .as_ref()
            .and_then(|p| p.types.get(i).copied())
            .unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
enum Pending {
    /// A statement sent and not answered yet.
    Statement {
        sql: String,
        truncated: bool,
        extended: bool,
        params: Params,
        statement: Option<String>,
        started_ns: u64,
    },
    /// A Sync (or the end of a simple Query): the server answers ReadyForQuery there.
    Boundary,
}

/// A bound portal: the statement's SQL, its parameters, the prepared statement's name.
#[derive(Clone, Debug, Default)]
struct Portal {
    sql: String,
    truncated: bool,
    params: Params,
    statement: Option<String>,
}

/// Decoding state of one connection.
#[derive(Debug)]
pub struct Connection {
    client: Framer,
    server: Framer,
    /// Prepared statements: name → (SQL, declared parameter types, SQL cut at the capture
    /// limit).
    statements: HashMap<String, (String, Vec<u32>, bool)>,
    portals: HashMap<String, Portal>,
    pending: VecDeque<Pending>,
    /// After an error in an extended batch the server skips everything up to Sync.
    skipping: bool,
    awaiting_encryption_answer: bool,
    /// The request awaiting its answer was a GSSENCRequest (else an SSLRequest).
    requested_gss: bool,
    /// True while the payload is not visible: the connection switched to TLS or GSS
    /// encryption, and (for TLS) no plaintext from the TLS library came yet.
    pub encrypted: bool,
    /// The server answered an SSLRequest with `S`: the socket bytes that follow are TLS.
    pub tls_negotiated: bool,
    /// The bytes decoded are TLS plaintext (from the TLS library).
    pub tls: bool,
    /// Start-up parameters (user, database, application_name, ...).
    pub startup: Vec<(String, String)>,
    /// Last ReadyForQuery status: b'I', b'T' or b'E'.
    pub transaction: u8,
    /// ReadyForQuery messages seen (a replay waits for as many as the original client did).
    pub ready: u64,
    /// Messages that could not be decoded (of those pairing reads: every client message, and
    /// the server's completions, errors and ReadyForQuery).
    pub malformed: u64,
    /// Answers that could not be matched to their request because bytes were missing:
    /// after a gap that lost message boundaries nothing is reported until the connection is
    /// back in step, rather than pairing a response with the wrong request.
    pub unmatched: u64,
    /// Statements answered, waiting for the ReadyForQuery that gives their transaction state.
    answered: Vec<Completed>,
    /// Bytes went missing and message boundaries with them: pairing is unsure until an idle
    /// point (a ReadyForQuery with nothing else asked since).
    unsure: bool,
    /// Messages framed while out of step (`frame`), kept between calls for their memory.
    frames: Frames,
    /// Between the start-up message and AuthenticationOk: the client sends credentials.
    authenticating: bool,
    /// Byte ranges of the client bytes fed last that hold credentials.
    secrets: Vec<(usize, usize)>,
}

/// Where the credentials are in client bytes sent while authenticating: the bodies of the
/// password messages (`p`: a password in the clear or MD5-hashed, SASL/SCRAM and GSS
/// exchanges), their headers kept so that a capture file still frames. Bytes that do not
/// start at a message boundary, or that do not frame as password messages, are all secret.
fn password_ranges(data: &[u8], at_boundary: bool, out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while i < data.len() {
        let len = data.get(i + 1..).and_then(crate::frame::be32);
        match len {
            Some(len) if at_boundary && data[i] == b'p' && len >= 4 => {
                let end = (i + 1).saturating_add(len as usize);
                if i + 5 < end.min(data.len()) {
                    out.push((i + 5, end.min(data.len())));
                }
                i = end;
            }
            _ => {
                out.push((i, data.len()));
                return;
            }
        }
    }
}

/// The statements of a simple query, as [`split_statements`] finds them. A query with no
/// semicolon except a final one, and nothing that could hide one (quotes, comments, dollar
/// quotes), is one statement: its text is trimmed in place instead of copied, the common
/// case of every client that sends one statement per Query.
pub fn statements_of(sql: String) -> Vec<String> {
    let mut out = vec![];
    each_statement(sql, |s, _| out.push(s));
    out
}

/// [`statements_of`], each statement handed to `f` with whether it is the last, without a
/// vector for the one statement of most queries.
pub fn each_statement(mut sql: String, mut f: impl FnMut(String, bool)) {
    let body = sql.trim_end();
    let body = body.strip_suffix(';').unwrap_or(body);
    let b = body.as_bytes();
    if memchr::memchr3(b';', b'\'', b'"', b).is_some() || memchr::memchr2(b'-', b'$', b).is_some() {
        let all = split_statements(&sql);
        let last = all.len().saturating_sub(1);
        for (i, s) in all.into_iter().enumerate() {
            f(s, i == last);
        }
        return;
    }
    let end = body.trim_end().len();
    let start = end - body[..end].trim_start().len();
    if start == end {
        return;
    }
    sql.truncate(end);
    sql.drain(..start);
    f(sql, true);
}

/// Splits a simple query into its statements at top-level semicolons (outside quotes,
/// identifiers, dollar quotes and comments).
pub fn split_statements(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let (mut out, mut start, mut i) = (vec![], 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'$' => {
                // $tag$ ... $tag$
                if let Some(end) = b[i + 1..].iter().position(|&c| c == b'$') {
                    let tag = &b[i..i + end + 2];
                    if tag[1..tag.len() - 1]
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
                    {
                        let body_start = i + tag.len();
                        if let Some(p) = b[body_start..].windows(tag.len()).position(|w| w == tag) {
                            i = body_start + p + tag.len() - 1;
                        }
                    }
                }
            }
            b';' => {
                let s = sql[start..i].trim();
                if !s.is_empty() {
                    out.push(s.to_string());
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    let s = sql.get(start..).unwrap_or("").trim();
    if !s.is_empty() {
        out.push(s.to_string());
    }
    out
}

impl Connection {
    /// A connection seen from its first byte (`from_start`) or joined midway.
    pub fn new(from_start: bool) -> Connection {
        Connection {
            client: Framer::new(Direction::Frontend, from_start),
            server: Framer::new(Direction::Backend, from_start),
            statements: HashMap::new(),
            portals: HashMap::new(),
            pending: VecDeque::new(),
            skipping: false,
            awaiting_encryption_answer: false,
            requested_gss: false,
            encrypted: false,
            tls_negotiated: false,
            tls: false,
            startup: vec![],
            authenticating: false,
            secrets: Vec::new(),
            transaction: 0,
            ready: 0,
            malformed: 0,
            unmatched: 0,
            answered: vec![],
            // Joined midway, a response may belong to a request never seen: pair nothing
            // until the first quiet ReadyForQuery.
            unsure: !from_start,
            frames: Frames::default(),
        }
    }

    /// A connection the caller logged in itself (a replay): its next bytes in each direction
    /// are typed messages, and every answer pairs with a request fed since.
    pub fn logged_in() -> Connection {
        Connection {
            client: Framer::at_message_start(Direction::Frontend),
            server: Framer::at_message_start(Direction::Backend),
            ..Connection::new(true)
        }
    }

    /// Ends the connection: statements answered but not yet followed by ReadyForQuery.
    pub fn close(&mut self) -> Vec<Completed> {
        std::mem::take(&mut self.answered)
    }

    /// Byte ranges of the client bytes fed last that hold credentials (password messages).
    pub fn secrets(&self) -> &[(usize, usize)] {
        &self.secrets
    }

    /// Statements sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.pending
            .iter()
            .filter(|p| matches!(p, Pending::Statement { .. }))
            .count()
    }

    /// A framer lost the message boundaries: forget what is pending, stop pairing.
    fn lost_step(&mut self) {
        self.unmatched += self.in_flight() as u64;
        self.pending.clear();
        self.unsure = true;
    }

    /// Frames one direction's bytes and the gap of `missing` bytes after them, handing each
    /// message to `each` with the connection. True when the framer lost the message
    /// boundaries here.
    fn frame(
        &mut self,
        client: bool,
        data: &[u8],
        missing: u64,
        mut each: impl FnMut(&mut Connection, Frame<'_>),
    ) -> bool {
        if self.unsure {
            // Out of step: every message of the bytes is framed before any is read, so that a
            // ReadyForQuery finds the framers as the bytes leave them (in step again only if
            // they frame to their end), with the framers in place.
            let mut frames = std::mem::take(&mut self.frames);
            frames.clear();
            let lost = Self::feed(self.framer(client), data, missing, &mut frames);
            for f in frames.iter() {
                each(self, f);
            }
            self.frames = frames;
            return lost;
        }
        // In step (the common case): each message is read as it is framed, its body borrowed
        // from `data` where whole in it, with the framer out of the connection meanwhile (so
        // that `each` may change the connection). Nothing read in step asks the framers.
        let side = self.framer(client);
        let mut framer = std::mem::replace(side, Framer::at_message_start(Direction::Backend));
        let lost = Self::feed(
            &mut framer,
            data,
            missing,
            &mut Each(|f: Frame<'_>| each(self, f)),
        );
        *self.framer(client) = framer;
        lost
    }

    fn framer(&mut self, client: bool) -> &mut Framer {
        if client {
            &mut self.client
        } else {
            &mut self.server
        }
    }

    /// Feeds `data` and the gap after it to `framer`; true when it lost step there.
    fn feed(framer: &mut Framer, data: &[u8], missing: u64, sink: &mut impl Sink) -> bool {
        let was_synced = framer.synced();
        framer.feed(data, sink);
        if missing > 0 {
            framer.feed_gap(missing, sink);
        }
        (was_synced || missing > 0) && !framer.synced()
    }

    /// The TLS library's plaintext follows: after a negotiated TLS start the client's
    /// start-up message comes next; joined midway, decoding goes on from where it is.
    pub fn tls_begins(&mut self) {
        self.tls = true;
        if self.encrypted && self.tls_negotiated {
            self.encrypted = false;
            self.client.expect_startup();
        }
    }

    /// Only encrypted bytes come (no plaintext from a TLS library): nothing is visible.
    pub fn tls_undecodable(&mut self) {
        self.encrypted = true;
    }

    /// Bytes the client sent (at `ts_ns`); `missing` bytes after them were not captured.
    pub fn client_bytes(&mut self, ts_ns: u64, data: &[u8], missing: u64) {
        self.secrets.clear();
        if self.encrypted {
            return;
        }
        if self.authenticating {
            password_ranges(data, self.client.at_boundary(), &mut self.secrets);
        }
        let lost_step = self.frame(true, data, missing, |c, f| c.on_client(ts_ns, &f));
        if lost_step {
            self.lost_step();
        }
    }

    /// Bytes the server sent; returns the statements they completed.
    pub fn server_bytes(&mut self, ts_ns: u64, data: &[u8], missing: u64) -> Vec<Completed> {
        let mut done = vec![];
        self.server_bytes_into(ts_ns, data, missing, &mut done);
        done
    }

    /// [`Connection::server_bytes`], appending to `done` (a buffer the caller reuses).
    pub fn server_bytes_into(
        &mut self,
        ts_ns: u64,
        mut data: &[u8],
        missing: u64,
        done: &mut Vec<Completed>,
    ) {
        if self.encrypted {
            return;
        }
        if self.awaiting_encryption_answer {
            let Some((&answer, rest)) = data.split_first() else {
                return;
            };
            self.awaiting_encryption_answer = false;
            if answer == b'S' || answer == b'G' {
                self.encrypted = true;
                self.tls_negotiated = answer == b'S' && !self.requested_gss;
                return;
            }
            self.client.expect_startup();
            data = rest;
        }
        let lost_step = self.frame(false, data, missing, |c, f| c.on_server(ts_ns, &f, done));
        if lost_step {
            self.lost_step();
        }
    }

    fn on_client(&mut self, ts: u64, f: &Frame) {
        let Ok(m) = Frontend::decode(f) else {
            self.malformed += 1;
            return;
        };
        match m {
            Frontend::Startup { params, .. } => {
                self.startup = params;
                self.authenticating = true;
            }
            Frontend::SslRequest => {
                self.awaiting_encryption_answer = true;
                self.requested_gss = false;
            }
            Frontend::GssEncRequest => {
                self.awaiting_encryption_answer = true;
                self.requested_gss = true;
            }
            Frontend::Query { sql } => {
                each_statement(sql, |s, last| {
                    self.pending.push_back(Pending::Statement {
                        sql: s,
                        // Only the last statement of a cut Query lost its tail.
                        truncated: f.truncated && last,
                        extended: false,
                        params: Params::default(),
                        statement: None,
                        started_ns: ts,
                    });
                });
                self.pending.push_back(Pending::Boundary);
            }
            Frontend::Parse {
                statement,
                sql,
                param_types,
            } => {
                self.statements
                    .insert(statement, (sql, param_types, f.truncated));
            }
            Frontend::Bind {
                portal,
                statement,
                params,
                param_formats,
                ..
            } => {
                let (sql, types, sql_cut) =
                    self.statements.get(&statement).cloned().unwrap_or_default();
                let name = (!statement.is_empty()).then_some(statement);
                self.portals.insert(
                    portal,
                    Portal {
                        sql,
                        truncated: sql_cut || f.truncated,
                        params: Params::new(params, param_formats, types),
                        statement: name,
                    },
                );
            }
            Frontend::Execute { portal, .. } => {
                let Portal {
                    sql,
                    truncated,
                    params,
                    statement,
                } = self.portals.get(&portal).cloned().unwrap_or_default();
                self.pending.push_back(Pending::Statement {
                    sql,
                    truncated,
                    extended: true,
                    params,
                    statement,
                    started_ns: ts,
                });
            }
            Frontend::Close { kind: b'S', name } => {
                self.statements.remove(&name);
            }
            // Both are answered by a ReadyForQuery.
            Frontend::Sync | Frontend::FunctionCall { .. } => {
                self.pending.push_back(Pending::Boundary)
            }
            _ => {}
        }
    }

    fn finish(
        &mut self,
        ts: u64,
        tag: Option<String>,
        error: Option<(String, String)>,
    ) -> Option<Completed> {
        // The oldest statement not yet answered, before the next boundary.
        let idx = self
            .pending
            .iter()
            .position(|p| matches!(p, Pending::Statement { .. } | Pending::Boundary))?;
        // A boundary stays where it is; a statement is taken out (moved, not copied).
        if !matches!(self.pending.get(idx)?, Pending::Statement { .. }) {
            return None;
        }
        let Some(Pending::Statement {
            sql,
            truncated,
            extended,
            params,
            statement,
            started_ns,
        }) = self.pending.remove(idx)
        else {
            return None;
        };
        let rows = tag.as_deref().and_then(Backend::rows_from_tag);
        let (sqlstate, error) = match error {
            Some((s, m)) => (Some(s), Some(m)),
            None => (None, None),
        };
        Some(Completed {
            sql,
            truncated,
            extended,
            params,
            statement,
            started_ns,
            finished_ns: ts,
            sqlstate,
            error,
            tag,
            rows,
            transaction: None,
        })
    }

    /// A statement's answer arrived: kept until ReadyForQuery, or dropped when unsure.
    fn answered(&mut self, c: Option<Completed>) {
        if let Some(c) = c {
            if self.unsure {
                self.unmatched += 1;
            } else {
                self.answered.push(c);
            }
        }
    }

    fn on_server(&mut self, ts: u64, f: &Frame, done: &mut Vec<Completed>) {
        // AuthenticationOk, an error or ReadyForQuery end the exchange of credentials.
        if f.tag == b'R' && f.body.starts_with(&[0, 0, 0, 0]) || matches!(f.tag, b'E' | b'Z') {
            self.authenticating = false;
        }
        // Pairing reads completions, errors and ReadyForQuery only: rows, descriptions and
        // the rest are not decoded (most of a result's bytes, and allocations per row).
        if !matches!(f.tag, b'C' | b'I' | b'E' | b'Z') {
            return;
        }
        let Ok(m) = Backend::decode(f) else {
            self.malformed += 1;
            return;
        };
        match m {
            Backend::CommandComplete { tag } => {
                let c = self.finish(ts, Some(tag), None);
                self.answered(c);
            }
            Backend::EmptyQueryResponse => {
                let c = self.finish(ts, None, None);
                self.answered(c);
            }
            Backend::Error(n) => {
                let c = self.finish(ts, None, Some((n.sqlstate, n.message)));
                self.answered(c);
                // The rest of this batch is not executed: drop it up to the boundary.
                while let Some(Pending::Statement { .. }) = self.pending.front() {
                    self.pending.pop_front();
                }
                self.skipping = true;
            }
            Backend::ReadyForQuery { status } => {
                self.transaction = status;
                self.ready += 1;
                self.skipping = false;
                for c in &mut self.answered {
                    c.transaction = Some(status);
                }
                // Handed over whole: a statement is ~230 bytes, and moving each one through
                // every stage showed as a sixth of decoding.
                if done.is_empty() {
                    std::mem::swap(done, &mut self.answered);
                } else {
                    done.append(&mut self.answered);
                }
                // Everything up to the first boundary is answered (or was never executed).
                while let Some(p) = self.pending.pop_front() {
                    match p {
                        Pending::Boundary => break,
                        Pending::Statement { .. } if self.unsure => self.unmatched += 1,
                        Pending::Statement { .. } => {}
                    }
                }
                // After a gap, back in step only where no request can be outstanding: nothing
                // queued behind this ReadyForQuery and both directions framed again. A client
                // that does not pipeline gets there at its next ReadyForQuery.
                if self.unsure
                    && self.pending.is_empty()
                    && self.client.synced()
                    && self.server.synced()
                {
                    self.unsure = false;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::msg;

    fn cstr(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }
    fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = cstr(name);
        b.extend(cstr(sql));
        b.extend([0, 0]);
        msg(b'P', &b)
    }
    fn bind(stmt: &str, param: &str) -> Vec<u8> {
        let mut b = cstr("");
        b.extend(cstr(stmt));
        b.extend([0, 0, 0, 1]);
        b.extend((param.len() as u32).to_be_bytes());
        b.extend(param.as_bytes());
        b.extend([0, 0]);
        msg(b'B', &b)
    }
    fn execute() -> Vec<u8> {
        let mut b = cstr("");
        b.extend([0, 0, 0, 0]);
        msg(b'E', &b)
    }
    fn error(code: &str, text: &str) -> Vec<u8> {
        let mut b = b"SERROR\0VERROR\0C".to_vec();
        b.extend(cstr(code));
        b.push(b'M');
        b.extend(cstr(text));
        b.push(0);
        msg(b'E', &b)
    }

    /// A connection followed from its start-up, now idle.
    fn in_step() -> Connection {
        let mut c = Connection::new(true);
        let body = b"\x00\x03\x00\x00user\0bob\0\0";
        let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        startup.extend_from_slice(body);
        c.client_bytes(0, &startup, 0);
        let mut resp = msg(b'R', &[0, 0, 0, 0]);
        resp.extend(msg(b'Z', b"I"));
        assert!(c.server_bytes(0, &resp, 0).is_empty());
        c
    }

    #[test]
    fn statements_cut_at_the_capture_limit_are_reported_truncated() {
        let mut c = in_step();
        let long = format!("select '{}'", "x".repeat(5000));
        let query = msg(b'Q', &cstr(&long));
        // Only the first 1000 bytes were captured; the rest arrives as a gap.
        c.client_bytes(1, &query[..1000], (query.len() - 1000) as u64);
        let mut resp = msg(b'C', &cstr("SELECT 1"));
        resp.extend(msg(b'Z', b"I"));
        let done = c.server_bytes(2, &resp, 0);
        assert_eq!(
            done.len(),
            1,
            "the cut Query is still paired with its answer"
        );
        assert!(done[0].truncated && long.starts_with(&done[0].sql));
        assert_eq!((done[0].rows, c.malformed, c.unmatched), (Some(1), 0, 0));

        // Extended: the Parse is cut, the Bind/Execute/Sync after it arrive whole.
        let parse = parse("s1", &long);
        c.client_bytes(3, &parse[..700], (parse.len() - 700) as u64);
        let mut rest = bind("s1", "7");
        rest.extend(execute());
        rest.extend(msg(b'S', b""));
        c.client_bytes(3, &rest, 0);
        let mut resp = msg(b'1', b"");
        resp.extend(msg(b'2', b""));
        resp.extend(msg(b'C', &cstr("SELECT 1")));
        resp.extend(msg(b'Z', b"I"));
        let done = c.server_bytes(4, &resp, 0);
        assert_eq!(done.len(), 1);
        assert!(done[0].truncated && done[0].extended);
        assert_eq!(done[0].params.values(), vec![Some(b"7".to_vec())]);
        // A later statement that fits is not marked.
        c.client_bytes(5, &msg(b'Q', &cstr("select 2")), 0);
        let done = c.server_bytes(6, &resp[resp.len() - 20..], 0);
        assert_eq!(done.len(), 1);
        assert!(!done[0].truncated);
    }

    #[test]
    fn joined_midway_nothing_is_paired_until_a_quiet_point() {
        let mut c = Connection::new(false);
        c.client_bytes(1, &msg(b'Q', &cstr("select 2")), 0);
        // This answer may be to a request sent before we joined.
        let mut resp = msg(b'C', &cstr("SELECT 1"));
        resp.extend(msg(b'Z', b"I"));
        assert!(c.server_bytes(2, &resp, 0).is_empty());
        c.client_bytes(3, &msg(b'Q', &cstr("select 3")), 0);
        assert_eq!(c.server_bytes(4, &resp, 0).len(), 1);
    }

    #[test]
    fn a_quiet_point_counts_only_if_the_bytes_frame_to_their_end() {
        // Joined midway; the server's bytes resynchronize, reach a quiet ReadyForQuery, then
        // lose step again (a false resync inside a row, say): still unsure after them, so the
        // next answer is not paired with the next request.
        let mut c = Connection::new(false);
        c.client_bytes(1, &msg(b'Q', &cstr("select 1")), 0);
        let mut resp = msg(b'C', &cstr("SELECT 1"));
        resp.extend(msg(b'Z', b"I"));
        resp.extend([0xff; 5]);
        assert!(c.server_bytes(2, &resp, 0).is_empty());
        assert!(
            c.unsure,
            "out of step at the end of the bytes: still unsure"
        );
        c.client_bytes(3, &msg(b'Q', &cstr("select 2")), 0);
        let mut next = msg(b'C', &cstr("SELECT 1"));
        next.extend(msg(b'Z', b"I"));
        assert!(c.server_bytes(4, &next, 0).is_empty());
    }

    #[test]
    fn one_statement_queries_are_split_as_the_full_splitter_would() {
        for sql in [
            "select 1;",
            "  select 1 ;  \n",
            "select 1",
            ";",
            " ; ",
            "",
            "select 1; select 2",
            "select ';'",
            "select 'abc;",
            "select 1 -- c;",
            "select $a$;$a$;",
            "select \"x;\";",
            "select 1;;",
        ] {
            assert_eq!(
                statements_of(sql.to_string()),
                split_statements(sql),
                "{sql:?}"
            );
        }
    }

    #[test]
    fn statements_split_outside_quotes() {
        assert_eq!(
            split_statements("select 1; select ';'; select $x$;$x$ -- ;\n;"),
            vec!["select 1", "select ';'", "select $x$;$x$ -- ;"]
        );
        assert_eq!(split_statements("  "), Vec::<String>::new());
    }

    #[test]
    fn multi_statement_simple_query_with_an_error() {
        let mut c = in_step();
        c.client_bytes(10, &msg(b'Q', &cstr("select 1; select 1/0; select 3")), 0);
        let mut resp = msg(b'C', &cstr("SELECT 1"));
        resp.extend(error("22012", "division by zero"));
        resp.extend(msg(b'Z', b"I"));
        let done = c.server_bytes(20, &resp, 0);
        assert_eq!(done.len(), 2);
        assert_eq!((done[0].sql.as_str(), done[0].rows), ("select 1", Some(1)));
        assert_eq!(done[1].sqlstate.as_deref(), Some("22012"));
        assert_eq!(done[1].finished_ns - done[1].started_ns, 10);
        assert_eq!(c.transaction, b'I');
    }

    #[test]
    fn pipelined_extended_batches_are_matched_in_order() {
        let mut c = in_step();
        let mut req = parse("s1", "select $1");
        req.extend(bind("s1", "7"));
        req.extend(execute());
        req.extend(msg(b'S', b""));
        req.extend(bind("s1", "8"));
        req.extend(execute());
        req.extend(bind("s1", "9"));
        req.extend(execute());
        req.extend(msg(b'S', b""));
        c.client_bytes(1, &req, 0);
        let mut resp = msg(b'1', b"");
        resp.extend(msg(b'2', b""));
        resp.extend(msg(b'C', &cstr("SELECT 1")));
        resp.extend(msg(b'Z', b"I"));
        resp.extend(msg(b'2', b""));
        resp.extend(error("57014", "canceling statement"));
        resp.extend(msg(b'Z', b"I"));
        let done = c.server_bytes(5, &resp, 0);
        // The third execute was skipped by the server after the error: never reported.
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].params.values(), vec![Some(b"7".to_vec())]);
        assert_eq!(done[0].statement.as_deref(), Some("s1"));
        assert_eq!(done[1].params.values(), vec![Some(b"8".to_vec())]);
        assert_eq!(done[1].sqlstate.as_deref(), Some("57014"));
        assert!(c.pending.is_empty());
    }

    #[test]
    fn a_gap_that_loses_boundaries_never_pairs_wrongly_and_recovers() {
        let mut c = Connection::new(true);
        c.client_bytes(1, &msg(b'Q', &cstr("select 1")), 0);
        // The answer to it is lost, boundaries and all.
        assert!(c.server_bytes(2, b"", 40).is_empty());
        c.client_bytes(3, &msg(b'Q', &cstr("select 2")), 0);
        let mut resp = msg(b'C', &cstr("SELECT 1"));
        resp.extend(msg(b'Z', b"I"));
        // Could be the lost answer or this one: not reported.
        assert!(c.server_bytes(4, &resp, 0).is_empty());
        assert_eq!(c.unmatched, 2);
        c.client_bytes(5, &msg(b'Q', &cstr("select 3")), 0);
        let mut resp = msg(b'C', &cstr("SELECT 3"));
        resp.extend(msg(b'Z', b"T"));
        let done = c.server_bytes(6, &resp, 0);
        assert_eq!(done.len(), 1);
        assert_eq!(
            (done[0].sql.as_str(), done[0].transaction),
            ("select 3", Some(b'T'))
        );
    }

    #[test]
    fn ssl_accepted_hides_the_payload_and_refused_continues() {
        let ssl = [0u8, 0, 0, 8, 4, 210, 22, 47];
        let mut c = Connection::new(true);
        c.client_bytes(0, &ssl, 0);
        assert!(c.server_bytes(1, b"S", 0).is_empty());
        assert!(c.encrypted && c.tls_negotiated);
        // The plaintext of the TLS library: the start-up message, then a query.
        c.tls_begins();
        assert!(!c.encrypted && c.tls);
        let body = b"\x00\x03\x00\x00user\0bob\0\0";
        let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        startup.extend_from_slice(body);
        c.client_bytes(2, &startup, 0);
        assert_eq!(c.startup, vec![("user".to_string(), "bob".to_string())]);
        let mut c = Connection::new(true);
        c.client_bytes(0, &ssl, 0);
        c.server_bytes(1, b"N", 0);
        let body = b"\x00\x03\x00\x00user\0bob\0\0";
        let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        startup.extend_from_slice(body);
        c.client_bytes(2, &startup, 0);
        assert_eq!(c.startup, vec![("user".to_string(), "bob".to_string())]);
        assert!(!c.encrypted);
    }
    #[test]
    fn password_messages_are_located_until_authentication_ends() {
        let mut c = Connection::new(true);
        let body = [cstr("user"), cstr("bob"), vec![0]].concat();
        let mut startup = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        startup.extend(196_608u32.to_be_bytes());
        startup.extend(&body);
        c.client_bytes(1, &startup, 0);
        assert!(
            c.secrets().is_empty(),
            "the start-up message holds no credentials"
        );
        // AuthenticationCleartextPassword, then the password in the clear.
        c.server_bytes(2, &msg(b'R', &3i32.to_be_bytes()), 0);
        let password = msg(b'p', &cstr("hunter2"));
        c.client_bytes(3, &password, 0);
        assert_eq!(c.secrets(), &[(5, password.len())]);
        // A SASL exchange split across writes: the second piece is all secret.
        let sasl = msg(
            b'p',
            b"SCRAM-SHA-256\0\0\0\0\x20n,,n=,r=abcdefghijklmnopqrstuvwx",
        );
        c.client_bytes(4, &sasl[..10], 0);
        assert_eq!(c.secrets(), &[(5, 10)]);
        c.client_bytes(5, &sasl[10..], 0);
        assert_eq!(c.secrets(), &[(0, sasl.len() - 10)]);
        // AuthenticationOk: what follows is no credential.
        c.server_bytes(6, &[msg(b'R', &[0; 4]), msg(b'Z', b"I")].concat(), 0);
        c.client_bytes(7, &msg(b'Q', &cstr("select 1")), 0);
        assert!(c.secrets().is_empty());
        assert_eq!(c.startup, vec![("user".to_string(), "bob".to_string())]);
    }
}
