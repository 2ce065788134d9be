//! ONNX Runtime's CPU arena for encoder sessions, registered once in the process's environment
//! through the C API (the `ort` crate turns a session's own arena on or off but exposes none of
//! its settings). A session's default arena keeps every run's peak for the life of the process
//! (a 64-text, ~256-token embed batch left the daemon +772 MiB). This one grows by what a run asks
//! for (not by powers of two), keeps the encoders' weights out and is shrunk after large runs
//! (see `session`): small runs find their memory there again, large ones give it back. Measured
//! on MiniLM through the daemon, paired against no arena: that 64-text batch 3.4-3.7 s against
//! 5.3-5.5, peak RSS 0.93-0.95 GB against 1.09-1.20, +13-34 MiB after it; one-text embed p50
//! -0.5% and -3%. Allocation only: it changes no number.

use std::ffi::{c_char, CStr};
use std::ptr;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::AsPointer;

/// The arena's settings: `OrtArenaCfg` keys of `CreateArenaCfgV2` (names as ONNX Runtime 1.31.1's
/// library spells them; `arena_extend_strategy` 1 is `kSameAsRequested`, per
/// `onnxruntime_c_api.h`).
const SETTINGS: [(&CStr, usize); 3] = [
    (c"arena_extend_strategy", 1),
    // A sizing choice, not a measured figure: room for a short run of a small encoder (MiniLM's
    // activations for a few hundred tokens) in the first chunk.
    (c"initial_chunk_size_bytes", 8 << 20),
    (c"initial_growth_chunk_size_bytes", 8 << 20),
];

/// ONNX Runtime refused a step of setting the arena up (encoders then run without it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("ONNX Runtime's shared CPU arena could not be set up ({step}): {message}")]
pub struct ArenaError {
    step: &'static str,
    message: String,
}

impl ArenaError {
    fn at(step: &'static str) -> impl FnOnce(ort::Error) -> ArenaError {
        move |e| ArenaError { step, message: e.to_string() }
    }
}

/// Registers the shared CPU arena in `env` (first call only; later calls return the first
/// outcome). Sessions take it with `session.use_env_allocators`.
pub fn register_cpu_arena(env: &Environment) -> Result<(), ArenaError> {
    static REGISTERED: OnceLock<Result<(), ArenaError>> = OnceLock::new();
    REGISTERED.get_or_init(|| register(env)).clone()
}

fn register(env: &Environment) -> Result<(), ArenaError> {
    let api = ort::api();
    let memory = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Arena, MemoryType::Default)
        .map_err(ArenaError::at("the CPU memory description"))?;
    let keys: Vec<*const c_char> = SETTINGS.iter().map(|(k, _)| k.as_ptr()).collect();
    let values: Vec<usize> = SETTINGS.iter().map(|(_, v)| *v).collect();
    let mut config = ptr::null_mut();
    // SAFETY: `keys` and `values` hold `SETTINGS.len()` valid NUL-terminated strings and numbers
    // that outlive the call; `config` is an out-pointer ONNX Runtime fills on success. The
    // returned status is owned and released by `result_from_status`.
    unsafe {
        ort::Error::result_from_status((api.CreateArenaCfgV2)(keys.as_ptr(), values.as_ptr(), keys.len(), &mut config))
    }
    .map_err(ArenaError::at("its settings"))?;
    // SAFETY: `env` and `memory` are live ONNX Runtime objects for the call's length; ONNX Runtime
    // copies what it needs from `config`, which is released right after (also on failure).
    let registered = unsafe {
        let status = (api.CreateAndRegisterAllocator)(env.ptr().cast_mut(), memory.ptr(), config);
        (api.ReleaseArenaCfg)(config);
        ort::Error::result_from_status(status)
    };
    registered.map_err(ArenaError::at("registering it in the environment"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_runtime_takes_the_arenas_settings() {
        // A key ONNX Runtime does not know, or a value it refuses, fails here, not at run time.
        if let Err(e) = register_cpu_arena(super::super::session::test_env()) {
            panic!("{e}");
        }
    }
}
