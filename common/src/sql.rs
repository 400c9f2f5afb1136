//! Statement text → its normalized form: constants become `$1`, `$2`, ... (like
//! pg_stat_statements) and runs of white space one space, so `where aid = 5` and
//! `where aid = 7` aggregate; redacted (`--redact`), comments go too (they can hold anything:
//! a ticket, a user's name, a token). Works on bytes, never panics, keeps unknown input as
//! it is.

/// How a tool shows statements: normalized (the default), or redacted (`--redact`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shown {
    #[default]
    Normalized,
    /// Normalized, and without comments.
    Redacted,
}

impl Shown {
    /// `Redacted` when `redact` (a tool's `--redact`).
    pub fn redacted_if(redact: bool) -> Shown {
        if redact {
            Shown::Redacted
        } else {
            Shown::Normalized
        }
    }

    /// `sql` as shown.
    pub fn text(self, sql: &str) -> String {
        let mut out = String::new();
        self.text_into(sql, &mut out);
        out
    }

    /// A statement on the line of one event (a slow statement, a failed call): as it ran, or
    /// redacted.
    pub fn as_ran(self, sql: &str) -> std::borrow::Cow<'_, str> {
        match self {
            Shown::Normalized => std::borrow::Cow::Borrowed(sql),
            Shown::Redacted => std::borrow::Cow::Owned(self.text(sql)),
        }
    }

    /// `sql` as shown, into `out` (cleared first).
    pub fn text_into(self, sql: &str, out: &mut String) {
        normalize_with(sql, out, self == Shown::Redacted);
    }
}

/// The normalized form of `sql`. Existing `$n` parameters are kept; new numbering starts
/// after the highest one present.
pub fn normalize(sql: &str) -> String {
    let mut out = String::new();
    normalize_into(sql, &mut out);
    out
}

/// [`normalize`] into `out` (cleared first): a caller normalizing statement after statement
/// reuses one buffer.
///
/// Most of a statement is copied as it is: the scan only looks for what changes (white
/// space, constants) and copies the unchanged run before each in one piece. (A token at a
/// time, with a search back for the operand before each minus sign, was a fifth of
/// pgwire_trace's decoding time.)
pub fn normalize_into(sql: &str, out: &mut String) {
    normalize_with(sql, out, false);
}

/// [`normalize_into`], comments dropped when `drop_comments`.
fn normalize_with(sql: &str, out: &mut String, drop_comments: bool) {
    // Most statements are spaced singly: there a space never changes and is skipped with the
    // letters around it, in blocks of eight bytes (a byte at a time, with a stop at every
    // space, was most of normalizing).
    let table = if singly_spaced(sql.as_bytes()) {
        &MAY_CHANGE_BUT_SPACE
    } else {
        &MAY_CHANGE
    };
    normalize_using(sql, out, drop_comments, table);
}

