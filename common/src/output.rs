//! Presentation helpers: human sizes and durations, bcc-style log2 histograms, tables that
//! fit the terminal, NDJSON lines, timestamps.

use std::io::{self, Write};

use tabled::{
    builder::Builder,
    settings::{Style, Width, peaker::Priority},
};

/// Bytes as postgres-bcc prints them: `0B`, `928K`, `1.5M`, `72M`, `3.1G`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else if value < 9.95 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

/// A duration in nanoseconds as `850ns`, `12.3us`, `35.2ms`, `1.24s`, `2m03s`.
pub fn human_ns(ns: u64) -> String {
    let f = ns as f64;
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}us", f / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}ms", f / 1e6),
        1_000_000_000..60_000_000_000 => format!("{:.2}s", f / 1e9),
        _ => format!("{}m{:02}s", ns / 60_000_000_000, (ns / 1_000_000_000) % 60),
    }
}

/// The log2 histogram slot of `v` (0 for 0 and 1, i for [2^i, 2^(i+1))), as the kernel side's
/// `pgbpf_common_ebpf::log2_slot` computes it.
pub fn log2_slot(v: u64) -> usize {
    if v <= 1 {
        0
    } else {
        63 - v.leading_zeros() as usize
    }
}

/// Renders a log2 histogram like bcc's `print_log2_hist`: slot i holds values in
/// [2^i, 2^(i+1)) (slot 0 holds 0 and 1). Leading and trailing empty slots are left out.
pub fn log2_histogram(unit: &str, slots: &[u64]) -> String {
    let Some(last) = slots.iter().rposition(|&c| c != 0) else {
        return String::new();
    };
    let max = slots.iter().copied().max().unwrap_or(0).max(1);
    let mut out = format!("{:>24} : count     distribution\n", unit);
    for (i, &count) in slots.iter().enumerate().take(last + 1) {
        let lo = if i == 0 { 0 } else { 1u64 << i };
        let hi = if i >= 63 {
            u64::MAX
        } else {
            (1u64 << (i + 1)) - 1
        };
        let stars = (count as u128 * 40 / max as u128) as usize;
        out.push_str(&format!(
            "{:>12} -> {:<10}: {:<9} |{:<40}|\n",
            lo,
            hi,
            count,
            "*".repeat(stars)
        ));
    }
    out
}

/// Appends the table of the first `top` of `items` (already in order), each made a row by
/// `row`, then "(N more rows)" when some were left out; nothing when `items` is empty.
pub fn top_table<T>(
    out: &mut String,
    header: &[&str],
    items: &[T],
    top: usize,
    width: Option<usize>,
    row: impl FnMut(&T) -> Vec<String>,
) {
    if items.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = items.iter().take(top).map(row).collect();
    out.push_str(&table(header, &rows, width));
    out.push('\n');
    more_rows(out, items.len(), top);
}

/// "(N more rows)" under a table cut at `top` of its `rows` rows.
pub fn more_rows(out: &mut String, rows: usize, top: usize) {
    if rows > top {
        out.push_str(&format!("({} more rows)\n", rows - top));
    }
}

/// Width available for tables: the terminal's, or none (no cutting) when stdout is not one.
pub fn terminal_width() -> Option<usize> {
    terminal_size::terminal_size_of(io::stdout()).map(|(w, _)| w.0 as usize)
}

/// A plain table with `header`, cut to `width` by shrinking the widest columns first.
pub fn table(header: &[&str], rows: &[Vec<String>], width: Option<usize>) -> String {
    let mut b = Builder::default();
    b.push_record(header.iter().map(|h| h.to_string()));
    for r in rows {
        b.push_record(r.clone());
    }
    let mut t = b.build();
    t.with(Style::blank());
    if let Some(w) = width {
        t.with(Width::truncate(w).priority(Priority::max(true)).suffix("…"));
    }
    // The last column is padded to its widest cell: no trailing blanks on every line.
    t.to_string()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A statement on one line: runs of whitespace (newlines too) become one space.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A line cut to `width` characters, ending in `…` when cut; unchanged without a width.
pub fn cut_to_width(line: &str, width: Option<usize>) -> String {
    match width {
        Some(w) if line.chars().count() > w => {
            let mut s: String = line.chars().take(w.saturating_sub(1)).collect();
            s.push('…');
            s
        }
        _ => line.to_string(),
    }
}

/// Where a tool's data goes: stdout (buffered; the runtime flushes after each step) as
/// tables and lines, or as NDJSON records. Every write returns `io::Result`: a closed pipe
/// travels up as an error and [`crate::runtime`] ends the tool quietly.
pub struct Output {
    writer: Box<dyn Write>,
    /// `--json`: records, not tables.
    pub json: bool,
    /// `-T`: lines and report headers begin with the time.
    pub timestamp: bool,
    /// The terminal's width, when stdout is one (tables and lines are cut to it).
    pub width: Option<usize>,
}

impl Output {
    /// Buffered stdout, shaped by the output arguments.
    pub fn stdout(args: &crate::cli::OutputArgs) -> Output {
        Output {
            writer: Box::new(io::BufWriter::with_capacity(64 * 1024, io::stdout())),
            json: args.json,
            timestamp: args.timestamp,
            width: terminal_width(),
        }
    }

    /// Output into any writer (tests, a file), without a width.
    pub fn to_writer(writer: Box<dyn Write>, json: bool) -> Output {
        Output {
            writer,
            json,
            timestamp: false,
            width: None,
        }
    }

    /// Writes text as it is.
    pub fn text(&mut self, text: &str) -> io::Result<()> {
        self.writer.write_all(text.as_bytes())
    }

    /// Writes one NDJSON line: `record` serialized (a `#[derive(Serialize)]` type).
    pub fn record<T: serde::Serialize + ?Sized>(&mut self, record: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.writer, record)?;
        self.writer.write_all(b"\n")
    }

    /// Sends what is buffered to stdout.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// "HH:MM:SS " with `-T`, else nothing: the start of a report header.
    pub fn prefix(&self) -> String {
        if self.timestamp {
            format!("{} ", hms_now())
        } else {
            String::new()
        }
    }
}

