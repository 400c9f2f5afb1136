//! Arbitrary bytes as a whole capture file, header included (the first byte picks the
//! protocol it is opened as, the second whether it is read whole or as one thread's share of
//! its connections): what `pgwire_trace --read` and `redis_trace --read` read first.
//! Reading it must never panic, hang or allocate from a length field beyond the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbpf_capture::file::{Reader, Record};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, file)) = data.split_first() else {
        return;
    };
    let protocol = if pick & 1 == 0 {
        &pgbpf_capture::POSTGRES
    } else {
        &pgbpf_capture::REDIS
    };
    let Ok(mut reader) = Reader::new(std::io::Cursor::new(file), protocol) else {
        return;
    };
    // A share: the connections of odd ids (the others' records passed over unread).
    let share = pick & 2 != 0;
    let mut r = Record::default();
    // Each record takes at least its fixed part of the file: more would be a loop.
    for _ in 0..=file.len() {
        match reader.next_kept_into(&mut r, |conn| !share || conn % 2 == 1) {
            Ok(true) => assert!(r.payload.len() <= file.len()),
            Ok(false) | Err(_) => return,
        }
    }
    panic!("more records than bytes");
});
