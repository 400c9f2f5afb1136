//! A server to connect to as libpq users write it: `'host=… port=… user=… dbname=…'` or a
//! `postgresql://user:password@host:port/dbname?…` URI, with libpq's environment defaults
//! (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`, `PGPASSFILE`) and the
//! password looked up per user in a `.pgpass`-format file.
//!
//! Written here because the crates that parse connection strings (tokio-postgres' `Config`)
//! come with a whole client we do not use: the tools speak the protocol themselves.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Where and as whom to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub port: u16,
    /// For sessions whose start-up the input does not hold (joined midway, or logs without
    /// a user), unless `--user` is given.
    pub user: Option<String>,
    pub dbname: Option<String>,
    pub password: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// The directory of the Unix socket (`/var/run/postgresql`).
    Unix(PathBuf),
}

impl Target {
    /// The Unix socket's path, for a socket directory.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            Host::Tcp(_) => None,
        }
    }

    /// `host:port` or the socket's path, as messages show the target.
    pub fn describe(&self) -> String {
        match &self.host {
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Unix(_) => self
                .socket_path()
                .map_or_else(String::new, |p| p.display().to_string()),
        }
    }
}

/// Parses a connection string (key=value pairs or a URI); what it leaves out comes from the
/// environment as libpq takes it.
pub fn parse(s: &str) -> anyhow::Result<Target> {
    parse_with_env(s, |k| std::env::var(k).ok())
}

fn parse_with_env(s: &str, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Target> {
    let s = s.trim();
    let pairs = if s.starts_with("postgresql://") || s.starts_with("postgres://") {
        uri_pairs(s)?
    } else {
        keyword_pairs(s)?
    };
    let mut host = env("PGHOST");
    let mut port = env("PGPORT");
    let mut user = env("PGUSER");
    let mut dbname = env("PGDATABASE");
    let mut password = None;
    for (k, v) in pairs {
        match k.as_str() {
            "host" | "hostaddr" => host = Some(v),
            "port" => port = Some(v),
            "user" => user = Some(v),
            "dbname" => dbname = Some(v),
            "password" => password = Some(v),
            // Accepted and not needed here: the rest of what libpq users write.
            "application_name"
            | "connect_timeout"
            | "options"
            | "client_encoding"
            | "fallback_application_name"
            | "keepalives"
            | "target_session_attrs"
            | "gssencmode" => {}
            "sslmode" if matches!(v.as_str(), "disable" | "allow" | "prefer") => {}
            "sslmode" => {
                bail!("sslmode={v}: pgbpf connects without TLS (use sslmode=disable or prefer)")
            }
            // Named only when it looks like an option: a URI whose password holds an
            // unescaped '?' or '&' would otherwise show part of it here.
            other if other.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => {
                bail!("unknown connection option {other:?}")
            }
            _ => bail!("an unknown connection option (a URI's password must escape / ? & @ :)"),
        }
    }
    let port = match port.as_deref().filter(|p| !p.is_empty()) {
        None => 5432,
        Some(p) => p
            .parse()
            // Not echoed: in a URI whose password holds an unescaped '/', a piece of the
            // password lands here.
            .ok()
            .context("the port is not a number (a URI's password must escape / ? & @ :)")?,
    };
    let host = match host.filter(|h| !h.is_empty()) {
        Some(h) if h.starts_with('/') || h.starts_with('@') => Host::Unix(PathBuf::from(h)),
        Some(h) => Host::Tcp(h),
        None => Host::Unix(PathBuf::from("/var/run/postgresql")),
    };
    Ok(Target {
        host,
        port,
        user,
        dbname,
        password,
    })
}

/// `key=value key2='quoted \' value'`, as libpq's conninfo strings.
fn keyword_pairs(s: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs = vec![];
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            bail!("missing \"=\" after {key:?} in the connection string");
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => bail!("unterminated quoted value of {key:?} in the connection string"),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// `postgresql://user:password@host:port/dbname?key=value`.
fn uri_pairs(s: &str) -> anyhow::Result<Vec<(String, String)>> {
    let rest = s.split_once("://").map_or(s, |(_, r)| r);
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut pairs = vec![];
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            if !user.is_empty() {
                pairs.push(("user".into(), percent_decode(user)?));
            }
            if !password.is_empty() {
                pairs.push(("password".into(), percent_decode(password)?));
            }
            hostport
        }
        None => authority,
    };
    // [v6::addr]:port, host:port, host
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .context("unterminated [ in the URI's host")?;
        (h, after.strip_prefix(':').unwrap_or(""))
    } else {
        hostport.rsplit_once(':').unwrap_or((hostport, ""))
    };
    if !host.is_empty() {
        pairs.push(("host".into(), percent_decode(host)?));
    }
    if !port.is_empty() {
        pairs.push(("port".into(), port.to_string()));
    }
    if !path.is_empty() {
        pairs.push(("dbname".into(), percent_decode(path)?));
    }
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        pairs.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(pairs)
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .context("a % without two hex digits in the URI")?;
            out.push(
                u8::from_str_radix(hex, 16)
                    .ok()
                    .context("a % without two hex digits in the URI")?,
            );
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("the URI decodes to bytes that are not UTF-8")
}

/// Passwords per user: `--password-file` (`.pgpass` lines, or one line holding only the
/// password), the connection string's, `PGPASSWORD`, then `PGPASSFILE` or `~/.pgpass`.
#[derive(Clone, Debug, Default)]
pub struct Passwords {
    file: Vec<PassLine>,
    conninfo: Option<String>,
    env: Option<String>,
    pgpass: Vec<PassLine>,
}

