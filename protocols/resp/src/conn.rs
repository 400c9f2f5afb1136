//! One connection, both directions: every command paired with its own reply, in order
//! (pipelining: N commands in one write, replies split across reads), and the connection
//! states that change what a reply is: CLIENT REPLY OFF/SKIP (no reply comes), HELLO 3,
//! MULTI…EXEC/DISCARD (QUEUED, then EXEC's array holds each command's reply), pub/sub
//! (pushes and RESP2 `message` arrays are counted as pushes, never paired), MONITOR.
//!
//! Pairing needs every byte: when one direction loses its position (bytes not captured
//! outside a value's body, a connection joined midway), nothing is paired until an idle
//! point: the client sends after the server wrote, so every earlier command was answered,
//! and the server's next write starts the next reply.

use std::collections::VecDeque;

use crate::{
    command::{Command, Effect, SubKind},
    frame::{Frame, Framer, Side, kind},
};

/// Bytes kept per element: enough for keys and the start of values.
pub const KEEP: usize = 256;

/// An error reply: its code (the first word when it is upper case, else `ERR`) and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: String,
    pub message: String,
}

/// What came back, in brief.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The value's type byte.
    pub kind: u8,
    /// Bytes on the wire.
    pub wire: u64,
    /// A blob's length or an aggregate's count (-1: RESP2 null).
    pub len: i64,
    pub null: bool,
    /// Boxed: errors are rare, and replies are moved with every command.
    pub error: Option<Box<ErrorReply>>,
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Reply(Reply),
    /// CLIENT REPLY OFF or SKIP: the server sends no reply.
    NoReply,
    /// Queued in a transaction that EXEC aborted (EXECABORT, or a WATCHed key changed).
    Aborted,
    /// Queued in a transaction that DISCARD dropped.
    Discarded,
    /// The connection ended (or the trace did) before the reply.
    Unanswered,
}

/// A command and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    /// Boxed: a command is moved from its parse to the queue of those waiting, to what the
    /// decoder reports; one allocation costs less than copying it every time.
    pub command: Box<Command>,
    pub outcome: Outcome,
    /// When the reply's last byte was read or written (the command's start when no reply).
    pub finished_ns: u64,
    /// The transaction (numbered per connection from 1) the command was queued in.
    pub transaction: Option<u64>,
    /// Ran inside EXEC: its own duration is not visible (the transaction's is).
    pub in_exec: bool,
    /// A blocking command whose null reply says it timed out.
    pub timed_out: bool,
}

impl Completed {
    /// The reply's error, if it was one.
    pub fn error(&self) -> Option<&ErrorReply> {
        match &self.outcome {
            Outcome::Reply(r) => r.error.as_deref(),
            _ => None,
        }
    }
}

/// How a transaction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxOutcome {
    Executed,
    /// EXEC answered an error (EXECABORT after a command was refused while queued).
    Aborted(String),
    /// EXEC answered null: a WATCHed key changed.
    WatchFailed,
    Discarded,
}

/// MULTI … EXEC or DISCARD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub id: u64,
    /// From MULTI's first byte to the EXEC (or DISCARD) reply's last.
    pub started_ns: u64,
    pub finished_ns: u64,
    /// Commands queued (and answered QUEUED).
    pub commands: u32,
    pub outcome: TxOutcome,
}

/// What a push was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushKind {
    /// A published message (message, pmessage, smessage).
    Message,
    /// A subscription confirmation beyond those a command asked for.
    Subscription,
    /// Client-side caching: invalidate.
    Invalidate,
    /// A MONITOR line.
    Monitor,
    Other,
}

/// Something the server sent unasked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    pub kind: PushKind,
    pub ts_ns: u64,
    pub wire: u64,
}

/// What a connection's bytes completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Command(Completed),
    Transaction(Transaction),
    Push(Push),
}

/// Counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Commands whose replies could not be paired (dropped when the connection fell out of
    /// step, or sent while it was), and replies that came with no command waiting.
    pub unmatched: u64,
    /// Values that did not frame, and requests that are no command.
    pub malformed: u64,
    /// Bytes skipped to find value boundaries again.
    pub skipped: u64,
}

#[derive(Clone, Debug)]
struct Pending {
    command: Box<Command>,
    /// Queued in this transaction (or, for MULTI, EXEC and DISCARD, theirs).
    tx: Option<u64>,
    /// Subscription confirmations still to come.
    confirmations: u32,
}

