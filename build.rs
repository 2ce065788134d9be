//! Passes the ONNX Runtime version and pins from `packaging/onnxruntime.env` (their one home) to
//! the crate as `STEADYTEXT_ORT_*` compile-time variables.

fn main() {
    const FILE: &str = "packaging/onnxruntime.env";
    println!("cargo:rerun-if-changed={FILE}");
    let text = std::fs::read_to_string(FILE).unwrap_or_else(|e| panic!("{FILE}: {e}"));
    for key in ["ORT_VERSION", "ORT_LIB_SHA256"] {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
            .unwrap_or_else(|| panic!("{FILE} has no {key}="));
        println!("cargo:rustc-env=STEADYTEXT_{key}={}", value.trim());
    }
}
