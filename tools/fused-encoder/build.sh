#!/bin/sh
# Builds the fused form of ../shared's encoder (all-MiniLM-L6-v2: each layer's attention one
# com.microsoft.Attention node, constant reshapes; see build.py), once, into
# $XDG_CACHE_HOME/steadytext/fused-encoder-<hash of this folder's scripts>/ (outside git; the shared
# folder stays as it is), and prints that folder, which holds all-MiniLM-L6-v2-fused.
# Python (onnx, onnxruntime, tokenizers from PyPI) runs in a private venv; nothing else is downloaded.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
shared=${STEADYTEXT_SHARED_MODEL:-$(cd "$here/../.." && pwd)/../shared/models/all-MiniLM-L6-v2}
hash=$(cat "$here/build.py" "$here/build.sh" "$here/requirements.txt" | sha256sum | cut -c1-16)
python=$("$here/../venv.sh" "$here/requirements.txt")
exec "$here/../cached-build.sh" "fused-encoder-$hash" "$python" "$here/build.py" "$shared" "{}"
