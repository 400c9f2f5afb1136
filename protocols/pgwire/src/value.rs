//! Bind parameter values as a person reads them: text-format values as SQL literals, binary
//! ones decoded for the common type OIDs, anything else as hex. Never panics on any bytes.

/// Longest rendering of one value before it is cut (with "…").
pub const MAX_VALUE_CHARS: usize = 64;

/// Renders one parameter: `None` is NULL, `format` 0 text / 1 binary, `oid` its declared type
/// (0 when the client left it to the server).
pub fn render(value: Option<&[u8]>, format: i16, oid: u32) -> String {
    let Some(v) = value else {
        return "NULL".to_string();
    };
    if format == 0 {
        return literal(&String::from_utf8_lossy(v));
    }
    binary(v, oid).unwrap_or_else(|| hex(v))
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_VALUE_CHARS) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// A quoted SQL literal (quotes doubled), cut when long.
fn literal(s: &str) -> String {
    format!("'{}'", cut(s).replace('\'', "''"))
}

fn hex(v: &[u8]) -> String {
    let shown = &v[..v.len().min(MAX_VALUE_CHARS / 2)];
    let mut out = String::from("'\\x");
    for b in shown {
        out.push_str(&format!("{b:02x}"));
    }
    if shown.len() < v.len() {
        out.push('…');
    }
    out.push('\'');
    out
}

fn be<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    v.try_into().ok()
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// PostgreSQL's epoch, 2000-01-01, in days since 1970-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

fn date(days_since_2000: i64) -> String {
    let (y, m, d) = civil(days_since_2000 + PG_EPOCH_DAYS);
    format!("{y:04}-{m:02}-{d:02}")
}

fn timestamp(us_since_2000: i64) -> String {
    let days = us_since_2000.div_euclid(86_400_000_000);
    let us = us_since_2000.rem_euclid(86_400_000_000);
    let (h, min, s, frac) = (
        us / 3_600_000_000,
        us / 60_000_000 % 60,
        us / 1_000_000 % 60,
        us % 1_000_000,
    );
    format!("{} {h:02}:{min:02}:{s:02}.{frac:06}", date(days))
}

/// Binary values of common types (bool, integers, floats, text types, uuid, date, timestamp,
/// jsonb); None when the type is unknown or the bytes do not fit it.
fn binary(v: &[u8], oid: u32) -> Option<String> {
    Some(match oid {
        16 => (if *v.first()? != 0 { "true" } else { "false" }).to_string(),
        21 => i16::from_be_bytes(be(v)?).to_string(),
        23 => i32::from_be_bytes(be(v)?).to_string(),
        20 => i64::from_be_bytes(be(v)?).to_string(),
        26 => u32::from_be_bytes(be(v)?).to_string(),
        700 => f32::from_be_bytes(be(v)?).to_string(),
        701 => f64::from_be_bytes(be(v)?).to_string(),
        // text, varchar, bpchar, name, json
        25 | 1043 | 1042 | 19 | 114 => literal(std::str::from_utf8(v).ok()?),
        3802 if v.first() == Some(&1) => literal(std::str::from_utf8(&v[1..]).ok()?),
        2950 => {
            let b: [u8; 16] = be(v)?;
            let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!(
                "'{}-{}-{}-{}-{}'",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        }
        1082 => format!("'{}'", date(i64::from(i32::from_be_bytes(be(v)?)))),
        1114 | 1184 => format!("'{}'", timestamp(i64::from_be_bytes(be(v)?))),
        _ => return None,
    })
}

/// Renders all parameters of a statement as `$1='a', $2=42`; `redact` shows only how many.
pub fn render_all(params: &crate::conn::Params, redact: bool) -> String {
    let values = params.values();
    if values.is_empty() {
        return String::new();
    }
    if redact {
        return format!("{} parameters redacted", values.len());
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "${}={}",
                i + 1,
                render(v.as_deref(), params.format(i), params.type_oid(i))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_values_are_quoted_literals() {
        assert_eq!(render(Some(b"it's"), 0, 0), "'it''s'");
        assert_eq!(render(None, 0, 23), "NULL");
        let long = "x".repeat(100);
        assert!(render(Some(long.as_bytes()), 0, 25).ends_with("…'"));
    }

    #[test]
    fn binary_values_of_common_types() {
        assert_eq!(render(Some(&42i32.to_be_bytes()), 1, 23), "42");
        assert_eq!(render(Some(&(-7i64).to_be_bytes()), 1, 20), "-7");
        assert_eq!(render(Some(&[1]), 1, 16), "true");
        assert_eq!(render(Some(&1.5f64.to_be_bytes()), 1, 701), "1.5");
        assert_eq!(render(Some(b"\x01{\"a\":1}"), 1, 3802), "'{\"a\":1}'");
        // 2024-02-29 is 8825 days after 2000-01-01.
        assert_eq!(
            render(Some(&8825i32.to_be_bytes()), 1, 1082),
            "'2024-02-29'"
        );
        let us: i64 = 8825 * 86_400_000_000 + 3_723_000_004;
        assert_eq!(
            render(Some(&us.to_be_bytes()), 1, 1114),
            "'2024-02-29 01:02:03.000004'"
        );
        assert_eq!(
            render(Some(&[0x12; 16]), 1, 2950),
            "'12121212-1212-1212-1212-121212121212'"
        );
    }

    #[test]
    fn unknown_or_misfit_binary_is_hex() {
        assert_eq!(render(Some(&[0xde, 0xad]), 1, 0), "'\\xdead'");
        // int4 with 3 bytes does not fit: hex, not a panic.
        assert_eq!(render(Some(&[1, 2, 3]), 1, 23), "'\\x010203'");
        assert_eq!(render(Some(&[0xff, 0xfe]), 1, 25), "'\\xfffe'");
    }

    #[test]
    fn all_parameters_and_redaction() {
        let p = crate::conn::Params::new(vec![Some(b"5".to_vec()), None], vec![], vec![]);
        assert_eq!(render_all(&p, false), "$1='5', $2=NULL");
        assert_eq!(render_all(&p, true), "2 parameters redacted");
    }
}
