//! Arbitrary bytes after a capture file's header: reading them into replay events must never
//! panic or hang, and every Send holds whole frontend messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg_replay::{
    capture::CaptureSource,
    source::{Event, Source, Window},
};

fuzz_target!(|data: &[u8]| {
    // A valid header (version 2, PostgreSQL), then the fuzzer's records.
    let mut file = b"PGBPFCAP".to_vec();
    file.extend(2u32.to_le_bytes());
    file.extend(1u32.to_le_bytes());
    file.extend(0i64.to_le_bytes());
    file.extend(data);
    let Ok(mut source) = CaptureSource::from_reader(
        "fuzz",
        Box::new(std::io::Cursor::new(file)),
        Window::default(),
    ) else {
        return;
    };
    for _ in 0..1_000_000 {
        match source.next_event() {
            Ok(Some(Event::Send { bytes, .. })) => {
                let mut i = 0;
                while i < bytes.len() {
                    let len = u32::from_be_bytes(bytes[i + 1..i + 5].try_into().unwrap());
                    i += 1 + len as usize;
                }
                assert_eq!(i, bytes.len(), "a Send of partial messages");
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
    panic!("more events than the input could hold");
});