/// [`normalize_with`], stopping at the bytes of `table` (the spaces among them or not).
fn normalize_using(sql: &str, out: &mut String, drop_comments: bool, table: &[bool; 256]) {
    out.clear();
    out.reserve(sql.len());
    let b = sql.as_bytes();
    // Only a statement that has `$n` parameters needs the numbering to start after them.
    let mut next_param = if memchr::memchr(b'$', b).is_some() {
        highest_param(b).saturating_add(1)
    } else {
        1
    };
    // Bytes from `copied` to `i` go to `out` unchanged, in one piece, when something that
    // changes comes. All these positions are at ASCII bytes or the end: char boundaries.
    let mut copied = 0;
    // Where the comments passed so far lie: a minus sign after one looks through it for the
    // operand before (`a /* c */ -1` subtracts).
    let mut comments: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    loop {
        i = unchanged_from(b, i, table);
        let Some(&c) = b.get(i) else {
            break;
        };
        let constant = match c {
            // One space between two tokens stays as it is.
            b' ' if i > 0
                && !b[i - 1].is_ascii_whitespace()
                && b.get(i + 1).is_some_and(|d| !d.is_ascii_whitespace()) =>
            {
                i += 1;
                continue;
            }
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                out.push_str(&sql[copied..i]);
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                // One space between tokens; none before the first or after the last (nor
                // a second one where a comment was dropped).
                if !out.is_empty() && i < b.len() && !out.ends_with(' ') {
                    out.push(' ');
                }
                copied = i;
                continue;
            }
            // A comment: no quote, dollar or digit in it is a constant's. Kept as written
            // (copied with the run), or with `drop_comments` dropped.
            b'-' | b'/' if let Some(end) = comment_end(b, i) => {
                comments.push((i, end));
                if !drop_comments {
                    i = end;
                    continue;
                }
                out.push_str(&sql[copied..i]);
                i = end;
                // A comment separates tokens as white space does: one space for both.
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                if !out.is_empty() && i < b.len() && !out.ends_with(' ') {
                    out.push(' ');
                }
                copied = i;
                continue;
            }
            // E'..' allows backslash escapes (`xE'..'` is `xE` and a string).
            b'\'' if i > copied && matches!(b[i - 1], b'E' | b'e') && !ident_before(b, i - 1) => {
                Some((i - 1, string_end(b, i + 1, true)))
            }
            // Bit strings B'..' and X'..', Unicode strings U&'..': the prefix is the constant's.
            b'\''
                if i > copied
                    && matches!(b[i - 1], b'B' | b'b' | b'X' | b'x')
                    && !ident_before(b, i - 1) =>
            {
                Some((i - 1, string_end(b, i + 1, false)))
            }
            b'\''
                if i > copied + 1
                    && b[i - 1] == b'&'
                    && matches!(b[i - 2], b'U' | b'u')
                    && !ident_before(b, i - 2) =>
            {
                Some((i - 2, string_end(b, i + 1, false)))
            }
            b'\'' => Some((i, string_end(b, i + 1, false))),
            // A dollar-quoted string ($$..$$, $tag$..$tag$); `$1` is a parameter, kept.
            b'$' if !ident_before(b, i) => {
                dollar_tag_end(b, i).map(|body| (i, dollar_string_end(b, i, body)))
            }
            b'"' => {
                // A quoted identifier: kept, white space and all.
                i = b[i + 1..]
                    .iter()
                    .position(|&d| d == b'"')
                    .map_or(b.len(), |p| i + p + 2);
                continue;
            }
            b'0'..=b'9' if !ident_before(b, i) => Some((i, number_end(b, i))),
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) && !ident_before(b, i) => {
                Some((i, number_end(b, i)))
            }
            // A sign belongs to its number (the parser folds it, so pg_stat_statements shows
            // `+ $1` for `+ -5` too); after an operand a minus is a subtraction.
            b'-' if starts_number(b, i + 1) && !operand_before(b, i, &comments) => {
                Some((i, number_end(b, i + 1)))
            }
            _ => None,
        };
        match constant {
            Some((start, end)) => {
                out.push_str(&sql[copied..start]);
                push_param(out, next_param);
                next_param = next_param.saturating_add(1);
                i = end;
                copied = end;
            }
            None => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    if drop_comments {
        // A comment at the end leaves the space before it.
        while out.ends_with(' ') {
            out.pop();
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

/// `$n` written in place, digits by hand: formatting (into a new String per constant, then
/// with `write!`) showed in profiles.
fn push_param(out: &mut String, n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut v = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push('$');
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// Where a string constant whose body starts at `i` ends (after its closing quote, or at the
/// end): `''` doubles a quote; in `E'..'` a backslash escapes the next byte.
fn string_end(b: &[u8], mut i: usize, escapes: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if escapes => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// Where the opening tag of a dollar-quoted string at `i` ends (`$$` or `$tag$`, a tag
/// being an identifier without `$`), None when `$` opens no such string (a `$1`).
fn dollar_tag_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    let first = *b.get(j)?;
    if first != b'$' {
        if !(first.is_ascii_alphabetic() || first == b'_' || first >= 0x80) {
            return None;
        }
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
            j += 1;
        }
        if b.get(j) != Some(&b'$') {
            return None;
        }
    }
    Some(j + 1)
}

/// Where the dollar-quoted string opened by the tag at `start..body` ends: after the same
/// tag closing it, or at the end.
fn dollar_string_end(b: &[u8], start: usize, body: usize) -> usize {
    let tag = &b[start..body];
    b[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(b.len(), |p| body + p + tag.len())
}

/// Where a comment starting at `i` ends (`-- ...` before its line's end, `/* ... */` after
/// its close, nested ones within), None when no comment starts there.
fn comment_end(b: &[u8], i: usize) -> Option<usize> {
    match (b[i], b.get(i + 1)) {
        (b'-', Some(b'-')) => Some(
            b[i..]
                .iter()
                .position(|&c| c == b'\n' || c == b'\r')
                .map_or(b.len(), |p| i + p),
        ),
        (b'/', Some(b'*')) => {
            let (mut depth, mut j) = (0usize, i);
            while j + 1 < b.len() {
                match (b[j], b[j + 1]) {
                    (b'/', b'*') => (depth, j) = (depth + 1, j + 2),
                    (b'*', b'/') => {
                        (depth, j) = (depth - 1, j + 2);
                        if depth == 0 {
                            return Some(j);
                        }
                    }
                    _ => j += 1,
                }
            }
            Some(b.len())
        }
        _ => None,
    }
}

/// Where a number starting at `i` ends: digits, letters (hex, exponents, a bad suffix stays
/// with it), dots, underscores, and the sign of an exponent.
fn number_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
        if (b[i] == b'e' || b[i] == b'E') && matches!(b.get(i + 1), Some(b'+' | b'-')) {
            i += 1;
        }
        i += 1;
    }
    i.min(b.len())
}

/// A number starts at `i`: a digit, or a dot and a digit.
fn starts_number(b: &[u8], i: usize) -> bool {
    match b.get(i) {
        Some(d) if d.is_ascii_digit() => true,
        Some(b'.') => b.get(i + 1).is_some_and(u8::is_ascii_digit),
        _ => false,
    }
}

/// What precedes the minus at `i` (white space skipped) ends an operand, so the minus
/// subtracts: an identifier, a constant, a closing bracket or quote, a parameter.
fn operand_before(b: &[u8], i: usize, comments: &[(usize, usize)]) -> bool {
    let mut p = i;
    loop {
        while p > 0 && b[p - 1].is_ascii_whitespace() {
            p -= 1;
        }
        // A comment ending here is passed over like white space.
        match comments.iter().rev().find(|&&(_, end)| end == p) {
            Some(&(start, _)) if start < p => p = start,
            _ => break,
        }
    }
    p > 0 && {
        let c = b[p - 1];
        c.is_ascii_alphanumeric()
            || matches!(c, b'_' | b')' | b'"' | b'\'' | b']' | b'$')
            || c >= 0x80
    }
}

/// Bytes where normalizing may change something: white space, quotes, digits, dots, minus
/// signs, dollars, slashes (comments). Every other byte is copied.
static MAY_CHANGE: [bool; 256] = byte_set(b" \t\n\r\x0c'\"0123456789.-$/");
/// The same without the space, for a statement [`singly_spaced`].
static MAY_CHANGE_BUT_SPACE: [bool; 256] = byte_set(b"\t\n\r\x0c'\"0123456789.-$/");

const fn byte_set(bytes: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut k = 0;
    while k < bytes.len() {
        t[bytes[k] as usize] = true;
        k += 1;
    }
    t
}

/// True when the only white space in `b` is single spaces between other bytes: no tab, line
/// break or form feed (a space beside one would be copied with the letters before it), no two
/// spaces in a row, none first or last. Normalizing keeps each such space as it is.
fn singly_spaced(b: &[u8]) -> bool {
    b.first() != Some(&b' ')
        && b.last() != Some(&b' ')
        && memchr::memchr3(b'\t', b'\n', b'\r', b).is_none()
        && memchr::memchr(b'\x0c', b).is_none()
        && !two_spaces(b)
}

/// True when `b` has two spaces in a row. Eight bytes at a time, each block overlapping the
/// last by one (a general substring search costs more than normalizing on statements this
/// short).
fn two_spaces(b: &[u8]) -> bool {
    const LOW: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let mut i = 0;
    while let Some(block) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(block);
        let x = u64::from_le_bytes(word) ^ 0x2020_2020_2020_2020;
        // 0x80 in exactly the bytes that were spaces (zero now).
        let spaces = !(((x & LOW) + LOW) | x | LOW);
        if spaces & (spaces >> 8) != 0 {
            return true;
        }
        i += 7;
    }
    b[i.min(b.len())..].windows(2).any(|w| w == b"  ")
}

/// The first position from `i` on whose byte is in `table` (or the end).
#[inline(always)]
fn unchanged_from(b: &[u8], mut i: usize, table: &[bool; 256]) -> usize {
    // Eight bytes at a time, their lookups or-ed together: one branch per block.
    while let Some(block) = b.get(i..i + 8) {
        let hit = block
            .iter()
            .fold(false, |hit, &c| hit | table[usize::from(c)]);
        if hit {
            break;
        }
        i += 8;
    }
    while i < b.len() && !table[usize::from(b[i])] {
        i += 1;
    }
    i
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
        // What is quoted or commented holds no parameter: `'$5'`, `$q$ $9 $q$`, `/* $3 */`.
        i = match b[i] {
            b'\'' => {
                let escapes = i > 0 && matches!(b[i - 1], b'E' | b'e') && !ident_before(b, i - 1);
                string_end(b, i + 1, escapes)
            }
            b'"' => b[i + 1..]
                .iter()
                .position(|&d| d == b'"')
                .map_or(b.len(), |p| i + p + 2),
            b'-' | b'/' if let Some(end) = comment_end(b, i) => end,
            b'$' if !ident_before(b, i) => {
                if let Some(body) = dollar_tag_end(b, i) {
                    dollar_string_end(b, i, body)
                } else {
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
                    j.max(i + 1)
                }
            }
            _ => i + 1,
        };
    }
    max
}

