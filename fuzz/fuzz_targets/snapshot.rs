//! A cache snapshot file, decoded and validated as the loader does, then every entry walked:
//! damaged or hostile files must be refused, never crash the daemon. The same bytes are also
//! tried as a bare payload, past the checksum (which guards against damage, not against someone
//! who can write the state folder), to reach the archive validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steadytext::cache::snapshot::{decode, decode_payload, Loaded};

fuzz_target!(|bytes: &[u8]| {
    walk(decode(bytes));
    walk(decode_payload(bytes));
});

fn walk(decoded: Result<Loaded, String>) {
    if let Ok(loaded) = decoded {
        let data = loaded.data();
        let mut sum = 0u64;
        for r in data.generation.iter() {
            sum = sum.wrapping_add(r.text.len() as u64 + r.token_ids.len() as u64 + u64::from(r.finish_reason));
        }
        for r in data.embedding.iter() {
            sum = sum.wrapping_add(r.vector.len() as u64);
        }
        std::hint::black_box(sum);
    }
}
