//! Arbitrary bytes as a Redis connection's traffic: chunks for either side, capture gaps,
//! joined at the start or midway. The decoder must never panic or hang, and what it reports
//! must be consistent (a command finishes after it started; secret ranges lie inside the
//! chunk they were found in; no secret argument keeps bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbpf_resp::{Connection, Event};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut c = Connection::new(flags & 1 == 1);
    let mut ts = 0u64;
    let mut events = vec![];
    // Each chunk: a control byte (bit 0: server side, bits 1-2: a gap follows, bits 3-7: the
    // chunk's length in units of 4 bytes), then the bytes.
    while let Some((&ctl, tail)) = rest.split_first() {
        let len = (usize::from(ctl >> 3) * 4).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        ts += 1;
        let missing = u64::from((ctl >> 1) & 3) * 7;
        if ctl & 1 == 0 {
            c.client_bytes(ts, chunk, missing, &mut events);
            for &(a, b) in c.secrets() {
                assert!(a <= b && b <= chunk.len());
            }
        } else {
            c.server_bytes(ts, chunk, missing, &mut events);
        }
    }
    c.close(ts + 1, &mut events);
    for e in &events {
        if let Event::Command(done) = e {
            assert!(done.finished_ns >= done.command.started_ns);
            assert!(done.command.args().all(|a| !a.secret || a.data.is_empty()));
        }
    }
});
