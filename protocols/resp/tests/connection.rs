//! A connection's traffic as redis-cli, redis-benchmark and client libraries send it, and as
//! redis-server answers (byte strings written after Redis' own replies), fed in the chunks a
//! tracer sees: every command paired with its own reply, transactions, pub/sub, RESP3,
//! CLIENT REPLY, big values past the capture limit, secrets, connections joined midway.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use pgbpf_resp::{Completed, Connection, Event, Outcome, PushKind, TxOutcome, conn::ErrorReply};

/// A RESP command as clients send it.
fn cmd(words: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        v.extend(format!("${}\r\n{w}\r\n", w.len()).bytes());
    }
    v
}

struct Run {
    c: Connection,
    events: Vec<Event>,
    ts: u64,
}

impl Run {
    fn new() -> Run {
        Run {
            c: Connection::new(true),
            events: vec![],
            ts: 0,
        }
    }
    fn midway() -> Run {
        Run {
            c: Connection::new(false),
            ..Run::new()
        }
    }
    fn client(&mut self, b: &[u8]) -> &mut Run {
        self.client_cut(b, 0)
    }
    fn client_cut(&mut self, b: &[u8], missing: u64) -> &mut Run {
        self.ts += 10;
        self.c.client_bytes(self.ts, b, missing, &mut self.events);
        self
    }
    fn server(&mut self, b: &[u8]) -> &mut Run {
        self.server_cut(b, 0)
    }
    fn server_cut(&mut self, b: &[u8], missing: u64) -> &mut Run {
        self.ts += 10;
        self.c.server_bytes(self.ts, b, missing, &mut self.events);
        self
    }
    fn commands(&self) -> Vec<&Completed> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Command(c) => Some(c),
                _ => None,
            })
            .collect()
    }
    fn names(&self) -> Vec<String> {
        self.commands()
            .iter()
            .map(|c| c.command.name().to_string())
            .collect()
    }
    fn pushes(&self, kind: PushKind) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Push(p) if p.kind == kind))
            .count()
    }
}

fn reply_kind(c: &Completed) -> u8 {
    match &c.outcome {
        Outcome::Reply(r) => r.kind,
        other => panic!("no reply: {other:?}"),
    }
}

fn error(c: &Completed) -> &ErrorReply {
    c.error().unwrap_or_else(|| panic!("not an error: {c:?}"))
}

#[test]
fn pipelined_commands_pair_with_replies_split_anywhere() {
    let mut r = Run::new();
    let mut batch = cmd(&["SET", "k", "v"]);
    batch.extend(cmd(&["GET", "k"]));
    batch.extend(cmd(&["INCR", "n"]));
    batch.extend(cmd(&["GET", "missing"]));
    r.client(&batch);
    let replies = b"+OK\r\n$1\r\nv\r\n:1\r\n$-1\r\n";
    // Every split point of the replies.
    for cut in 0..replies.len() {
        let mut r2 = Run::new();
        r2.client(&batch);
        r2.server(&replies[..cut]).server(&replies[cut..]);
        assert_eq!(r2.names(), ["SET", "GET", "INCR", "GET"], "cut at {cut}");
        let kinds: Vec<u8> = r2.commands().iter().map(|c| reply_kind(c)).collect();
        assert_eq!(kinds, b"+$:$", "cut at {cut}");
        assert_eq!(r2.c.counts().unmatched, 0);
    }
    r.server(replies);
    let c = r.commands();
    assert_eq!(c[1].command.key().unwrap().data, b"k");
    assert!(matches!(&c[3].outcome, Outcome::Reply(rep) if rep.null));
    assert_eq!(c[0].finished_ns, 20);
    assert_eq!(c[0].command.started_ns, 10);
}

#[test]
fn inline_commands_from_telnet() {
    let mut r = Run::new();
    r.client(b"PING\r\n").server(b"+PONG\r\n");
    r.client(b"set \"a b\" 'c d'\n").server(b"+OK\r\n");
    r.client(b"\r\n")
        .client(b"get \"a b\"\r\n")
        .server(b"$3\r\nc d\r\n");
    assert_eq!(r.names(), ["PING", "SET", "GET"]);
    let set = r.commands()[1];
    assert!(set.command.inline);
    assert_eq!(set.command.arg(0).unwrap().data, b"a b");
    assert_eq!(set.command.arg(1).unwrap().data, b"c d");
}

