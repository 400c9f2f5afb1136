//! Commands: a request value → its name (with the subcommand of container commands), key and
//! arguments, and what it does to the connection (reply mode, protocol version, transactions,
//! pub/sub, MONITOR, blocking). Secrets (AUTH, HELLO ... AUTH, MIGRATE ... AUTH, CONFIG SET
//! requirepass, ACL SETUSER rules) are recognized here, before their bytes are kept.

use crate::frame::{Frame, kind};

/// Commands whose first argument is a subcommand, counted apart by Redis (`config|get` in
/// INFO commandstats).
const CONTAINERS: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "FUNCTION", "LATENCY", "MEMORY", "MODULE",
    "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];

/// Commands without a key (channels, patterns and scripts are not keys).
const KEYLESS: &[&str] = &[
    "ACL",
    "AUTH",
    "BGREWRITEAOF",
    "BGSAVE",
    "CLIENT",
    "CLUSTER",
    "COMMAND",
    "CONFIG",
    "DBSIZE",
    "DEBUG",
    "DISCARD",
    "ECHO",
    "EXEC",
    "FAILOVER",
    "FLUSHALL",
    "FLUSHDB",
    "FUNCTION",
    "HELLO",
    "INFO",
    "KEYS",
    "LASTSAVE",
    "LATENCY",
    "LOLWUT",
    "MODULE",
    "MONITOR",
    "MULTI",
    "PING",
    "PSUBSCRIBE",
    "PUBLISH",
    "PUBSUB",
    "PUNSUBSCRIBE",
    "QUIT",
    "RANDOMKEY",
    "READONLY",
    "READWRITE",
    "REPLICAOF",
    "RESET",
    "ROLE",
    "SAVE",
    "SCAN",
    "SCRIPT",
    "SELECT",
    "SHUTDOWN",
    "SLAVEOF",
    "SLOWLOG",
    "SPUBLISH",
    "SSUBSCRIBE",
    "SUBSCRIBE",
    "SUNSUBSCRIBE",
    "SWAPDB",
    "SYNC",
    "PSYNC",
    "TIME",
    "UNSUBSCRIBE",
    "UNWATCH",
    "WAIT",
    "WAITAOF",
];

/// Commands that may block until data arrives or a timeout passes.
const BLOCKING: &[&str] = &[
    "BLMOVE",
    "BLMPOP",
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BZMPOP",
    "BZPOPMAX",
    "BZPOPMIN",
    "WAIT",
    "WAITAOF",
];

/// An argument as kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Arg {
    /// The first bytes (none for a secret).
    pub data: Vec<u8>,
    /// Its length on the wire.
    pub len: u64,
    /// Not captured or not kept whole.
    pub truncated: bool,
    /// A password or other secret: never kept.
    pub secret: bool,
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Upper case, with the subcommand of container commands: `GET`, `CONFIG GET`.
    pub name: String,
    /// Arguments after the name (and subcommand).
    pub args: Vec<Arg>,
    /// Which of `args` is the key.
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
    /// The key, if the command has one.
    pub fn key(&self) -> Option<&Arg> {
        self.key.and_then(|i| self.args.get(i))
    }

    /// The name as INFO commandstats spells it: `get`, `config|get`.
    pub fn stats_name(&self) -> String {
        self.name.to_ascii_lowercase().replacen(' ', "|", 1)
    }

    /// Parses a request value; None when it is not an array of strings (then it is not a
    /// command Redis would run either).
    pub fn parse(frame: &Frame<'_>) -> Option<Command> {
        let top = frame.top()?;
        let array = frame.element(top);
        if array.kind != kind::ARRAY || array.len <= 0 {
            return None;
        }
        let mut words = frame.children(top).map(|i| frame.element(i));
        let first = words.next()?;
        if !kind::is_blob(first.kind) && first.kind != kind::SIMPLE {
            return None;
        }
        let mut name = String::from_utf8_lossy(first.data).to_ascii_uppercase();
        let mut args: Vec<Arg> = words
            .map(|e| Arg {
                data: if e.kind == SECRET {
                    vec![]
                } else {
                    e.data.to_vec()
                },
                len: e.len.max(0) as u64,
                truncated: e.truncated,
                secret: e.kind == SECRET,
            })
            .collect();
        if CONTAINERS.contains(&name.as_str()) && !args.is_empty() && !args[0].secret {
            let sub = args.remove(0);
            name.push(' ');
            name.push_str(&String::from_utf8_lossy(&sub.data).to_ascii_uppercase());
        }
        let key = key_of(&name, &args);
        let effect = effect_of(&name, &args);
        let blocking = BLOCKING.contains(&name.as_str())
            || (matches!(name.as_str(), "XREAD" | "XREADGROUP")
                && args.iter().any(|a| a.data.eq_ignore_ascii_case(b"BLOCK")));
        Some(Command {
            name,
            args,
            key,
            effect,
            blocking,
            inline: frame.inline,
            wire: frame.wire,
            started_ns: frame.started_ns,
        })
    }
}

