//! What this build was made with, fixed at compile time (from `packaging/onnxruntime.env`, read
//! by `build.rs`). A leaf: it imports nothing of the crate.

/// The ONNX Runtime version this build is made for (from `packaging/onnxruntime.env`).
pub const ORT_VERSION: &str = env!("STEADYTEXT_ORT_VERSION");

/// Where the packages install the library.
pub const INSTALLED_LIBRARY: &str = concat!("/usr/lib/steadytext/libonnxruntime.so.", env!("STEADYTEXT_ORT_VERSION"));

/// sha256 of the library from the PyPI wheel `onnxruntime==ORT_VERSION` (CPU build).
pub const PINNED_SHA256: &str = env!("STEADYTEXT_ORT_LIB_SHA256");