/// Decoding state of one connection.
#[derive(Debug)]
pub struct Connection {
    requests: Framer,
    replies: Framer,
    pending: VecDeque<Pending>,
    // What the server will do with the next command (followed as commands are sent).
    reply_off: bool,
    skip_next: bool,
    queuing: Option<u64>,
    transactions: u64,
    // What the server's next values are (followed as replies arrive).
    /// HELLO 3 switched the connection to RESP3.
    pub resp3: bool,
    subscribed: bool,
    monitor: bool,
    /// Commands answered QUEUED in the open transaction, and when its MULTI began.
    queued: Vec<Pending>,
    tx_started: u64,
    /// Out of step: nothing is paired until an idle point.
    unsure: bool,
    last_side: Option<Side>,
    counts: Counts,
    /// Framing failures while out of step (pieces of values cut by a gap): not counted.
    malformed_out_of_step: u64,
    /// The commands of one client feed, kept for its memory.
    parsed: Vec<Option<Box<Command>>>,
}

impl Connection {
    /// `from_start`: the connection's first byte comes next (else it was joined midway).
    pub fn new(from_start: bool) -> Connection {
        Connection {
            requests: Framer::new(Side::Request, from_start, KEEP),
            replies: Framer::new(Side::Reply, from_start, KEEP),
            pending: VecDeque::new(),
            reply_off: false,
            skip_next: false,
            queuing: None,
            transactions: 0,
            resp3: false,
            subscribed: false,
            monitor: false,
            queued: Vec::new(),
            tx_started: 0,
            unsure: !from_start,
            last_side: None,
            counts: Counts::default(),
            malformed_out_of_step: 0,
            parsed: Vec::new(),
        }
    }

    /// Counters so far.
    pub fn counts(&self) -> Counts {
        Counts {
            malformed: self.counts.malformed + self.framer_malformed() - self.malformed_out_of_step,
            skipped: self.requests.skipped + self.replies.skipped,
            unmatched: self.counts.unmatched,
        }
    }

    fn framer_malformed(&self) -> u64 {
        self.requests.malformed + self.replies.malformed
    }

    /// Byte ranges of the client bytes fed last that hold secrets.
    pub fn secrets(&self) -> &[(usize, usize)] {
        self.requests.secrets()
    }

    /// Commands waiting for their replies.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Bytes the client sent (`missing` more were not captured), at `ts_ns`.
    pub fn client_bytes(&mut self, ts_ns: u64, data: &[u8], missing: u64, out: &mut Vec<Event>) {
        if self.unsure && self.last_side == Some(Side::Reply) {
            // The client speaks after the server wrote: whatever was asked before is
            // answered, and the server's next write answers what comes now.
            self.drop_pending();
            self.unsure = false;
            self.requests.lose_position();
            self.replies.sync_at_next_record();
        }
        self.last_side = Some(Side::Request);
        let (out_of_step, malformed) = (self.unsure, self.framer_malformed());
        self.requests.feed(data, ts_ns);
        self.requests.feed_gap(missing);
        if out_of_step {
            self.malformed_out_of_step += self.framer_malformed() - malformed;
        }
        // Commands copy what they keep, so the framer can let go of its frames first; the
        // list is reused from feed to feed.
        let mut parsed = std::mem::take(&mut self.parsed);
        parsed.extend(
            self.requests
                .frames()
                .map(|f| Command::parse(&f).map(Box::new)),
        );
        self.requests.consume();
        for c in parsed.drain(..) {
            match c {
                Some(c) => self.sent(c, out),
                None => self.counts.malformed += 1,
            }
        }
        self.parsed = parsed;
        if self.requests.lost {
            self.fall_out_of_step();
        }
    }

    /// Bytes the server sent (`missing` more were not captured), at `ts_ns`.
    pub fn server_bytes(&mut self, ts_ns: u64, data: &[u8], missing: u64, out: &mut Vec<Event>) {
        self.last_side = Some(Side::Reply);
        let (out_of_step, malformed) = (self.unsure, self.framer_malformed());
        self.replies.feed(data, ts_ns);
        self.replies.feed_gap(missing);
        if out_of_step {
            self.malformed_out_of_step += self.framer_malformed() - malformed;
        }
        // Frames borrow the framer: handle them one by one through an index.
        for i in 0..self.replies.frame_count() {
            // Only EXEC's reply needs its elements one by one.
            let exec_next = self
                .pending
                .front()
                .is_some_and(|p| p.command.effect == Effect::Exec);
            let reply = Answer::of(&self.replies.frame(i), exec_next);
            self.answered(reply, out);
        }
        self.replies.consume();
        if self.replies.lost {
            self.fall_out_of_step();
        }
    }

