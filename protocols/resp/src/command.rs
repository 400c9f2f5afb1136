//! Commands: a request value → its name (with the subcommand of container commands), key and
//! arguments, and what it does to the connection (reply mode, protocol version, transactions,
//! pub/sub, MONITOR, blocking). Secrets (AUTH, HELLO ... AUTH, MIGRATE ... AUTH, CONFIG SET
//! requirepass, ACL SETUSER rules) are recognized here, before their bytes are kept.

use smallvec::SmallVec;

use crate::frame::{Frame, kind};

/// Commands whose first argument is a subcommand, counted apart by Redis (`config|get` in
/// INFO commandstats). Upper case, as every name test below: a `match` on the name compiles
/// to a switch on its length and a few compares, where a list walk showed in profiles.
fn is_container(name: &str) -> bool {
    matches!(
        name,
        "ACL"
            | "CLIENT"
            | "CLUSTER"
            | "COMMAND"
            | "CONFIG"
            | "FUNCTION"
            | "LATENCY"
            | "MEMORY"
            | "MODULE"
            | "OBJECT"
            | "PUBSUB"
            | "SCRIPT"
            | "SLOWLOG"
            | "XGROUP"
            | "XINFO"
    )
}

/// Commands without a key (channels, patterns and scripts are not keys).
fn is_keyless(name: &str) -> bool {
    matches!(
        name,
        "ACL"
            | "AUTH"
            | "BGREWRITEAOF"
            | "BGSAVE"
            | "CLIENT"
            | "CLUSTER"
            | "COMMAND"
            | "CONFIG"
            | "DBSIZE"
            | "DEBUG"
            | "DISCARD"
            | "ECHO"
            | "EXEC"
            | "FAILOVER"
            | "FLUSHALL"
            | "FLUSHDB"
            | "FUNCTION"
            | "HELLO"
            | "INFO"
            | "KEYS"
            | "LASTSAVE"
            | "LATENCY"
            | "LOLWUT"
            | "MODULE"
            | "MONITOR"
            | "MULTI"
            | "PING"
            | "PSUBSCRIBE"
            | "PUBLISH"
            | "PUBSUB"
            | "PUNSUBSCRIBE"
            | "QUIT"
            | "RANDOMKEY"
            | "READONLY"
            | "READWRITE"
            | "REPLICAOF"
            | "RESET"
            | "ROLE"
            | "SAVE"
            | "SCAN"
            | "SCRIPT"
            | "SELECT"
            | "SHUTDOWN"
            | "SLAVEOF"
            | "SLOWLOG"
            | "SPUBLISH"
            | "SSUBSCRIBE"
            | "SUBSCRIBE"
            | "SUNSUBSCRIBE"
            | "SWAPDB"
            | "SYNC"
            | "PSYNC"
            | "TIME"
            | "UNSUBSCRIBE"
            | "UNWATCH"
            | "WAIT"
            | "WAITAOF"
    )
}

/// Commands that may block until data arrives or a timeout passes.
fn is_blocking(name: &str) -> bool {
    matches!(
        name,
        "BLMOVE"
            | "BLMPOP"
            | "BLPOP"
            | "BRPOP"
            | "BRPOPLPUSH"
            | "BZMPOP"
            | "BZPOPMAX"
            | "BZPOPMIN"
            | "WAIT"
            | "WAITAOF"
    )
}

/// An argument as kept, borrowed from its [`Command`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Arg<'a> {
    /// The first bytes (none for a secret).
    pub data: &'a [u8],
    /// Its length on the wire.
    pub len: u64,
    /// Not captured or not kept whole.
    pub truncated: bool,
    /// A password or other secret: never kept.
    pub secret: bool,
}

/// Where an argument's kept bytes are in its command's buffer, and what [`Arg`] tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
    len: u64,
    truncated: bool,
    secret: bool,
}

/// Which subscription command, for pairing its confirmations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubKind {
    Subscribe,
    PSubscribe,
    SSubscribe,
    Unsubscribe,
    PUnsubscribe,
    SUnsubscribe,
}

impl SubKind {
    /// The word a confirmation starts with.
    pub fn word(self) -> &'static [u8] {
        match self {
            SubKind::Subscribe => b"subscribe",
            SubKind::PSubscribe => b"psubscribe",
            SubKind::SSubscribe => b"ssubscribe",
            SubKind::Unsubscribe => b"unsubscribe",
            SubKind::PUnsubscribe => b"punsubscribe",
            SubKind::SUnsubscribe => b"sunsubscribe",
        }
    }

    pub fn from_word(w: &[u8]) -> Option<SubKind> {
        [
            SubKind::Subscribe,
            SubKind::PSubscribe,
            SubKind::SSubscribe,
            SubKind::Unsubscribe,
            SubKind::PUnsubscribe,
            SubKind::SUnsubscribe,
        ]
        .into_iter()
        .find(|k| k.word().eq_ignore_ascii_case(w))
    }
}

