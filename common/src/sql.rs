//! Statement text → its normalized form: constants become `$1`, `$2`, ... (like
//! pg_stat_statements) and runs of white space one space, so `where aid = 5` and
//! `where aid = 7` aggregate. Works on bytes, never panics, keeps unknown input as it is.

use std::fmt::Write as _;

/// The normalized form of `sql`. Existing `$n` parameters are kept; new numbering starts
/// after the highest one present.
pub fn normalize(sql: &str) -> String {
    let mut out = String::new();
    normalize_into(sql, &mut out);
    out
}

/// [`normalize`] into `out` (cleared first): a caller normalizing statement after statement
/// reuses one buffer.
pub fn normalize_into(sql: &str, out: &mut String) {
    out.clear();
    out.reserve(sql.len());
    let b = sql.as_bytes();
    let mut next_param = highest_param(b) + 1;
    let mut i = 0;
    let mut pending_space = false;
    let push = |out: &mut String, s: &str, pending: &mut bool| {
        if *pending && !out.is_empty() {
            out.push(' ');
        }
        *pending = false;
        out.push_str(s);
    };
    // `$n` written in place: formatting into a new String per constant showed in profiles.
    let push_param = |out: &mut String, n: u32, pending: &mut bool| {
        if *pending && !out.is_empty() {
            out.push(' ');
        }
        *pending = false;
        out.push('$');
        let _ = write!(out, "{n}");
    };
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            pending_space = true;
            i += 1;
        } else if c == b'\''
            || ((c == b'E' || c == b'e') && b.get(i + 1) == Some(&b'\'') && !ident_before(b, i))
        {
            // a string constant, '' doubles a quote; E'..' allows backslash escapes
            let escapes = c != b'\'';
            i += if escapes { 2 } else { 1 };
            while i < b.len() {
                if escapes && b[i] == b'\\' {
                    i += 2;
                } else if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                    } else {
                        i += 1;
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            push_param(out, next_param, &mut pending_space);
            next_param += 1;
        } else if c == b'"' {
            // a quoted identifier: keep it
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            i = (i + 1).min(b.len());
            push(
                out,
                &String::from_utf8_lossy(&b[start..i]),
                &mut pending_space,
            );
        } else if ((c.is_ascii_digit()
            || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)))
            && !ident_before(b, i))
            || (c == b'-' && unary_minus(b, i))
        {
            // a number: digits, one dot, an exponent; a unary minus belongs to it (as the
            // parser folds it, so pg_stat_statements shows `+ $1` for `+ -5` too)
            i += usize::from(c == b'-');
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                if (b[i] == b'e' || b[i] == b'E') && matches!(b.get(i + 1), Some(b'+' | b'-')) {
                    i += 1;
                }
                i += 1;
            }
            push_param(out, next_param, &mut pending_space);
            next_param += 1;
        } else {
            // anything else up to the next space, quote, or start of a constant
            let start = i;
            i += 1;
            while i < b.len() {
                let d = b[i];
                if d.is_ascii_whitespace() || d == b'\'' || d == b'"' {
                    break;
                }
                if ((d.is_ascii_digit() || d == b'.') && !ident_before(b, i))
                    || (d == b'-' && unary_minus(b, i))
                {
                    break;
                }
                i += 1;
            }
            // keep multi-byte characters whole: extend to a char boundary
            while i < b.len() && !sql.is_char_boundary(i) {
                i += 1;
            }
            push(out, &sql[start..i], &mut pending_space);
        }
    }
    // The final semicolon is not part of the statement (pg_stat_statements leaves it out
    // too): `select 1;` over the simple protocol and `select 1` in a Parse are one.
    while out.ends_with(';') {
        out.pop();
        while out.ends_with(' ') {
            out.pop();
        }
    }
}

/// True when the `-` at `i` is a sign: a number follows, and what precedes is an operator,
/// a comma, an opening parenthesis or nothing (not an operand, so not a subtraction).
fn unary_minus(b: &[u8], i: usize) -> bool {
    let next_is_number = match b.get(i + 1) {
        Some(d) if d.is_ascii_digit() => true,
        Some(b'.') => b.get(i + 2).is_some_and(u8::is_ascii_digit),
        _ => false,
    };
    if !next_is_number {
        return false;
    }
    let prev = b[..i].iter().rev().find(|c| !c.is_ascii_whitespace());
    match prev {
        None => true,
        Some(&p) => {
            !(p.is_ascii_alphanumeric()
                || matches!(p, b'_' | b')' | b'"' | b'\'' | b']' | b'$')
                || p >= 0x80)
        }
    }
}

/// True when position `i` continues an identifier or parameter (`t1`, `$1`, `x.y2`).
fn ident_before(b: &[u8], i: usize) -> bool {
    i > 0
        && (b[i - 1].is_ascii_alphanumeric()
            || b[i - 1] == b'_'
            || b[i - 1] == b'$'
            || b[i - 1] >= 0x80)
}

fn highest_param(b: &[u8]) -> u32 {
    let mut max = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && !ident_before(b, i) {
            let start = i + 1;
            let mut j = start;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if let Ok(n) = std::str::from_utf8(&b[start..j])
                .unwrap_or("")
                .parse::<u32>()
            {
                max = max.max(n);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn constants_become_parameters() {
        assert_eq!(
            normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        );
        assert_eq!(normalize("select pg_sleep(0.05)"), "select pg_sleep($1)");
        assert_eq!(
            normalize("UPDATE t SET v = v + -12 WHERE k = 'it''s' AND x IN (1, 2.5, 3e-2)"),
            "UPDATE t SET v = v + $1 WHERE k = $2 AND x IN ($3, $4, $5)"
        );
        assert_eq!(normalize("select E'a\\'b', 'c'"), "select $1, $2");
        // a subtraction keeps its minus; a sign belongs to the constant
        assert_eq!(
            normalize("select a - 1, a-2, f(-3), x = -4.5"),
            "select a - $1, a-$2, f($3), x = $4"
        );
        assert_eq!(
            normalize("UPDATE pgbench_tellers SET tbalance = tbalance + -4177 WHERE tid = 7;"),
            normalize("UPDATE pgbench_tellers SET tbalance = tbalance + 212 WHERE tid = 3;")
        );
    }

    #[test]
    fn identifiers_parameters_and_spacing_are_kept() {
        assert_eq!(
            normalize("select t1.c2 from \"T 3\"  where\n a = $1"),
            "select t1.c2 from \"T 3\" where a = $1"
        );
        assert_eq!(normalize("select $2, 7"), "select $2, $3");
        assert_eq!(normalize("  BEGIN;  "), "BEGIN");
        assert_eq!(normalize("select 1 ; ;"), "select $1");
        assert_eq!(
            normalize("select 'ü', ünïcode_1 from x"),
            "select $1, ünïcode_1 from x"
        );
    }

    #[test]
    fn bad_input_never_panics() {
        for s in [
            "'",
            "E'",
            "\"",
            "$",
            "$$",
            "1e+",
            ".",
            "'\\",
            "E'\\",
            "x'y",
            "select 'unterminated",
        ] {
            let _ = normalize(s);
        }
        let alphabet = b" '\"$E.e+-0123456789abcdefxyz\\()_,;\xc3\xbc";
        let mut seed = 7u64;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..40)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    alphabet[(seed >> 40) as usize % alphabet.len()]
                })
                .collect();
            let s = String::from_utf8_lossy(&bytes);
            let _ = normalize(&s);
        }
    }
}
