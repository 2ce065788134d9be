//! A request line, decoded as the daemon decodes it, then each request's params parsed and
//! validated as `generate` / `embed` / `cache.clear` would: nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steadytext::config::Config;
use steadytext::protocol::wire::{decode, Decoded};
use steadytext::protocol::{EmbedParams, GenerateParams, RpcError};

fuzz_target!(|line: &[u8]| {
    let config = Config::default();
    let requests = match decode(line) {
        Decoded::One(r) => vec![r],
        Decoded::Batch(rs) => rs,
        Decoded::BadBatch(e) => {
            let _ = RpcError::from(&e);
            return;
        }
    };
    for request in requests {
        match request {
            Ok(r) => {
                if let Ok(p) = serde_json::from_value::<GenerateParams>(r.params.clone()) {
                    let _ = p.to_request(&config);
                }
                if let Ok(p) = serde_json::from_value::<EmbedParams>(r.params) {
                    let _ = p.validate(&config.limits);
                }
            }
            Err((_, e)) => {
                let _ = RpcError::from(&e);
            }
        }
    }
});