/// What a command does to its connection's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// CLIENT REPLY OFF / SKIP / ON.
    ReplyOff,
    ReplySkip,
    ReplyOn,
    /// HELLO with a protocol version (None: HELLO without one).
    Hello(Option<u8>),
    Multi,
    Exec,
    Discard,
    /// (UN)SUBSCRIBE and friends with this many channels (0: "all", for the unsubscribes).
    Subscription(SubKind, u32),
    Monitor,
    Reset,
}

/// One command as sent.
///
/// Its name and the kept bytes of its arguments share one buffer, inline up to a size that
/// holds a typical GET or SET with its key: a command costs no allocation of its own unless
/// its arguments are long (the decoder handles hundreds of thousands a second).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The name (`bytes[..name_len]`, valid UTF-8), then the kept argument bytes.
    bytes: SmallVec<[u8; 56]>,
    name_len: u32,
    args: SmallVec<[Span; 3]>,
    /// Which argument is the key.
    pub key: Option<usize>,
    pub effect: Effect,
    /// May wait for data (BLPOP, ...; XREAD and XREADGROUP with BLOCK).
    pub blocking: bool,
    /// Sent inline (`PING\r\n`).
    pub inline: bool,
    /// Bytes on the wire.
    pub wire: u64,
    /// When its first byte was read or written.
    pub started_ns: u64,
}

impl Command {
    /// Upper case, with the subcommand of container commands: `GET`, `CONFIG GET`.
    pub fn name(&self) -> &str {
        // Built from a str (see `parse`); the fallback is never taken.
        std::str::from_utf8(&self.bytes[..self.name_len as usize]).unwrap_or("?")
    }

    /// The arguments after the name (and subcommand).
    pub fn args(&self) -> impl ExactSizeIterator<Item = Arg<'_>> + '_ {
        self.args.iter().map(|s| self.arg_of(s))
    }

    pub fn arg(&self, i: usize) -> Option<Arg<'_>> {
        self.args.get(i).map(|s| self.arg_of(s))
    }

    pub fn arg_count(&self) -> usize {
        self.args.len()
    }

    fn arg_of(&self, s: &Span) -> Arg<'_> {
        Arg {
            data: &self.bytes[s.start as usize..s.end as usize],
            len: s.len,
            truncated: s.truncated,
            secret: s.secret,
        }
    }

    /// The key, if the command has one.
    pub fn key(&self) -> Option<Arg<'_>> {
        self.key.and_then(|i| self.arg(i))
    }

    /// Some argument was not captured or not kept whole.
    pub fn truncated(&self) -> bool {
        self.args.iter().any(|a| a.truncated)
    }

    /// The name as INFO commandstats spells it: `get`, `config|get`.
    pub fn stats_name(&self) -> String {
        self.name().to_ascii_lowercase().replacen(' ', "|", 1)
    }

    /// Parses a request value; None when it is not an array of strings (then it is not a
    /// command Redis would run either).
    pub fn parse(frame: &Frame<'_>) -> Option<Command> {
        let top = frame.top()?;
        let array = frame.element(top);
        if array.kind != kind::ARRAY || array.len <= 0 {
            return None;
        }
        let mut words = frame.children(top).map(|i| frame.element(i)).peekable();
        let first = words.next()?;
        if !kind::is_blob(first.kind) && first.kind != kind::SIMPLE {
            return None;
        }
        let mut bytes = SmallVec::<[u8; 56]>::new();
        push_upper(&mut bytes, first.data);
        let container = std::str::from_utf8(&bytes).is_ok_and(is_container);
        if container && let Some(sub) = words.next_if(|e| e.kind != SECRET) {
            bytes.push(b' ');
            push_upper(&mut bytes, sub.data);
        }
        let name_len = bytes.len() as u32;
        let mut args = SmallVec::<[Span; 3]>::new();
        for e in words {
            let secret = e.kind == SECRET;
            let start = bytes.len() as u32;
            if !secret {
                bytes.extend_from_slice(e.data);
            }
            args.push(Span {
                start,
                end: bytes.len() as u32,
                len: e.len.max(0) as u64,
                truncated: e.truncated,
                secret,
            });
        }
        let mut c = Command {
            bytes,
            name_len,
            args,
            key: None,
            effect: Effect::None,
            blocking: false,
            inline: frame.inline,
            wire: frame.wire,
            started_ns: frame.started_ns,
        };
        let name = c.name();
        let key = key_of(name, &c);
        let effect = effect_of(name, &c);
        let blocking = is_blocking(name)
            || (matches!(name, "XREAD" | "XREADGROUP")
                && c.args().any(|a| a.data.eq_ignore_ascii_case(b"BLOCK")));
        (c.key, c.effect, c.blocking) = (key, effect, blocking);
        Some(c)
    }
}

