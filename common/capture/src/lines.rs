//! The live line both wire tools print per request: `[TIME] PID CONNECTION DURATION STATUS
//! SIZE TEXT`, a header before the first, the peer cut from the left to fit its column (the
//! port is the part that tells connections apart), the line cut to the terminal's width.

use std::io;

use pgbpf_common::output::{self, Output};

/// A tool's column widths and names.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub peer_width: usize,
    pub duration_width: usize,
    pub status_width: usize,
    /// The size column: `ROWS`, `REPLY`.
    pub size_name: &'static str,
    /// The last column: `STATEMENT`, `COMMAND`.
    pub text_name: &'static str,
}

/// One request's line, as the tool has it.
pub struct Line<'a> {
    pub start_unix_ns: u64,
    pub pid: u32,
    pub peer: &'a str,
    /// None: no duration of its own (shown as `-`).
    pub duration_ns: Option<u64>,
    pub status: &'a str,
    pub size: Option<u64>,
    pub text: &'a str,
}

/// Writes lines under one header.
#[derive(Debug)]
pub struct Lines {
    layout: Layout,
    header_done: bool,
}

impl Lines {
    pub fn new(layout: Layout) -> Lines {
        Lines {
            layout,
            header_done: false,
        }
    }

    pub fn write(&mut self, sink: &mut Output, l: &Line) -> io::Result<()> {
        let Layout {
            peer_width,
            duration_width,
            status_width,
            ..
        } = self.layout;
        let mut out = String::new();
        if !self.header_done {
            self.header_done = true;
            if sink.timestamp {
                out.push_str(&format!("{:<8} ", "TIME"));
            }
            out.push_str(&format!(
                "{:>7} {:<peer_width$} {:>duration_width$} {:<status_width$} {:>6} {}\n",
                "PID",
                "CONNECTION",
                "DURATION",
                "STATUS",
                self.layout.size_name,
                self.layout.text_name
            ));
        }
        let mut line = String::new();
        if sink.timestamp {
            line.push_str(&output::hms_of((l.start_unix_ns / 1_000_000_000) as i64));
            line.push(' ');
        }
        let chars = l.peer.chars().count();
        let peer = if chars > peer_width {
            let kept: String = l.peer.chars().skip(chars + 1 - peer_width).collect();
            format!("…{kept}")
        } else {
            l.peer.to_string()
        };
        line.push_str(&format!(
            "{:>7} {:<peer_width$} {:>duration_width$} {:<status_width$} {:>6} {}",
            l.pid,
            peer,
            l.duration_ns.map_or("-".into(), output::human_ns),
            l.status,
            l.size.map_or("-".into(), |n| n.to_string()),
            l.text
        ));
        out.push_str(&output::cut_to_width(&line, sink.width));
        out.push('\n');
        sink.text(&out)
    }
}