#[cfg(test)]
mod tests {
    use super::{Shown, normalize, singly_spaced, two_spaces};

    #[test]
    fn comments_and_quotes_do_not_mislead_signs_or_numbering() {
        // A minus after an operand subtracts, a comment between them or not.
        assert_eq!(normalize("select a /* c */ -1"), "select a /* c */ -$1");
        assert_eq!(normalize("select a - /* c */ 1"), "select a - /* c */ $1");
        assert_eq!(Shown::Redacted.text("select a -- c\n -1"), "select a -$1");
        assert_eq!(normalize("select (/* c */ -1)"), "select (/* c */ $1)");
        // Numbering starts after the highest parameter, not after a `$n` in a string or comment.
        assert_eq!(normalize("select '$5', $1, 2"), "select $2, $1, $3");
        assert_eq!(normalize("select $q$ $9 $q$, 1"), "select $1, $2");
        assert_eq!(normalize("select 1 /* $7 */"), "select $1 /* $7 */");
        assert_eq!(normalize("select \"$4\", 1"), "select \"$4\", $1");
        assert_eq!(normalize("select E'\\' $3', $2"), "select $3, $2");
    }

    #[test]
    fn skipping_spaces_changes_nothing() {
        // Every statement of up to four of these pieces, normalized with and without stops at
        // spaces, comments kept and dropped: the same text.
        let pieces = [
            "a", " ", "  ", "\t", "\n", "1", "'x'", "-- c\n", "/* c */", ";", "$1", "-2", "E'y'",
        ];
        let mut statement = [0usize; 4];
        let (mut fast, mut slow) = (String::new(), String::new());
        loop {
            for n in 1..=statement.len() {
                let sql: String = statement[..n].iter().map(|&p| pieces[p]).collect();
                for drop in [false, true] {
                    super::normalize_with(&sql, &mut fast, drop);
                    super::normalize_using(&sql, &mut slow, drop, &super::MAY_CHANGE);
                    assert_eq!(fast, slow, "{sql:?} (comments dropped: {drop})");
                }
            }
            // The next combination, as an odometer.
            let Some(k) = statement.iter().position(|&p| p + 1 < pieces.len()) else {
                break;
            };
            statement[k] += 1;
            statement[..k].fill(0);
        }
    }