/// Appends `word` upper-cased as UTF-8 (invalid bytes become U+FFFD, as in a lossy
/// conversion); ASCII, the case of every real command name, without going through a String.
fn push_upper(out: &mut SmallVec<[u8; 56]>, word: &[u8]) {
    if word.is_ascii() {
        out.extend(word.iter().map(u8::to_ascii_uppercase));
    } else {
        let text = String::from_utf8_lossy(word).to_uppercase();
        out.extend_from_slice(text.as_bytes());
    }
}

/// The kind the framer gives an argument it did not keep because it is a secret.
pub const SECRET: u8 = 0;

/// Whether argument `index` (0: the first after the command name, subcommand included) of
/// command `name` (as sent: any case, no subcommand joined) is a secret, knowing the
/// arguments before it.
pub fn is_secret_arg(name: &[u8], before: &[&[u8]], index: usize) -> bool {
    let is = |word: &str| name.eq_ignore_ascii_case(word.as_bytes());
    let sub = |word: &str| {
        before
            .first()
            .is_some_and(|b| b.eq_ignore_ascii_case(word.as_bytes()))
    };
    let follows = |word: &[u8], n: usize| {
        (1..=n).any(|back| index >= back && before[index - back].eq_ignore_ascii_case(word))
    };
    if is("AUTH") {
        true
    } else if is("HELLO") {
        // HELLO protover AUTH username password [SETNAME name]
        follows(b"AUTH", 2)
    } else if is("MIGRATE") {
        // MIGRATE host port key db timeout [COPY] [REPLACE] [AUTH pw | AUTH2 user pw] [KEYS..]
        follows(b"AUTH", 1) || follows(b"AUTH2", 2)
    } else if is("CONFIG") && sub("SET") {
        // CONFIG SET parameter value [parameter value ...]: counted from the subcommand, the
        // values are at even indexes.
        index >= 2
            && index.is_multiple_of(2)
            && [
                &b"requirepass"[..],
                b"masterauth",
                b"masteruser",
                b"tls-key-file-pass",
                b"tls-client-key-file-pass",
            ]
            .iter()
            .any(|p| before[index - 1].eq_ignore_ascii_case(p))
    } else if is("ACL") && sub("SETUSER") {
        // ACL SETUSER username rules...: passwords (>pw, <pw, #hash, !hash) are rules; every
        // rule is hidden rather than told apart before its first byte is seen.
        index >= 2
    } else {
        false
    }
}

/// Whether a command of this name (any case) can have secret arguments at all: the framer
/// asks before it looks at the arguments.
pub fn may_hold_secrets(name: &[u8]) -> bool {
    ["AUTH", "HELLO", "MIGRATE", "CONFIG", "ACL"]
        .iter()
        .any(|w| name.eq_ignore_ascii_case(w.as_bytes()))
}

fn key_of(name: &str, c: &Command) -> Option<usize> {
    let first_word = name.split(' ').next().unwrap_or(name);
    let n_args = c.arg_count();
    let numkeys_at = |i: usize| {
        let n: u64 = std::str::from_utf8(c.arg(i)?.data).ok()?.parse().ok()?;
        (n > 0 && n_args > i + 1).then_some(i + 1)
    };
    let found = match name {
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => numkeys_at(1),
        "ZUNION" | "ZINTER" | "ZDIFF" | "SINTERCARD" | "ZINTERCARD" | "LMPOP" | "ZMPOP" => {
            numkeys_at(0)
        }
        "BLMPOP" | "BZMPOP" => numkeys_at(1),
        "BITOP" => Some(1),
        "MIGRATE" => Some(2),
        "XREAD" | "XREADGROUP" => c
            .args()
            .position(|a| a.data.eq_ignore_ascii_case(b"STREAMS"))
            .map(|i| i + 1),
        "OBJECT ENCODING" | "OBJECT FREQ" | "OBJECT IDLETIME" | "OBJECT REFCOUNT"
        | "MEMORY USAGE" | "XINFO STREAM" | "XINFO GROUPS" | "XINFO CONSUMERS" => Some(0),
        _ if name.starts_with("XGROUP ") && name != "XGROUP HELP" => Some(0),
        _ if is_keyless(first_word) => None,
        _ => Some(0),
    };
    found.filter(|&i| i < n_args)
}

