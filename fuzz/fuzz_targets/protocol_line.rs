//! A request line, decoded as the daemon decodes it, then each request's params parsed and
//! validated as `generate` / `embed` / `rerank` / `cache.clear` would: nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steadytext::config::Config;
use steadytext::core::validate::{self, RequestSettings};
use steadytext::protocol::wire::{decode, Decoded};
use steadytext::protocol::{CacheClearParams, EmbedParams, GenerateParams, RerankParams, RpcError};

fuzz_target!(|line: &[u8]| {
    let settings = RequestSettings::from(&Config::default());
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
                    let _ = validate::generate(&p, &settings);
                }
                if let Ok(p) = serde_json::from_value::<EmbedParams>(r.params.clone()) {
                    let _ = validate::embed(&p, &settings.limits);
                }
                if let Ok(p) = serde_json::from_value::<RerankParams>(r.params.clone()) {
                    let _ = validate::rerank(&p, &settings.limits);
                }
                let _ = serde_json::from_value::<CacheClearParams>(r.params);
            }
            Err((_, e)) => {
                let _ = RpcError::from(&e);
            }
        }
    }
});
