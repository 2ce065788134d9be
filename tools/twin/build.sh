#!/bin/sh
# Builds the 1B twin (random weights in Llama-3.2-1B's configuration, as the onnxruntime-genai
# int4 graph and as GGUF Q4_0 from the same 4-bit arrays, with the fp32 logit check between
# onnxruntime and llama.cpp; see build.py) once, into
# $XDG_CACHE_HOME/steadytext/twin-<hash of the scripts>/, and prints that folder on its last line:
# it holds genai/ (the model folder steadytextd serves), model-q4_0.gguf and twin.json.
# Python (onnx, onnxruntime, gguf from PyPI) runs in a private venv; the logit check runs
# llama.cpp from the bench's venv (bench/run.sh --print-python, or TWIN_LLAMA_PYTHON).
# ~1.3 GB on disk, ~5 GB more while the check runs; a few minutes on 2 cores. Not part of make test.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
shared=${STEADYTEXT_SHARED_MODEL:-$root/../shared/models/SmolLM2-135M-Instruct}
llama_python=${TWIN_LLAMA_PYTHON:-$("$root/bench/run.sh" --print-python)}
hash=$(cat "$here/build.py" "$here/llama_logits.py" "$here/build.sh" "$here/requirements.txt" \
    "$here/../fused-decoder/build.py" | sha256sum | cut -c1-16)
python=$("$here/../venv.sh" "$here/requirements.txt")
exec "$here/../cached-build.sh" "twin-$hash" "$python" "$here/build.py" "$shared" "$llama_python" "{}"