fn effect_of(name: &str, c: &Command) -> Effect {
    let arg_is =
        |i: usize, word: &[u8]| c.arg(i).is_some_and(|a| a.data.eq_ignore_ascii_case(word));
    let channels = c.arg_count() as u32;
    match name {
        "CLIENT REPLY" if arg_is(0, b"OFF") => Effect::ReplyOff,
        "CLIENT REPLY" if arg_is(0, b"SKIP") => Effect::ReplySkip,
        "CLIENT REPLY" if arg_is(0, b"ON") => Effect::ReplyOn,
        "HELLO" => Effect::Hello(
            c.arg(0)
                .and_then(|v| std::str::from_utf8(v.data).ok()?.parse().ok())
                .filter(|&v: &u8| v == 2 || v == 3),
        ),
        "MULTI" => Effect::Multi,
        "EXEC" => Effect::Exec,
        "DISCARD" => Effect::Discard,
        "MONITOR" => Effect::Monitor,
        "RESET" => Effect::Reset,
        _ => match SubKind::from_word(name.as_bytes()) {
            Some(k) => Effect::Subscription(k, channels),
            None => Effect::None,
        },
    }
}

/// An argument or value as redis-cli shows it: printable ASCII as is, the rest escaped, in
/// double quotes.
pub fn quote(data: &[u8], truncated: bool) -> String {
    let mut s = String::with_capacity(data.len() + 2);
    s.push('"');
    for &c in data {
        match c {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    if truncated {
        s.push_str("...");
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which arguments of a command (as sent, words after the name) are secrets.
    fn secrets(words: &[&str]) -> Vec<usize> {
        let args: Vec<&[u8]> = words[1..].iter().map(|w| w.as_bytes()).collect();
        (0..args.len())
            .filter(|&i| is_secret_arg(words[0].as_bytes(), &args[..i], i))
            .collect()
    }

    #[test]
    fn secret_arguments_of_every_kind() {
        assert_eq!(secrets(&["auth", "user", "pw"]), [0, 1]);
        assert_eq!(
            secrets(&["HELLO", "3", "AUTH", "u", "pw", "SETNAME", "x"]),
            [2, 3]
        );
        assert_eq!(
            secrets(&[
                "MIGRATE", "h", "6379", "k", "0", "5", "AUTH2", "u", "pw", "KEYS", "a"
            ]),
            [6, 7]
        );
        assert_eq!(
            secrets(&["MIGRATE", "h", "1", "k", "0", "5", "auth", "pw"]),
            [6]
        );
        assert_eq!(
            secrets(&["config", "set", "maxmemory", "1mb", "requirepass", "pw"]),
            [4]
        );
        assert_eq!(secrets(&["ACL", "SETUSER", "alice", "on", ">pw"]), [2, 3]);
        assert_eq!(secrets(&["ACL", "LIST"]), Vec::<usize>::new());
        assert_eq!(secrets(&["SET", "auth", "pw"]), Vec::<usize>::new());
        assert!(!may_hold_secrets(b"SET") && may_hold_secrets(b"config"));
    }

    #[test]
    fn names_keys_and_effects() {
        let mut f = crate::frame::Framer::new(crate::frame::Side::Request, true, 256);
        f.feed(
            b"*3\r\n$6\r\nclient\r\n$5\r\nreply\r\n$3\r\noff\r\n*2\r\n$3\r\nget\r\n$1\r\nk\r\n",
            1,
        );
        f.feed(b"*4\r\n$4\r\nEVAL\r\n$1\r\ns\r\n$1\r\n1\r\n$2\r\nk1\r\n", 2);
        let c: Vec<Command> = f.frames().map(|fr| Command::parse(&fr).unwrap()).collect();
        assert_eq!(c[0].name(), "CLIENT REPLY");
        assert_eq!(c[0].effect, Effect::ReplyOff);
        assert_eq!(c[0].key(), None);
        assert_eq!(c[1].stats_name(), "get");
        assert_eq!(c[1].key().unwrap().data, b"k");
        assert_eq!(c[2].key().unwrap().data, b"k1");
        assert_eq!(c[2].arg_count(), 3);
    }
}
