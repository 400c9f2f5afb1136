//! What log messages say a session ran, and the frontend messages that run it again:
//! `statement: …` as a Query; `execute <name>: …` with its `parameters: $1 = '…'` detail as
//! Parse (once per named statement and session), Bind, Execute and Sync.

use bytes::BytesMut;
use postgres_protocol::{IsNull, message::frontend};

/// A statement a log line holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Logged<'a> {
    /// `statement: SQL` (simple protocol).
    Simple { sql: &'a str },
    /// `execute NAME: SQL` (extended protocol); `name` is empty for `<unnamed>`.
    Execute { name: &'a str, sql: &'a str },
}

/// What a LOG message means to a replay.
#[derive(Clone, Debug, PartialEq)]
pub enum Message<'a> {
    Statement {
        duration_ns: Option<u64>,
        logged: Logged<'a>,
    },
    /// `duration: X ms` alone: the statement logged before it (log_statement) took X.
    Duration(u64),
    /// `connection authorized: user=… database=… application_name=…`.
    Authorized {
        user: &'a str,
        database: &'a str,
        application: &'a str,
    },
    Disconnection,
    /// Anything else (parse/bind durations, checkpoints, …).
    Other,
}

/// `duration: 0.123 ms` → ns.
fn duration_ns(text: &str) -> Option<u64> {
    let ms: f64 = text.strip_suffix(" ms")?.parse().ok()?;
    (ms >= 0.0 && ms.is_finite()).then_some((ms * 1e6) as u64)
}

fn logged(text: &str) -> Option<Logged<'_>> {
    if let Some(sql) = text.strip_prefix("statement: ") {
        return Some(Logged::Simple { sql });
    }
    let rest = text.strip_prefix("execute ")?;
    // `execute fetch from <portal>`: a cursor's fetch, which a log cannot replay.
    if rest.starts_with("fetch from ") {
        return None;
    }
    let (name, sql) = rest.split_once(": ")?;
    let name = if name == "<unnamed>" { "" } else { name };
    Some(Logged::Execute { name, sql })
}

pub fn classify(message: &str) -> Message<'_> {
    if let Some(rest) = message.strip_prefix("duration: ") {
        return match rest.split_once("  ") {
            None => duration_ns(rest).map_or(Message::Other, Message::Duration),
            Some((d, text)) => match (duration_ns(d), logged(text)) {
                (Some(d), Some(l)) => Message::Statement {
                    duration_ns: Some(d),
                    logged: l,
                },
                _ => Message::Other,
            },
        };
    }
    if let Some(rest) = message.strip_prefix("connection authorized: ") {
        let value = |key: &str| -> &str {
            rest.split(' ')
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_default()
        };
        // The application name runs to the end or to what PostgreSQL appends after it.
        let application = rest
            .split_once("application_name=")
            .map(|(_, a)| {
                a.split(" SSL enabled")
                    .next()
                    .and_then(|a| a.split(" GSS (").next())
                    .unwrap_or(a)
            })
            .unwrap_or_default();
        return Message::Authorized {
            user: value("user="),
            database: value("database="),
            application,
        };
    }
    if message.starts_with("disconnection: ") {
        return Message::Disconnection;
    }
    match logged(message) {
        Some(l) => Message::Statement {
            duration_ns: None,
            logged: l,
        },
        None => Message::Other,
    }
}

/// `parameters: $1 = '5', $2 = NULL, $3 = 'it''s'` → the values (None for NULL); None when
/// the detail is not a parameter list.
pub fn parameters(detail: &str) -> Option<Vec<Option<String>>> {
    let mut rest = detail.strip_prefix("parameters: ")?;
    let mut values = vec![];
    loop {
        let after_dollar = rest.strip_prefix('$')?;
        let digits = after_dollar.find(|c: char| !c.is_ascii_digit())?;
        rest = after_dollar[digits..].strip_prefix(" = ")?;
        if let Some(r) = rest.strip_prefix("NULL") {
            values.push(None);
            rest = r;
        } else {
            let mut chars = rest.strip_prefix('\'')?.char_indices();
            let body = &rest[1..];
            let mut value = String::new();
            let end = loop {
                let (i, c) = chars.next()?;
                if c != '\'' {
                    value.push(c);
                    continue;
                }
                if body[i + 1..].starts_with('\'') {
                    value.push('\'');
                    chars.next();
                    continue;
                }
                break i + 1;
            };
            values.push(Some(value));
            rest = &body[end..];
        }
        match rest.strip_prefix(", ") {
            Some(r) => rest = r,
            None if rest.is_empty() => return Some(values),
            None => return None,
        }
    }
}

/// A Query message.
pub fn query(sql: &str, out: &mut BytesMut) -> anyhow::Result<()> {
    frontend::query(sql, out)?;
    Ok(())
}

