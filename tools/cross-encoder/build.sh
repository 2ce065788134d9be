#!/bin/sh
# Builds a tiny random-weight cross-encoder (BERT for sequence classification, one label) with
# the `onnx` package, once, into $XDG_CACHE_HOME/steadytext/cross-encoder-<hash of this folder>/
# (outside git), and prints that folder. It holds the model folder `tiny-cross-encoder`
# (model.onnx, config.json, the shared MiniLM's WordPiece tokenizer.json) and, with `--score`,
# scores pairs with Python onnxruntime for the tests (see score.py).
# Python (onnx, onnxruntime, tokenizers from PyPI) runs in a private venv.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tokenizer=${STEADYTEXT_SHARED_TOKENIZER:-$(cd "$here/../.." && pwd)/../shared/models/all-MiniLM-L6-v2/tokenizer.json}
hash=$(cat "$here/build.py" "$here/build.sh" "$here/requirements.txt" | sha256sum | cut -c1-16)
python=$("$here/../venv.sh" "$here/requirements.txt")
exec "$here/../cached-build.sh" "cross-encoder-$hash" "$python" "$here/build.py" "$tokenizer" "{}/tiny-cross-encoder"