    /// The connection ended: commands still waiting are reported unanswered.
    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<Event>) {
        for p in self.pending.drain(..).chain(self.queued.drain(..)) {
            out.push(Event::Command(Completed {
                command: p.command,
                outcome: Outcome::Unanswered,
                finished_ns: ts_ns,
                transaction: p.tx,
                in_exec: false,
                timed_out: false,
            }));
        }
    }

    fn drop_pending(&mut self) {
        self.counts.unmatched += (self.pending.len() + self.queued.len()) as u64;
        self.pending.clear();
        self.queued.clear();
        self.queuing = None;
    }

    fn fall_out_of_step(&mut self) {
        self.drop_pending();
        self.unsure = true;
    }

    /// A command was sent: it waits for its reply, or ends now when none will come.
    fn sent(&mut self, command: Box<Command>, out: &mut Vec<Event>) {
        if self.unsure {
            self.counts.unmatched += 1;
            return;
        }
        let mut expects_reply = !self.reply_off && !self.skip_next;
        self.skip_next = false;
        let mut tx = self.queuing;
        let mut confirmations = 1;
        match command.effect {
            Effect::ReplyOff => {
                self.reply_off = true;
                expects_reply = false;
            }
            Effect::ReplyOn => {
                self.reply_off = false;
                expects_reply = true;
            }
            Effect::ReplySkip => {
                self.skip_next = !self.reply_off;
                expects_reply = false;
            }
            Effect::Reset => {
                self.reply_off = false;
                expects_reply = true;
                self.queuing = None;
                tx = None;
            }
            Effect::Multi if self.queuing.is_none() => {
                self.transactions += 1;
                self.queuing = Some(self.transactions);
                tx = self.queuing;
            }
            Effect::Exec | Effect::Discard => self.queuing = None,
            Effect::Subscription(k, n) => {
                // One confirmation per channel; an unsubscribe from all gets at least one.
                confirmations = n.max(1);
                let _ = k;
            }
            _ => {}
        }
        if !expects_reply {
            let finished_ns = command.started_ns;
            out.push(Event::Command(Completed {
                command,
                outcome: Outcome::NoReply,
                finished_ns,
                transaction: tx,
                in_exec: false,
                timed_out: false,
            }));
            return;
        }
        self.pending.push_back(Pending {
            command,
            tx,
            confirmations,
        });
    }

    /// A value from the server: a push, or the reply to the oldest command waiting.
    fn answered(&mut self, a: Answer, out: &mut Vec<Event>) {
        if let Some(kind) = self.push_kind(&a) {
            self.pushed(kind, a, out);
            return;
        }
        if self.unsure {
            // Not counted: out of step, a value may be a piece of a reply cut by the gap;
            // the commands that lose their replies are what `unmatched` counts.
            return;
        }
        let Some(p) = self.pending.pop_front() else {
            // The server answers what was never asked: we are out of step.
            self.counts.unmatched += 1;
            self.fall_out_of_step();
            return;
        };
        self.reply_to(p, a, out);
    }

    /// Whether value `a` is a push rather than a reply (None: a reply). Subscription
    /// confirmations are pushes in RESP3 and replies in RESP2; both go to the command that
    /// asked for them, see [`Connection::pushed`].
    fn push_kind(&self, a: &Answer) -> Option<PushKind> {
        // RESP2 pub/sub mode answers in arrays; in RESP3 every pub/sub value is a push.
        let pubsub_array = a.reply.kind == kind::ARRAY
            && ((self.subscribed && !self.resp3) || a.confirms.is_some());
        if a.reply.kind != kind::PUSH && !pubsub_array {
            if self.monitor && a.reply.kind == kind::SIMPLE && a.monitor_line {
                return Some(PushKind::Monitor);
            }
            return None;
        }
        let k = if a.confirms.is_some() {
            PushKind::Subscription
        } else if a.first_word == FirstWord::Message {
            PushKind::Message
        } else if a.first_word == FirstWord::Invalidate {
            PushKind::Invalidate
        } else if a.reply.kind == kind::PUSH {
            PushKind::Other
        } else {
            // An array in RESP2 pub/sub mode that is not a message: PING's ["pong", ""].
            return None;
        };
        Some(k)
    }

    fn pushed(&mut self, kind: PushKind, a: Answer, out: &mut Vec<Event>) {
        if let (PushKind::Subscription, Some((sub, count))) = (kind, a.confirms) {
            if sub == SubKind::Subscribe || sub == SubKind::PSubscribe || sub == SubKind::SSubscribe
            {
                self.subscribed = true;
            } else if count == 0 {
                self.subscribed = false;
            }
            let asked = self.pending.front().is_some_and(
                |p| matches!(p.command.effect, Effect::Subscription(k, _) if k == sub),
            );
            if asked && !self.unsure {
                let p = self.pending.front_mut().expect("checked");
                p.confirmations -= 1;
                if p.confirmations == 0 {
                    let p = self.pending.pop_front().expect("checked");
                    self.reply_to(p, a, out);
                }
                return;
            }
        }
        out.push(Event::Push(Push {
            kind,
            ts_ns: a.finished_ns,
            wire: a.reply.wire,
        }));
    }

    fn reply_to(&mut self, p: Pending, a: Answer, out: &mut Vec<Event>) {
        let ok = a.reply.error.is_none();
        match p.command.effect {
            Effect::Multi if p.tx.is_some() => {
                if ok {
                    self.tx_started = p.command.started_ns;
                }
            }
            Effect::Exec | Effect::Discard if p.tx.is_some() => {
                let tx = self.end_transaction(&p, &a, out);
                let finished_ns = a.finished_ns;
                out.push(Event::Command(Completed {
                    command: p.command,
                    outcome: Outcome::Reply(a.reply),
                    finished_ns,
                    transaction: p.tx,
                    in_exec: false,
                    timed_out: false,
                }));
                out.push(Event::Transaction(tx));
                return;
            }
            Effect::Hello(Some(v)) if ok => self.resp3 = v == 3,
            Effect::Monitor if ok => self.monitor = true,
            Effect::Reset if ok => {
                self.resp3 = false;
                self.subscribed = false;
                self.monitor = false;
                self.queued.clear();
            }
            _ => {}
        }
        if p.tx.is_some()
            && !matches!(
                p.command.effect,
                Effect::Multi | Effect::Exec | Effect::Discard
            )
        {
            // Queued: the reply is QUEUED, or an error that refuses the command now.
            if ok {
                self.queued.push(p);
                return;
            }
        }
        let timed_out = p.command.blocking && a.reply.null;
        out.push(Event::Command(Completed {
            command: p.command,
            outcome: Outcome::Reply(a.reply),
            finished_ns: a.finished_ns,
            transaction: p.tx,
            in_exec: false,
            timed_out,
        }));
    }

    /// EXEC or DISCARD answered: the queued commands end with EXEC's replies (or not at all);
    /// returns the transaction, which is reported after EXEC.
    fn end_transaction(&mut self, p: &Pending, a: &Answer, out: &mut Vec<Event>) -> Transaction {
        let queued = std::mem::take(&mut self.queued);
        let id = p.tx.unwrap_or(0);
        let outcome = match (&p.command.effect, &a.reply.error) {
            (Effect::Discard, _) => TxOutcome::Discarded,
            (_, Some(e)) => TxOutcome::Aborted(e.code.clone()),
            _ if a.reply.null => TxOutcome::WatchFailed,
            _ => TxOutcome::Executed,
        };
        let commands = queued.len() as u32;
        let mut replies = a.items.iter();
        for q in queued {
            let outcome = match outcome {
                TxOutcome::Executed => match replies.next() {
                    Some(r) => Outcome::Reply(r.clone()),
                    None => {
                        self.counts.unmatched += 1;
                        Outcome::Unanswered
                    }
                },
                TxOutcome::Discarded => Outcome::Discarded,
                _ => Outcome::Aborted,
            };
            let timed_out = q.command.blocking && matches!(&outcome, Outcome::Reply(r) if r.null);
            out.push(Event::Command(Completed {
                command: q.command,
                outcome,
                finished_ns: a.finished_ns,
                transaction: Some(id),
                in_exec: true,
                timed_out,
            }));
        }
        Transaction {
            id,
            started_ns: self.tx_started,
            finished_ns: a.finished_ns,
            commands,
            outcome,
        }
    }
}