/// Parse (when `parse`), Bind of text parameters, Execute and Sync.
pub fn execute(
    name: &str,
    sql: &str,
    parse: bool,
    types: &[u32],
    values: &[Option<String>],
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    if parse {
        frontend::parse(name, sql, types.iter().copied(), out)?;
    }
    frontend::bind(
        "",
        name,
        [0i16],
        values,
        |v: &Option<String>, buf: &mut BytesMut| match v {
            None => Ok(IsNull::Yes),
            Some(s) => {
                buf.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
        },
        [0i16],
        out,
    )
    .map_err(|e| match e {
        frontend::BindError::Conversion(e) => anyhow::anyhow!("a parameter: {e}"),
        frontend::BindError::Serialization(e) => anyhow::anyhow!("the parameters: {e}"),
    })?;
    frontend::execute("", 0, out)?;
    frontend::sync(out);
    Ok(())
}

/// Types for parameters whose statement the server cannot type by itself (`$1 + $2`):
/// integers as bigint, decimals as numeric, true/false as boolean, the rest as text.
pub fn guess_types(values: &[Option<String>]) -> Vec<u32> {
    const INT8: u32 = 20;
    const NUMERIC: u32 = 1700;
    const BOOL: u32 = 16;
    const TEXT: u32 = 25;
    values
        .iter()
        .map(|v| {
            let Some(v) = v else { return 0 };
            let digits = v.strip_prefix('-').unwrap_or(v);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                INT8
            } else if digits.split_once('.').is_some_and(|(a, b)| {
                !(a.is_empty() && b.is_empty())
                    && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
            }) {
                NUMERIC
            } else if matches!(v.as_str(), "t" | "f" | "true" | "false") {
                BOOL
            } else {
                TEXT
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_classify_as_postgresql_writes_them() {
        assert_eq!(
            classify("statement: select 1"),
            Message::Statement {
                duration_ns: None,
                logged: Logged::Simple { sql: "select 1" }
            }
        );
        assert_eq!(
            classify("duration: 0.430 ms  execute S_1: select $1"),
            Message::Statement {
                duration_ns: Some(430_000),
                logged: Logged::Execute {
                    name: "S_1",
                    sql: "select $1"
                }
            }
        );
        assert_eq!(
            classify("execute <unnamed>: select $1"),
            Message::Statement {
                duration_ns: None,
                logged: Logged::Execute {
                    name: "",
                    sql: "select $1"
                }
            }
        );
        assert_eq!(classify("duration: 1.182 ms"), Message::Duration(1_182_000));
        assert_eq!(
            classify("duration: 0.1 ms  parse <unnamed>: select 1"),
            Message::Other
        );
        assert_eq!(
            classify(
                "connection authorized: user=alice database=app application_name=my app SSL enabled (protocol=TLSv1.3)"
            ),
            Message::Authorized {
                user: "alice",
                database: "app",
                application: "my app"
            }
        );
        assert_eq!(
            classify("disconnection: session time: 0:00:00.007 user=a database=b host=[local]"),
            Message::Disconnection
        );
        assert_eq!(classify("execute fetch from c1: select 1"), Message::Other);
        assert_eq!(classify("duration: abc ms"), Message::Other);
    }

    #[test]
    fn parameter_lists_parse_with_quotes_nulls_and_commas() {
        assert_eq!(
            parameters("parameters: $1 = '5', $2 = NULL, $3 = 'it''s, $4 = ''x'''"),
            Some(vec![Some("5".into()), None, Some("it's, $4 = 'x'".into())])
        );
        assert_eq!(
            parameters("parameters: $1 = 'a\nb'"),
            Some(vec![Some("a\nb".into())])
        );
        for bad in [
            "parameters: $1 = 'open",
            "parameters: 1 = '2'",
            "other",
            "parameters: $1 = '1' x",
        ] {
            assert_eq!(parameters(bad), None, "{bad}");
        }
    }

    #[test]
    fn guessed_types_follow_the_values() {
        let v = |s: &str| Some(s.to_string());
        assert_eq!(
            guess_types(&[
                v("12"),
                v("-3"),
                v("1.5"),
                v("t"),
                v("abc"),
                None,
                v("."),
                v("-")
            ]),
            [20, 20, 1700, 16, 25, 0, 25, 25]
        );
    }

    #[test]
    fn an_execute_encodes_parse_bind_execute_sync() {
        let mut b = BytesMut::new();
        execute(
            "",
            "select $1",
            true,
            &[],
            &[Some("7".into()), None],
            &mut b,
        )
        .unwrap();
        let tags: Vec<u8> = {
            let mut i = 0;
            let mut t = vec![];
            while i < b.len() {
                t.push(b[i]);
                i += 1 + u32::from_be_bytes(b[i + 1..i + 5].try_into().unwrap()) as usize;
            }
            t
        };
        assert_eq!(tags, b"PBES");
        assert!(query("select\0", &mut BytesMut::new()).is_err());
    }
}