#[test]
fn resp3_values_of_every_type() {
    let mut r = Run::new();
    r.client(&cmd(&["HELLO", "3"]));
    r.server(b"%2\r\n+server\r\n+redis\r\n+proto\r\n:3\r\n");
    assert!(r.c.resp3);
    let replies: &[&[u8]] = &[
        b"_\r\n",
        b"#t\r\n",
        b",3.14\r\n",
        b"(3492890328409238509324850943850943825024385\r\n",
        b"!21\r\nSYNTAX invalid syntax\r\n",
        b"=15\r\ntxt:Some string\r\n",
        b"~2\r\n+a\r\n:1\r\n",
        b"%1\r\n$1\r\nk\r\n*2\r\n:1\r\n:2\r\n",
        b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2039123\r\n:9543892\r\n",
        b"$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n",
        b"*?\r\n:1\r\n:2\r\n:3\r\n.\r\n",
        b"*-1\r\n",
    ];
    for _ in replies {
        r.client(&cmd(&["X"]));
    }
    // A push in between is not a reply.
    r.server(b">3\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n_\r\n");
    for rep in replies {
        r.server(rep);
    }
    let c = r.commands();
    assert_eq!(c.len(), 1 + replies.len());
    let kinds: Vec<u8> = c[1..].iter().map(|c| reply_kind(c)).collect();
    assert_eq!(kinds, b"_#,(!=~%*$**");
    assert_eq!(error(c[5]).code, "SYNTAX");
    let Outcome::Reply(streamed) = &c[10].outcome else {
        panic!()
    };
    assert_eq!(
        streamed.len, 10,
        "a streamed string's length is its chunks'"
    );
    let Outcome::Reply(agg) = &c[11].outcome else {
        panic!()
    };
    assert_eq!(agg.len, 3);
    assert_eq!(r.pushes(PushKind::Invalidate), 1);
    assert_eq!(r.c.counts().unmatched, 0);
    assert_eq!(r.c.counts().malformed, 0);
}