    #[test]
    fn two_spaces_are_found_wherever_they_are() {
        let base = "select a from t where b = c and d = e";
        assert!(!two_spaces(base.as_bytes()));
        assert!(singly_spaced(base.as_bytes()));
        for at in 0..base.len() {
            let mut s = base.to_string();
            s.insert_str(at, "  ");
            assert!(two_spaces(s.as_bytes()), "{s:?}");
            assert!(!singly_spaced(s.as_bytes()));
            // Normalizing takes the same way either way: one space where there were more.
            let once = normalize(&s);
            assert!(!once.contains("  "), "{once:?}");
        }
        for short in ["", " ", "a", "  ", "a  ", "ab cd"] {
            assert_eq!(
                two_spaces(short.as_bytes()),
                short.contains("  "),
                "{short:?}"
            );
        }
        assert!(!singly_spaced(b" a") && !singly_spaced(b"a ") && !singly_spaced(b"a\tb"));
    }

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
        // an escape string after punctuation too (not `x` then a string: `xE'..'` is one)
        assert_eq!(normalize("select f(E'a\\'b',e'c')"), "select f($1,$2)");
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
        // the highest parameter number there is: no overflow
        assert_eq!(
            normalize("select $4294967295, 7"),
            "select $4294967295, $4294967295"
        );
        assert_eq!(normalize("  BEGIN;  "), "BEGIN");
        assert_eq!(normalize("select 1 ; ;"), "select $1");
        assert_eq!(
            normalize("select 'ü', ünïcode_1 from x"),
            "select $1, ünïcode_1 from x"
        );
    }

    #[test]
    fn dollar_quoted_bit_and_unicode_strings_are_constants() {
        assert_eq!(
            normalize("select $$it's$$, $a$x $$ y$a$ as z"),
            "select $1, $2 as z"
        );
        assert_eq!(normalize("select $1, $$s$$"), "select $1, $2");
        assert_eq!(
            normalize("select B'0101', x'ff', U&'d\\0061t'"),
            "select $1, $2, $3"
        );
        // `a$b` is an identifier; `f$1`'s dollar continues it; an unclosed string runs out
        assert_eq!(
            normalize("select a$b, f$1 from t"),
            "select a$b, f$1 from t"
        );
        assert_eq!(normalize("select $t$never closed"), "select $1");
        assert_eq!(normalize("select xb'1'"), "select xb$1");
    }

    #[test]
    fn redacted_statements_lose_their_comments_too() {
        let r = |s: &str| Shown::Redacted.text(s);
        assert_eq!(r("select 1 -- token abc\n, 2"), "select $1 , $2");
        assert_eq!(
            r("/* user=bob */ select /* a /* nested */ one */ x"),
            "select x"
        );
        assert_eq!(r("select a/*c*/from t"), "select a from t");
        assert_eq!(r("select 1; -- the end"), "select $1");
        assert_eq!(r("select 1 /* unclosed"), "select $1");
        // not comments: a minus, a division, inside strings and quoted identifiers
        assert_eq!(
            r("select a - -1, b / 2, '--x', \"/*y*/\""),
            "select a - $1, b / $2, $3, \"/*y*/\""
        );
        // normalized text keeps them as written: quotes, dollars and digits in them too
        assert_eq!(normalize("select 1 /* c */"), "select $1 /* c */");
        assert_eq!(
            normalize("/* $$ don't 7 */ select 'a' -- it's 8\n, 2"),
            "/* $$ don't 7 */ select $1 -- it's 8 , $2"
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
