#!/bin/sh
# Builds the conformance zoo (tiny random-weight decoders of six architectures, each in the
# transformers.js and onnxruntime-genai layouts, with their Python onnxruntime references) once,
# into $XDG_CACHE_HOME/steadytext/zoo-<hash>/ (outside git), and prints that folder: one model
# folder per architecture and layout (llama3-hf, llama3-genai, ...). See build.py. Python (numpy,
# onnx, onnxruntime, tokenizers, jinja2 from PyPI) runs in a private venv; nothing else is
# downloaded. The shared SmolLM2's tokenizer and the shared models' README (the corpus the
# SentencePiece-style vocabularies train on) enter the hash.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
shared=${STEADYTEXT_SHARED_MODEL:-$(cd "$here/../.." && pwd)/../shared/models/SmolLM2-135M-Instruct}
hash=$(cat "$here/build.py" "$here/build.sh" "$here/requirements.txt" "$shared/tokenizer.json" "$shared/../README.md" \
    | sha256sum | cut -c1-16)
python=$("$here/../venv.sh" "$here/requirements.txt")
exec "$here/../cached-build.sh" "zoo-$hash" "$python" "$here/build.py" "$shared" "{}"