#[test]
fn errors_are_classified_by_their_code() {
    let mut r = Run::new();
    for _ in 0..4 {
        r.client(&cmd(&["GET", "l"]));
    }
    r.server(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
    r.server(b"-OOM command not allowed when used memory > 'maxmemory'.\r\n");
    r.server(b"-MOVED 3999 127.0.0.1:6381\r\n");
    r.server(b"-unknown command 'FOO'\r\n");
    let codes: Vec<&str> = r
        .commands()
        .iter()
        .map(|c| error(c).code.as_str())
        .collect();
    assert_eq!(codes, ["WRONGTYPE", "OOM", "MOVED", "ERR"]);
    assert_eq!(error(r.commands()[2]).message, "3999 127.0.0.1:6381");
}

#[test]
fn a_transaction_and_each_command_in_it() {
    let mut r = Run::new();
    r.client(&cmd(&["MULTI"])).server(b"+OK\r\n");
    r.client(&cmd(&["SET", "a", "1"])).server(b"+QUEUED\r\n");
    r.client(&cmd(&["INCR", "a"])).server(b"+QUEUED\r\n");
    r.client(&cmd(&["LPUSH", "a", "x"])).server(b"+QUEUED\r\n");
    r.client(&cmd(&["EXEC"]));
    r.server(b"*3\r\n+OK\r\n:2\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
    assert_eq!(r.names(), ["MULTI", "SET", "INCR", "LPUSH", "EXEC"]);
    let c = r.commands();
    assert!(
        c[1..4]
            .iter()
            .all(|c| c.in_exec && c.transaction == Some(1))
    );
    assert_eq!(reply_kind(c[2]), b':');
    assert_eq!(error(c[3]).code, "WRONGTYPE");
    let tx: Vec<_> = r
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Transaction(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(tx.len(), 1);
    assert_eq!((tx[0].commands, &tx[0].outcome), (3, &TxOutcome::Executed));
    assert_eq!((tx[0].started_ns, tx[0].finished_ns), (10, 100));
}

#[test]
fn pipelined_transactions_aborts_and_discards() {
    // A client library's pipeline: MULTI, commands and EXEC in one write.
    let mut r = Run::new();
    let mut w = cmd(&["MULTI"]);
    w.extend(cmd(&["SET", "a", "1"]));
    w.extend(cmd(&["NOSUCH"]));
    w.extend(cmd(&["EXEC"]));
    r.client(&w);
    r.server(b"+OK\r\n+QUEUED\r\n-ERR unknown command 'NOSUCH'\r\n-EXECABORT Transaction discarded because of previous errors.\r\n");
    let c = r.commands();
    assert_eq!(r.names(), ["MULTI", "NOSUCH", "SET", "EXEC"]);
    assert_eq!(error(c[1]).code, "ERR");
    assert_eq!(c[2].outcome, Outcome::Aborted);
    assert_eq!(error(c[3]).code, "EXECABORT");
    // WATCH failed: EXEC answers null.
    let mut r = Run::new();
    r.client(&cmd(&["MULTI"]))
        .client(&cmd(&["INCR", "w"]))
        .client(&cmd(&["EXEC"]));
    r.server(b"+OK\r\n+QUEUED\r\n*-1\r\n");
    assert_eq!(r.commands()[1].outcome, Outcome::Aborted);
    assert!(
        r.events
            .iter()
            .any(|e| matches!(e, Event::Transaction(t) if t.outcome == TxOutcome::WatchFailed))
    );
    // DISCARD.
    let mut r = Run::new();
    r.client(&cmd(&["MULTI"]))
        .client(&cmd(&["INCR", "d"]))
        .client(&cmd(&["DISCARD"]));
    r.server(b"+OK\r\n+QUEUED\r\n+OK\r\n");
    assert_eq!(r.commands()[1].outcome, Outcome::Discarded);
    assert_eq!(r.names(), ["MULTI", "INCR", "DISCARD"]);
}

#[test]
fn client_reply_off_and_skip_expect_no_reply() {
    let mut r = Run::new();
    r.client(&cmd(&["CLIENT", "REPLY", "OFF"]));
    r.client(&cmd(&["SET", "a", "1"]))
        .client(&cmd(&["SET", "b", "2"]));
    r.client(&cmd(&["CLIENT", "REPLY", "ON"]))
        .server(b"+OK\r\n");
    r.client(&cmd(&["CLIENT", "REPLY", "SKIP"]));
    r.client(&cmd(&["SET", "c", "3"]));
    r.client(&cmd(&["GET", "c"])).server(b"$1\r\n3\r\n");
    let outcomes: Vec<bool> = r
        .commands()
        .iter()
        .map(|c| c.outcome == Outcome::NoReply)
        .collect();
    assert_eq!(
        r.names(),
        [
            "CLIENT REPLY",
            "SET",
            "SET",
            "CLIENT REPLY",
            "CLIENT REPLY",
            "SET",
            "GET"
        ]
    );
    assert_eq!(outcomes, [true, true, true, false, true, true, false]);
    assert_eq!(reply_kind(r.commands()[6]), b'$');
    assert_eq!(r.commands()[0].command.stats_name(), "client|reply");
}

#[test]
fn resp2_pubsub_messages_are_pushes_not_replies() {
    let mut r = Run::new();
    r.client(&cmd(&["SUBSCRIBE", "news", "sport"]));
    r.server(b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    r.server(b"*3\r\n$9\r\nsubscribe\r\n$5\r\nsport\r\n:2\r\n*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n");
    for _ in 0..5 {
        r.server(b"*3\r\n$7\r\nmessage\r\n$5\r\nsport\r\n$3\r\ngol\r\n");
    }
    r.client(&cmd(&["PING"]))
        .server(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    r.client(&cmd(&["UNSUBSCRIBE"]));
    r.server(b"*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$5\r\nsport\r\n:0\r\n");
    r.client(&cmd(&["GET", "x"])).server(b"$-1\r\n");
    assert_eq!(r.names(), ["SUBSCRIBE", "PING", "UNSUBSCRIBE", "GET"]);
    assert_eq!(r.pushes(PushKind::Message), 6);
    assert_eq!(
        r.pushes(PushKind::Subscription),
        1,
        "the second unsubscribe confirmation"
    );
    assert_eq!(r.c.counts().unmatched, 0);
}

#[test]
fn resp3_pushes_arrive_between_replies() {
    let mut r = Run::new();
    r.client(&cmd(&["HELLO", "3"]))
        .server(b"%1\r\n+proto\r\n:3\r\n");
    r.client(&cmd(&["SUBSCRIBE", "c"]));
    r.server(b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n");
    r.client(&cmd(&["GET", "k"]));
    r.server(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n$1\r\nv\r\n");
    assert_eq!(r.names(), ["HELLO", "SUBSCRIBE", "GET"]);
    assert_eq!(r.pushes(PushKind::Message), 1);
}

#[test]
fn monitor_lines_are_pushes() {
    let mut r = Run::new();
    r.client(&cmd(&["MONITOR"])).server(b"+OK\r\n");
    r.server(b"+1700000000.123456 [0 127.0.0.1:5000] \"GET\" \"k\"\r\n+1700000000.2 [0 127.0.0.1:5000] \"PING\"\r\n");
    assert_eq!(r.pushes(PushKind::Monitor), 2);
    assert_eq!(r.c.counts().unmatched, 0);
}

#[test]
fn blocking_commands_that_time_out() {
    let mut r = Run::new();
    r.client(&cmd(&["BLPOP", "q", "1"])).server(b"*-1\r\n");
    r.client(&cmd(&["BLPOP", "q", "1"]))
        .server(b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n");
    let c = r.commands();
    assert!(c[0].command.blocking && c[0].timed_out);
    assert!(!c[1].timed_out);
    assert_eq!(c[0].command.key().unwrap().data, b"q");
}

#[test]
fn a_value_bigger_than_the_capture_keeps_the_framing() {
    let value = vec![b'x'; 1 << 20];
    let set = cmd(&["SET", "big", std::str::from_utf8(&value).unwrap()]);
    let mut r = Run::new();
    // The tracer kept the first 8 KiB of the write.
    r.client_cut(&set[..8192], (set.len() - 8192) as u64);
    r.server(b"+OK\r\n");
    r.client(&cmd(&["GET", "big"]));
    let mut reply = format!("${}\r\n", value.len()).into_bytes();
    reply.extend(&value);
    reply.extend(b"\r\n");
    // Written in 64 KiB pieces, each captured up to 8 KiB.
    for piece in reply.chunks(65536) {
        let kept = piece.len().min(8192);
        r.server_cut(&piece[..kept], (piece.len() - kept) as u64);
    }
    r.client(&cmd(&["PING"])).server(b"+PONG\r\n");
    assert_eq!(r.names(), ["SET", "GET", "PING"]);
    let c = r.commands();
    let big = &c[0].command.arg(1).unwrap();
    assert!(big.truncated);
    assert_eq!(big.len, 1 << 20);
    let Outcome::Reply(got) = &c[1].outcome else {
        panic!()
    };
    assert_eq!(got.len, 1 << 20);
    assert_eq!(got.wire, reply.len() as u64);
    assert_eq!(r.c.counts().unmatched, 0);
}

#[test]
fn passwords_are_never_kept_and_their_bytes_are_located() {
    let mut r = Run::new();
    let auth = cmd(&["AUTH", "s3cret-pass"]);
    r.client(&auth);
    let (from, to) = r.c.secrets()[0];
    assert_eq!(&auth[from..to], b"s3cret-pass");
    r.server(b"+OK\r\n");
    let hello = cmd(&["HELLO", "3", "AUTH", "default", "hunter2", "SETNAME", "app"]);
    r.client(&hello);
    let spans: Vec<&[u8]> = r.c.secrets().iter().map(|&(a, b)| &hello[a..b]).collect();
    assert_eq!(spans, [&b"default"[..], b"hunter2"]);
    r.server(b"%1\r\n+proto\r\n:3\r\n");
    r.client(&cmd(&[
        "CONFIG",
        "SET",
        "requirepass",
        "newpw",
        "maxmemory",
        "1mb",
    ]));
    r.server(b"+OK\r\n");
    r.client(b"AUTH inline-pw\r\n");
    assert_eq!(r.c.secrets(), &[(4, 14)]);
    r.server(b"+OK\r\n");
    let text = format!("{:?}", r.events);
    for secret in ["s3cret", "hunter2", "newpw", "inline-pw", "default"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let config = r.commands()[2];
    assert_eq!(config.command.name(), "CONFIG SET");
    assert!(config.command.arg(1).unwrap().secret && !config.command.arg(3).unwrap().secret);
    assert_eq!(config.command.arg(3).unwrap().data, b"1mb");
}

#[test]
fn joined_midway_it_waits_for_an_idle_point_and_invents_nothing() {
    let mut r = Run::midway();
    // The tail of a value, then a reply to a command sent before the trace began.
    r.client(b"lue\r\n");
    r.server(b"+OK\r\n");
    // Idle point: the client sends after the server wrote.
    r.client(&cmd(&["GET", "a"])).server(b"$1\r\n1\r\n");
    assert_eq!(r.names(), ["GET"]);
    // A gap after the first of two replies: the second command goes unanswered, counted,
    // and nothing pairs until the next idle point.
    let before = r.c.counts().unmatched;
    let mut two = cmd(&["INCR", "a"]);
    two.extend(cmd(&["INCR", "b"]));
    r.client(&two);
    r.server_cut(b":2\r\n", 4);
    r.client(&cmd(&["GET", "a"])).server(b"$1\r\n2\r\n");
    assert_eq!(r.names(), ["GET", "INCR", "GET"]);
    assert_eq!(
        r.c.counts().unmatched - before,
        1,
        "INCR b, whose reply went missing"
    );
}

#[test]
fn garbage_in_every_chunking_never_panics() {
    let streams: &[&[u8]] = &[
        b"*3\r\n$3\r\nSET\r\n$-5\r\nx\r\n",
        b"*99999999999999999999\r\n",
        b"$10\r\nshort\r\n+OK\r\n",
        b"%2\r\n+a\r\n",
        b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n",
        b"\"unbalanced\r\n",
        b";3\r\nabc\r\n.\r\n",
    ];
    for s in streams {
        for cut in 0..s.len() {
            let mut r = Run::new();
            r.client(&s[..cut]).client_cut(&s[cut..], 3);
            r.server(&s[..cut]).server_cut(&s[cut..], 2);
            r.client(&cmd(&["PING"])).server(b"+PONG\r\n");
        }
    }
}

mod pipelines {
    use super::*;
    use proptest::prelude::*;

    fn command() -> impl Strategy<Value = Vec<String>> {
        (
            prop::sample::select(vec!["GET", "SET", "INCR", "LPUSH", "HSET", "DEL", "PING"]),
            prop::collection::vec("[a-z0-9:]{0,12}", 0..4),
        )
            .prop_map(|(name, args)| std::iter::once(name.to_string()).chain(args).collect())
    }

    fn reply() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"+OK\r\n".to_vec()),
            any::<i32>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
            "[ -~]{0,300}".prop_map(|s| format!("${}\r\n{s}\r\n", s.len()).into_bytes()),
            Just(b"$-1\r\n".to_vec()),
            Just(b"-ERR wrong number of arguments\r\n".to_vec()),
        ]
    }

    fn pieces(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        points.push(bytes.len());
        let mut at = 0;
        points
            .into_iter()
            .map(|p| {
                let piece = bytes[at..p.max(at)].to_vec();
                at = p.max(at);
                piece
            })
            .collect()
    }

    proptest! {
        /// N commands in a few writes, their replies in reads cut anywhere: every reply
        /// paired with its own command, in order.
        #[test]
        fn every_reply_pairs_with_its_own_command(
            pairs in prop::collection::vec((command(), reply()), 1..40),
            client_cuts in prop::collection::vec(any::<usize>(), 0..5),
            server_cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let requests: Vec<u8> = pairs
                .iter()
                .flat_map(|(c, _)| cmd(&c.iter().map(String::as_str).collect::<Vec<_>>()))
                .collect();
            let replies: Vec<u8> = pairs.iter().flat_map(|(_, r)| r.clone()).collect();
            let mut r = Run::new();
            for p in pieces(&requests, &client_cuts) {
                r.client(&p);
            }
            for p in pieces(&replies, &server_cuts) {
                r.server(&p);
            }
            let want: Vec<String> = pairs.iter().map(|(c, _)| c[0].clone()).collect();
            prop_assert_eq!(r.names(), want);
            let wires: Vec<u64> = r.commands().iter().map(|c| match &c.outcome {
                Outcome::Reply(rep) => rep.wire,
                _ => 0,
            }).collect();
            let sizes: Vec<u64> = pairs.iter().map(|(_, rep)| rep.len() as u64).collect();
            prop_assert_eq!(wires, sizes);
            prop_assert_eq!(r.c.counts(), Default::default());
        }
    }
}