/// One `.pgpass` line: host:port:database:user:password, `*` matching anything.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PassLine {
    fields: [String; 5],
}

impl Passwords {
    pub fn load(target: &Target, password_file: Option<&Path>) -> anyhow::Result<Passwords> {
        let file = match password_file {
            None => vec![],
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the password file {}", p.display()))?;
                let lines = pgpass_lines(&text);
                match text.lines().next() {
                    // One line without the five fields: the password itself.
                    Some(only) if lines.is_empty() && !only.is_empty() => vec![PassLine {
                        fields: ["*", "*", "*", "*", only].map(String::from),
                    }],
                    _ => lines,
                }
            }
        };
        let pgpass_path = std::env::var_os("PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")));
        let pgpass = pgpass_path
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| pgpass_lines(&t))
            .unwrap_or_default();
        Ok(Passwords {
            file,
            conninfo: target.password.clone(),
            env: std::env::var("PGPASSWORD").ok(),
            pgpass,
        })
    }

    /// The password for `user` on `database` of the target, if any source has one.
    pub fn lookup(&self, target: &Target, database: &str, user: &str) -> Option<String> {
        let host = match &target.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(_) => "localhost".to_string(),
        };
        let port = target.port.to_string();
        let want = [host.as_str(), port.as_str(), database, user];
        let find = |lines: &[PassLine]| {
            lines
                .iter()
                .find(|l| {
                    l.fields[..4]
                        .iter()
                        .zip(want)
                        .all(|(f, w)| f == "*" || f == w)
                })
                .map(|l| l.fields[4].clone())
        };
        find(&self.file)
            .or_else(|| self.conninfo.clone())
            .or_else(|| self.env.clone())
            .or_else(|| find(&self.pgpass))
    }
}

/// The `.pgpass` lines of a file: five fields split at unescaped colons, `\:` and `\\`
/// escaped, comments and malformed lines skipped (as libpq does).
fn pgpass_lines(text: &str) -> Vec<PassLine> {
    let mut lines = vec![];
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut fields: Vec<String> = vec![String::new()];
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => fields
                    .last_mut()
                    .into_iter()
                    .for_each(|f| f.extend(chars.next())),
                ':' if fields.len() < 5 => fields.push(String::new()),
                c => fields.last_mut().into_iter().for_each(|f| f.push(c)),
            }
        }
        if let Ok(fields) = <[String; 5]>::try_from(fields) {
            lines.push(PassLine { fields });
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_password_that_breaks_a_uri_apart_is_not_shown_in_the_error() {
        for uri in [
            "postgresql://u:se/cret@h/db",
            "postgresql://u:s%zzecret@h/db",
        ] {
            let e = format!("{:#}", parse_with_env(uri, no_env).unwrap_err());
            assert!(!e.contains("se") && !e.contains("cret"), "{uri}: {e}");
        }
    }

    #[test]
    fn keyword_strings_parse_as_libpq_does() {
        let t = parse_with_env(
            "host=db1 port=6543 user=alice dbname='my db' password='it\\'s'",
            no_env,
        )
        .unwrap();
        assert_eq!(t.host, Host::Tcp("db1".into()));
        assert_eq!(t.port, 6543);
        assert_eq!(t.user.as_deref(), Some("alice"));
        assert_eq!(t.dbname.as_deref(), Some("my db"));
        assert_eq!(t.password.as_deref(), Some("it's"));
        let unix = parse_with_env("host=/tmp port = 5433", no_env).unwrap();
        assert_eq!(
            unix.socket_path(),
            Some(PathBuf::from("/tmp/.s.PGSQL.5433"))
        );
        let defaults = parse_with_env("", |k| (k == "PGPORT").then(|| "5499".into())).unwrap();
        assert_eq!(defaults.port, 5499);
        assert_eq!(defaults.host, Host::Unix("/var/run/postgresql".into()));
    }

    #[test]
    fn uris_parse_with_percent_escapes_and_parameters() {
        let t = parse_with_env(
            "postgresql://bob:p%40ss@[::1]:5434/sales?application_name=x&sslmode=disable",
            no_env,
        )
        .unwrap();
        assert_eq!(t.host, Host::Tcp("::1".into()));
        assert_eq!(t.port, 5434);
        assert_eq!(t.user.as_deref(), Some("bob"));
        assert_eq!(t.password.as_deref(), Some("p@ss"));
        assert_eq!(t.dbname.as_deref(), Some("sales"));
        let socket = parse_with_env("postgres://%2Ftmp/x", no_env).unwrap();
        assert_eq!(socket.host, Host::Unix("/tmp".into()));
    }

    #[test]
    fn bad_strings_are_errors_not_panics() {
        for bad in [
            "host",
            "port=abc",
            "dbname='open",
            "frobnicate=1",
            "sslmode=require",
            "postgresql://h/%zz",
            "postgresql://[::1/x",
            "postgresql://h/%e2%28",
        ] {
            assert!(parse_with_env(bad, no_env).is_err(), "{bad}");
        }
    }

    #[test]
    fn pgpass_lines_match_by_field_with_escapes_and_wildcards() {
        let lines = pgpass_lines("# comment\nbad line\n*:5432:*:alice:a\\:b\nh:*:db:*:x\n");
        assert_eq!(lines.len(), 2);
        let target = parse_with_env("host=h port=5432", no_env).unwrap();
        let p = Passwords {
            pgpass: lines,
            ..Passwords::default()
        };
        assert_eq!(p.lookup(&target, "any", "alice").as_deref(), Some("a:b"));
        assert_eq!(p.lookup(&target, "db", "carol").as_deref(), Some("x"));
        assert_eq!(p.lookup(&target, "other", "carol"), None);
    }
}