/// Local wall-clock time as HH:MM:SS, for `-T` and interval headers.
pub fn hms_now() -> String {
    // SAFETY: time(NULL).
    hms_of(unsafe { libc::time(std::ptr::null_mut()) })
}

/// Local time of `unix_secs` as HH:MM:SS.
pub fn hms_of(unix_secs: i64) -> String {
    // SAFETY: localtime_r with a zeroed out-parameter we own.
    unsafe {
        let t = unix_secs as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return "??:??:??".into();
        }
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

/// Nanoseconds since the Unix epoch: `ts_ns`, the timestamp of every NDJSON record.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Wall-clock time minus CLOCK_MONOTONIC (the kernel's `bpf_ktime_get_ns`), in ns: added to
/// a kernel timestamp, it gives the Unix time of the event.
pub fn wall_offset_ns() -> i64 {
    use nix::time::{ClockId, clock_gettime};
    let ns = |c| clock_gettime(c).map_or(0, |t| t.tv_sec() * 1_000_000_000 + t.tv_nsec());
    ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_MONOTONIC)
}

/// CLOCK_MONOTONIC now, in ns (the clock of the kernel's timestamps).
pub fn mono_ns() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// The Unix time (ns) of the monotonic time `mono_ns`, given [`wall_offset_ns`].
pub fn wall_of(wall_offset_ns: i64, mono_ns: u64) -> u64 {
    (mono_ns as i64).saturating_add(wall_offset_ns).max(0) as u64
}

/// A NUL-padded kernel string (comm) as text.
pub fn c_str(bytes: &[u8]) -> String {
    let n = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..n]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_flattened_and_cut() {
        assert_eq!(one_line(" select\n  1\t; "), "select 1 ;");
        assert_eq!(cut_to_width("abcdef", Some(4)), "abc…");
        assert_eq!(cut_to_width("abcd", Some(4)), "abcd");
        assert_eq!(cut_to_width("abcdef", None), "abcdef");
    }

    #[test]
    fn sizes_like_postgres_bcc() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(56), "56B");
        assert_eq!(human_bytes(928 * 1024), "928K");
        assert_eq!(human_bytes(1024 * 1024), "1.0M");
        assert_eq!(human_bytes(72 * 1024 * 1024), "72M");
        assert_eq!(human_bytes(u64::MAX), "16384P");
    }

    #[test]
    fn durations() {
        assert_eq!(human_ns(850), "850ns");
        assert_eq!(human_ns(12_340), "12.3us");
        assert_eq!(human_ns(35_200_000), "35.2ms");
        assert_eq!(human_ns(1_240_000_000), "1.24s");
        assert_eq!(human_ns(123_000_000_000), "2m03s");
    }

    #[test]
    fn histogram_matches_bcc_layout() {
        let mut slots = [0u64; 64];
        slots[1] = 4;
        slots[5] = 8;
        let h = log2_histogram("usecs", &slots);
        let lines: Vec<&str> = h.lines().collect();
        assert_eq!(lines.len(), 1 + 6, "{h}");
        assert!(lines[0].ends_with("usecs : count     distribution"));
        assert!(
            lines[2].contains("2 -> 3") && lines[2].contains(&"*".repeat(20)),
            "{h}"
        );
        assert!(
            lines[6].contains("32 -> 63") && lines[6].contains(&"*".repeat(40)),
            "{h}"
        );
        assert_eq!(log2_histogram("usecs", &[0; 64]), "");
        // The last slot must not overflow.
        let mut top = [0u64; 64];
        top[63] = 1;
        assert!(log2_histogram("ns", &top).contains("9223372036854775808 -> 18446744073709551615"));
    }

    #[test]
    fn tables_fit_the_width() {
        let rows = vec![vec!["1".to_string(), "x".repeat(200)]];
        let t = table(&["PID", "QUERY"], &rows, Some(60));
        assert!(t.lines().all(|l| l.chars().count() <= 60), "{t}");
        assert!(t.contains('…'));
        let wide = table(&["PID", "QUERY"], &rows, None);
        assert!(wide.contains(&"x".repeat(200)));
    }

    #[test]
    fn comm_strings() {
        assert_eq!(c_str(b"postgres\0\0\0"), "postgres");
        assert_eq!(c_str(b"exactly16bytes!!"), "exactly16bytes!!");
    }
}
