//! Arbitrary bytes as a server log of each format (the first byte picks stderr, csvlog or
//! jsonlog): reading it into replay events must never panic or hang, events come in time
//! order per session, and every Send holds whole frontend messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg_replay::{
    conninfo,
    input::{Format, LogOptions},
    logs::LogSource,
    source::{Event, Source, Window},
};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, log)) = data.split_first() else {
        return;
    };
    let format = match pick % 3 {
        0 => Format::Stderr,
        1 => Format::Csvlog,
        _ => Format::Jsonlog,
    };
    let target = conninfo::parse("host=/nonexistent port=1").expect("a valid conninfo");
    let opts = LogOptions {
        log_line_prefix: "%m [%p] %q%u@%d ".into(),
        strict: false,
        replay: Default::default(),
        target,
        passwords: Default::default(),
        probe_types: false,
    };
    let input = Box::new(std::io::Cursor::new(log.to_vec()));
    let Ok(mut source) = LogSource::from_reader("fuzz", input, format, Window::default(), &opts)
    else {
        return;
    };
    let mut last = std::collections::HashMap::new();
    for _ in 0..100_000 {
        match source.next_event() {
            Ok(Some(e)) => {
                if let Event::Send {
                    key, ts_ns, bytes, ..
                } = &e
                {
                    let prev = last.insert(*key, *ts_ns).unwrap_or(0);
                    assert!(*ts_ns >= prev, "a session went back in time");
                    let mut i = 0;
                    while i < bytes.len() {
                        let len = u32::from_be_bytes(bytes[i + 1..i + 5].try_into().unwrap());
                        i += 1 + len as usize;
                    }
                    assert_eq!(i, bytes.len(), "a Send of partial messages");
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
    panic!("more events than the input could hold");
});
