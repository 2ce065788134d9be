#!/bin/sh
# Builds the fused (onnxruntime-genai layout) SmolLM2 decoders from ../shared's model, once, into
# $XDG_CACHE_HOME/steadytext/fused-<hash of this folder's scripts>/ (outside git; the shared
# folder stays as it is), and prints that folder. It holds three model folders:
#   SmolLM2-135M-Instruct-fused-acc4  the served fast form (int8 compute), with reference.json
#   SmolLM2-135M-Instruct-fused-acc0  fp32 compute, proven against the shared model's reference
#   SmolLM2-135M-Instruct-fused-st    acc4 on our own kernels (src/engine/kernels): int4 x int8
#                                     matmul and attention
# Python (onnx, onnxruntime from PyPI) runs in a private venv; nothing else is downloaded.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
shared=${STEADYTEXT_SHARED_MODEL:-$(cd "$here/../.." && pwd)/../shared/models/SmolLM2-135M-Instruct}
hash=$(cat "$here/build.py" "$here/build.sh" "$here/requirements.txt" | sha256sum | cut -c1-16)
python=$("$here/../venv.sh" "$here/requirements.txt")
exec "$here/../cached-build.sh" "fused-$hash" "$python" "$here/build.py" "$shared" "{}"
