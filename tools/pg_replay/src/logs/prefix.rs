//! The stderr log's `log_line_prefix` (`%m [%p] %q%u@%d `): compiled once into literal text
//! and escapes, then matched against each line to find its time, session, user, database and
//! application, and where the message (`LOG:  ...`) begins.

use anyhow::bail;

/// One part of a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Escape(char),
    /// `%q`: processes that are not sessions stop the prefix here.
    Quiet,
}

/// What a line's prefix held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    pub ts_ns: Option<u64>,
    pub pid: Option<u32>,
    pub session: Option<&'a str>,
    pub user: Option<&'a str>,
    pub database: Option<&'a str>,
    pub application: Option<&'a str>,
    pub sqlstate: Option<&'a str>,
}

/// A compiled `log_line_prefix`.
#[derive(Clone, Debug)]
pub struct Prefix {
    pieces: Vec<Piece>,
}

/// The severities a message begins with, after the prefix.
pub const SEVERITIES: &[&str] = &[
    "LOG",
    "ERROR",
    "FATAL",
    "PANIC",
    "WARNING",
    "NOTICE",
    "INFO",
    "DEBUG",
    "DEBUG1",
    "DEBUG2",
    "DEBUG3",
    "DEBUG4",
    "DEBUG5",
    "DETAIL",
    "HINT",
    "QUERY",
    "CONTEXT",
    "STATEMENT",
    "LOCATION",
];

/// The severity at the start of `rest` (`LOG:  `), and the text after it.
pub fn severity(rest: &str) -> Option<(&str, &str)> {
    // The word is short (WARNING, STATEMENT, DEBUG1): look for its colon only that far,
    // not through the whole line.
    let colon = rest.bytes().take(10).position(|c| c == b':')?;
    let (word, text) = (&rest[..colon], rest[colon..].strip_prefix(":  ")?);
    SEVERITIES.contains(&word).then_some((word, text))
}

impl Prefix {
    pub fn compile(prefix: &str) -> anyhow::Result<Prefix> {
        let mut pieces = vec![];
        let mut literal = String::new();
        let mut chars = prefix.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            let Some(e) = chars.next() else {
                bail!("--log-line-prefix ends with a lone %");
            };
            if e == '%' {
                literal.push('%');
                continue;
            }
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            // A padding width (%-10u) is not supported: the values would be space-padded.
            if e.is_ascii_digit() || e == '-' {
                bail!("--log-line-prefix: padded escapes (%{e}...) are not supported");
            }
            pieces.push(if e == 'q' {
                Piece::Quiet
            } else {
                Piece::Escape(e)
            });
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        let has = |c: char| pieces.contains(&Piece::Escape(c));
        if !(has('m') || has('t') || has('n')) {
            bail!(
                "--log-line-prefix {prefix:?} has no time (%m, %t or %n): a log without one cannot be replayed"
            );
        }
        if !(has('c') || has('p')) {
            bail!(
                "--log-line-prefix {prefix:?} has no session id (%c) nor process id (%p): sessions cannot be told apart"
            );
        }
        Ok(Prefix { pieces })
    }

    /// Matches `line`: its fields and the rest of the line after the prefix, when the rest
    /// begins with a severity.
    pub fn parse<'a>(&self, line: &'a str) -> Option<(Fields<'a>, &'a str)> {
        let mut f = Fields::default();
        let mut pos = 0;
        for (i, piece) in self.pieces.iter().enumerate() {
            let rest = &line[pos..];
            match piece {
                Piece::Quiet => {
                    if severity(rest).is_some() {
                        return Some((f, rest));
                    }
                }
                Piece::Literal(text) => {
                    if !rest.starts_with(text.as_str()) {
                        return None;
                    }
                    pos += text.len();
                }
                Piece::Escape(e) => {
                    let len = match e {
                        'm' | 't' => {
                            let (ns, len) = timestamp(rest, *e == 'm')?;
                            f.ts_ns = Some(ns);
                            len
                        }
                        'n' => {
                            let len = rest
                                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                                .unwrap_or(rest.len());
                            f.ts_ns = Some(epoch_ns(&rest[..len])?);
                            len
                        }
                        _ => {
                            let len = value_len(rest, self.pieces.get(i + 1));
                            let v = &rest[..len];
                            match e {
                                'p' => f.pid = Some(v.parse().ok()?),
                                'c' => f.session = Some(v),
                                'u' => f.user = Some(v),
                                'd' => f.database = Some(v),
                                'a' => f.application = Some(v),
                                'e' => f.sqlstate = Some(v),
                                _ => {}
                            }
                            len
                        }
                    };
                    pos += len;
                }
            }
        }
        let rest = &line[pos..];
        severity(rest).map(|_| (f, rest))
    }
}