/// What an aggregate's first element says about it (pub/sub and push kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FirstWord {
    /// message, pmessage, smessage.
    Message,
    Invalidate,
    Subscription(SubKind),
    Other,
}

impl FirstWord {
    fn of(word: &[u8]) -> FirstWord {
        let is = |w: &[u8]| word.eq_ignore_ascii_case(w);
        if is(b"message") || is(b"pmessage") || is(b"smessage") {
            FirstWord::Message
        } else if is(b"invalidate") {
            FirstWord::Invalidate
        } else {
            SubKind::from_word(word).map_or(FirstWord::Other, FirstWord::Subscription)
        }
    }
}

/// A reply value as the pairing needs it.
#[derive(Debug)]
struct Answer {
    reply: Reply,
    finished_ns: u64,
    first_word: FirstWord,
    /// A subscription confirmation: which, and the subscription count it reports.
    confirms: Option<(SubKind, i64)>,
    /// A simple string that begins like a MONITOR line (a timestamp).
    monitor_line: bool,
    /// The direct elements, when asked for (EXEC's replies).
    items: Vec<Reply>,
}

impl Answer {
    fn of(f: &Frame<'_>, with_items: bool) -> Answer {
        let Some(top) = f.top() else {
            return Answer {
                reply: Reply {
                    kind: kind::NULL,
                    wire: f.wire,
                    len: 0,
                    null: true,
                    error: None,
                },
                finished_ns: f.finished_ns,
                first_word: FirstWord::Other,
                confirms: None,
                monitor_line: false,
                items: vec![],
            };
        };
        let v = f.element(top);
        let mut reply = reply_of(&v);
        reply.wire = f.wire;
        let mut first_word = FirstWord::Other;
        let mut confirms = None;
        let mut items = vec![];
        if matches!(v.kind, kind::ARRAY | kind::PUSH | kind::SET) {
            let mut children = f.children(top);
            if let Some(first) = children.next() {
                let e = f.element(first);
                if kind::is_blob(e.kind) || e.kind == kind::SIMPLE {
                    first_word = FirstWord::of(e.data);
                }
            }
            if let FirstWord::Subscription(k) = first_word {
                // [kind, channel, count]
                let rest: Option<usize> = match (children.next(), children.next(), children.next())
                {
                    (Some(_), Some(count), None) => Some(count),
                    _ => None,
                };
                if let Some(count) = rest.map(|i| f.element(i))
                    && count.kind == kind::INTEGER
                    && let Some(n) = std::str::from_utf8(count.data)
                        .ok()
                        .and_then(|s| s.parse().ok())
                {
                    confirms = Some((k, n));
                }
            }
            if v.kind == kind::ARRAY && with_items {
                items = f.children(top).map(|i| reply_of(&f.element(i))).collect();
            }
        }
        let monitor_line = v.kind == kind::SIMPLE && v.data.first().is_some_and(u8::is_ascii_digit);
        Answer {
            reply,
            finished_ns: f.finished_ns,
            first_word,
            confirms,
            monitor_line,
            items,
        }
    }
}

fn reply_of(e: &crate::frame::Element<'_>) -> Reply {
    Reply {
        kind: e.kind,
        wire: e.wire,
        len: e.len,
        null: e.is_null(),
        error: kind::is_error(e.kind).then(|| Box::new(error_of(e.data))),
    }
}

/// An error's code and message: Redis errors begin with an upper-case code (`WRONGTYPE`,
/// `MOVED`, ...); one that does not is an `ERR`.
pub fn error_of(text: &[u8]) -> ErrorReply {
    let text = String::from_utf8_lossy(text);
    let (word, rest) = text.split_once(' ').unwrap_or((&text, ""));
    let is_code = !word.is_empty()
        && word
            .bytes()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
        && word.as_bytes()[0].is_ascii_uppercase();
    if is_code {
        ErrorReply {
            code: word.to_string(),
            message: rest.to_string(),
        }
    } else {
        ErrorReply {
            code: "ERR".into(),
            message: text.into_owned(),
        }
    }
}
