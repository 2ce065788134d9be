//! The engine fingerprint: everything besides the model and the request that can change an
//! answer's bits. It is part of every cache key and of the snapshot header, so a cached answer is
//! never served by a different engine, and `status` shows it.
//!
//! In it: the ONNX Runtime version and library (its sha256: the pinned or configured one, or the
//! file's own when the check is turned off), the execution provider, the session options that
//! change numbers (graph optimization level, CPU arena), and the CPU's instruction-set class
//! (ONNX Runtime's kernels differ by ISA), where prompts are cut into prefill calls (a call's
//! length changes bits: see `engine::prefix`), the version of our own kernels (a graph that
//! names them gets their numbers; they give the same bits on every instruction set) and of the
//! encoders' attention fusion (`backend::encoder_fusion`: a fused encoder's bits are its own). Not in it: the intra-op thread count, because 1, 2, 3,
//! 4 and 8 threads give identical bits (`tests/reference.rs` checks it for both models).

use sha2::{Digest, Sha256};

use crate::config::{Config, Device};
use crate::error::{Error, Result};

/// An engine's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// 16 hex digits of a sha256 over `summary`.
    pub id: String,
    /// What it is made of, for people.
    pub summary: String,
}

impl Fingerprint {
    /// The id as a number (for the snapshot header).
    pub fn as_u64(&self) -> u64 {
        u64::from_str_radix(&self.id, 16).unwrap_or(0)
    }
}

/// The CPU's instruction-set class, as ONNX Runtime's kernel choice sees it.
pub fn isa_class() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
            if has!("avx512vnni") {
                "x86_64-avx512-vnni"
            } else {
                "x86_64-avx512"
            }
        } else if has!("avx2") && has!("fma") {
            if has!("avxvnni") {
                "x86_64-avx2-vnni"
            } else {
                "x86_64-avx2"
            }
        } else if has!("avx") {
            "x86_64-avx"
        } else {
            "x86_64-sse"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        match (has!("sve"), has!("i8mm"), has!("dotprod")) {
            (true, _, _) => "aarch64-sve",
            (false, true, _) => "aarch64-i8mm",
            (false, false, true) => "aarch64-dotprod",
            _ => "aarch64-neon",
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        std::env::consts::ARCH
    }
}

/// The fingerprint of the engine `config` describes (cheap: the library is hashed only when
/// its sha256 check is turned off).
pub fn fingerprint(config: &Config) -> Result<Fingerprint> {
    let spec = crate::runtime::RuntimeSpec::from_config(config);
    let library = match &spec.sha256 {
        Some(sha) => sha.clone(),
        None => {
            crate::fsutil::sha256_file(&spec.library).map(|(_, sha)| sha).map_err(|e| Error::io(&spec.library, e))?
        }
    };
    let device = match config.device {
        Device::Cpu => "cpu",
        Device::Cuda => "cuda (tf32 off)",
    };
    let summary = format!(
        "onnxruntime {} (library sha256 {}), {device} execution provider, graph optimization all, cpu arena off, {}, \
         prompts prefilled in calls between boundaries ({}), steadytext kernels {}, {} (cpu encoders)",
        crate::runtime::ORT_VERSION,
        &library[..library.len().min(16)],
        isa_class(),
        crate::engine::prefix::BOUNDARIES,
        crate::engine::kernels::VERSION,
        crate::engine::backend::encoder_fusion::VERSION
    );
    let id = hex::encode(&Sha256::digest(summary.as_bytes())[..8]);
    Ok(Fingerprint { id, summary })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_changes_numbers_changes_the_fingerprint_and_threads_do_not() {
        let base = Config::default();
        let a = fingerprint(&base).unwrap();
        assert_eq!(a.id.len(), 16);
        assert_ne!(a.as_u64(), 0);
        assert_eq!(fingerprint(&Config { intra_threads: 8, ..base.clone() }).unwrap(), a);
        assert_ne!(fingerprint(&Config { device: Device::Cuda, ..base.clone() }).unwrap().id, a.id);
        let other_library = Config { onnxruntime_sha256: Some("ab".repeat(32)), ..base.clone() };
        assert_ne!(fingerprint(&other_library).unwrap().id, a.id);
        assert!(a.summary.contains(crate::runtime::ORT_VERSION) && a.summary.contains(isa_class()), "{}", a.summary);
        assert!(a.summary.contains(crate::engine::kernels::VERSION), "{}", a.summary);
        assert!(a.summary.contains(crate::engine::backend::encoder_fusion::VERSION), "{}", a.summary);
    }
}