/// The kind the framer gives an argument it did not keep because it is a secret.
pub const SECRET: u8 = 0;

/// Whether argument `index` (0: the first after the command name, subcommand included) of
/// command `name` (upper case, as sent: no subcommand joined) is a secret, knowing the
/// arguments before it.
pub fn is_secret_arg(name: &[u8], before: &[&[u8]], index: usize) -> bool {
    let upper = String::from_utf8_lossy(name).to_ascii_uppercase();
    if CONTAINERS.contains(&upper.as_str()) {
        // The subcommand itself is no secret; the rest counts from after it.
        if index == 0 {
            return false;
        }
        let sub = String::from_utf8_lossy(before[0]).to_ascii_uppercase();
        return is_secret(&format!("{upper} {sub}"), &before[1..], index - 1);
    }
    is_secret(&upper, before, index)
}

/// [`is_secret_arg`] for a full name (`CONFIG SET`) and the arguments after it.
fn is_secret(name: &str, before: &[&[u8]], index: usize) -> bool {
    let follows = |word: &[u8], n: usize| {
        (1..=n).any(|back| index >= back && before[index - back].eq_ignore_ascii_case(word))
    };
    match name {
        "AUTH" => true,
        // HELLO protover AUTH username password [SETNAME name]
        "HELLO" => follows(b"AUTH", 2),
        // MIGRATE host port key db timeout [COPY] [REPLACE] [AUTH pw | AUTH2 user pw] [KEYS..]
        "MIGRATE" => follows(b"AUTH", 1) || follows(b"AUTH2", 2),
        // CONFIG SET parameter value [parameter value ...]
        "CONFIG SET" => {
            index % 2 == 1
                && [
                    &b"requirepass"[..],
                    b"masterauth",
                    b"masteruser",
                    b"tls-key-file-pass",
                    b"tls-client-key-file-pass",
                ]
                .iter()
                .any(|p| before[index - 1].eq_ignore_ascii_case(p))
        }
        // ACL SETUSER username rules...: passwords (>pw, <pw, #hash, !hash) are rules; every
        // rule is hidden rather than told apart before its first byte is seen.
        "ACL SETUSER" => index >= 1,
        _ => false,
    }
}

fn key_of(name: &str, args: &[Arg]) -> Option<usize> {
    let first_word = name.split(' ').next().unwrap_or(name);
    let numkeys_at = |i: usize| {
        let n: u64 = std::str::from_utf8(&args.get(i)?.data).ok()?.parse().ok()?;
        (n > 0 && args.len() > i + 1).then_some(i + 1)
    };
    let found = match name {
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => numkeys_at(1),
        "ZUNION" | "ZINTER" | "ZDIFF" | "SINTERCARD" | "ZINTERCARD" | "LMPOP" | "ZMPOP" => {
            numkeys_at(0)
        }
        "BLMPOP" | "BZMPOP" => numkeys_at(1),
        "BITOP" => Some(1),
        "MIGRATE" => Some(2),
        "XREAD" | "XREADGROUP" => args
            .iter()
            .position(|a| a.data.eq_ignore_ascii_case(b"STREAMS"))
            .map(|i| i + 1),
        "OBJECT ENCODING" | "OBJECT FREQ" | "OBJECT IDLETIME" | "OBJECT REFCOUNT"
        | "MEMORY USAGE" | "XINFO STREAM" | "XINFO GROUPS" | "XINFO CONSUMERS" => Some(0),
        _ if name.starts_with("XGROUP ") && name != "XGROUP HELP" => Some(0),
        _ if KEYLESS.contains(&first_word) => None,
        _ => Some(0),
    };
    found.filter(|&i| i < args.len())
}

fn effect_of(name: &str, args: &[Arg]) -> Effect {
    let arg = |i: usize| args.get(i).map(|a| a.data.to_ascii_uppercase());
    let channels = args.len() as u32;
    match name {
        "CLIENT REPLY" => match arg(0).as_deref() {
            Some(b"OFF") => Effect::ReplyOff,
            Some(b"SKIP") => Effect::ReplySkip,
            Some(b"ON") => Effect::ReplyOn,
            _ => Effect::None,
        },
        "HELLO" => Effect::Hello(
            arg(0)
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
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