/// The length of an escape's value: up to the next literal's text, else up to a space.
fn value_len(rest: &str, next: Option<&Piece>) -> usize {
    let until = match next {
        Some(Piece::Literal(text)) => text.as_str(),
        _ => " ",
    };
    // By the literal's first byte, then the rest of it: values are short and the literal
    // is a character or two, for which a substring searcher costs more to set up than to run.
    let Some(&first) = until.as_bytes().first() else {
        return 0;
    };
    let b = rest.as_bytes();
    let mut from = 0;
    while let Some(i) = b[from..].iter().position(|&c| c == first) {
        if b[from + i..].starts_with(until.as_bytes()) {
            return from + i;
        }
        from += i + 1;
    }
    rest.len()
}

/// `2026-12-02 08:01:45.960 UTC` (with milliseconds) or `2026-12-02 08:01:45 UTC`: ns since
/// the epoch as if the zone were UTC (a replay needs only the distances between lines), and
/// the length of the text with its zone.
pub fn timestamp(s: &str, millis: bool) -> Option<(u64, usize)> {
    let b = s.as_bytes();
    let fixed = if millis { 23 } else { 19 };
    if b.len() < fixed {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        b.get(r)?.iter().try_fold(0u64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
        })
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = if millis {
        if b[19] != b'.' {
            return None;
        }
        num(20..23)?
    } else {
        0
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as i64, d as i64);
    let secs = days * 86_400 + (h * 3600 + mi * 60 + sec) as i64;
    // Checked: a year past 2554 does not fit in u64 nanoseconds (found by fuzzing).
    let ns = u64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(ms * 1_000_000)?;
    // The zone: a word after one space (`UTC`, `CET`, `+01`), when there is one.
    let mut len = fixed;
    if b.get(len) == Some(&b' ') {
        let zone = b[len + 1..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b':'))
            .count();
        if zone > 0 {
            len += 1 + zone;
        }
    }
    Some((ns, len))
}

/// `1796198505.962` (seconds since the epoch, `%n`) in ns, exactly.
fn epoch_ns(s: &str) -> Option<u64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 9 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let scale = 10u64.pow(9 - frac.len() as u32);
    let frac = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().ok()?
    };
    secs.parse::<u64>()
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(frac * scale)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debians_default_prefix_parses_session_and_background_lines() {
        let p = Prefix::compile("%m [%p] %q%u@%d ").unwrap();
        let (f, rest) = p
            .parse("2026-12-02 08:01:45.962 UTC [15218] postgres@app LOG:  statement: select 1")
            .unwrap();
        assert_eq!(f.pid, Some(15218));
        assert_eq!(f.user, Some("postgres"));
        assert_eq!(f.database, Some("app"));
        assert_eq!(rest, "LOG:  statement: select 1");
        assert_eq!(f.ts_ns, Some(1_796_198_505_962_000_000));
        let (f, rest) = p
            .parse("2026-12-02 08:01:46.000 UTC [99] LOG:  checkpoint starting: time")
            .unwrap();
        assert_eq!((f.pid, f.user), (Some(99), None));
        assert!(rest.starts_with("LOG:  checkpoint"));
        assert!(p.parse("\tcontinued line").is_none());
        assert!(p.parse("2026-12-02 garbage").is_none());
    }

    #[test]
    fn a_timestamp_past_what_nanoseconds_hold_is_no_timestamp() {
        // Found by fuzzing: 9999-12-31 overflowed the u64 nanoseconds.
        assert!(timestamp("9999-12-31 23:59:59.999 UTC", true).is_none());
        assert!(timestamp("2554-07-21 23:34:33", false).is_some());
        assert!(timestamp("2554-07-21 23:34:34", false).is_none());
    }

    #[test]
    fn session_ids_application_names_and_seconds_prefixes_parse() {
        let p = Prefix::compile("%t %c %a: ").unwrap();
        let (f, rest) = p
            .parse("2026-12-02 08:01:45 CET 6b0fd069.3b72 psql: ERROR:  boom")
            .unwrap();
        assert_eq!(f.session, Some("6b0fd069.3b72"));
        assert_eq!(f.application, Some("psql"));
        assert_eq!(rest, "ERROR:  boom");
        let bars = Prefix::compile("%m|%u|%d|%c|").unwrap();
        let (f, rest) = bars
            .parse("2026-12-02 08:01:45.962 UTC|alice|app|6b0f.1|LOG:  statement: select 1")
            .unwrap();
        assert_eq!(
            (f.user, f.database, f.session),
            (Some("alice"), Some("app"), Some("6b0f.1"))
        );
        assert_eq!(rest, "LOG:  statement: select 1");
        let n = Prefix::compile("%n|%p|").unwrap();
        let (f, _) = n.parse("1796198505.962|7|LOG:  x").unwrap();
        assert_eq!(f.ts_ns, Some(1_796_198_505_962_000_000));
    }

    #[test]
    fn prefixes_without_time_or_session_are_refused() {
        assert!(Prefix::compile("[%p] ").is_err());
        assert!(Prefix::compile("%m ").is_err());
        assert!(Prefix::compile("%m %-10p ").is_err());
        assert!(Prefix::compile("%m %p %").is_err());
    }

    #[test]
    fn dates_convert_to_epoch_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(timestamp("2026-13-01 00:00:00", false), None);
        assert_eq!(timestamp("2026-01-01 00:00:0x", false), None);
    }
}
