#!/bin/sh
# Builds a random-weight Llama-style decoder of about 1B parameters (build.py; ~4 GiB of float32
# weights) once, into $XDG_CACHE_HOME/steadytext/big-decoder-<hash of this folder>/ (outside git),
# and prints that folder, which holds the model folder `big-decoder-1b`. For measuring load time,
# memory and the watchdog at that size (BIG_DECODER_LAYERS=2 makes a ~0.3B one to try it):
#   stctl --no-daemon generate hi --max-new-tokens 4 --model "$(tools/big-decoder/build.sh)/big-decoder-1b"
set -eu
here=$(cd "$(dirname "$0")" && pwd)
smollm=${STEADYTEXT_SHARED_MODEL:-$(cd "$here/../.." && pwd)/../shared/models/SmolLM2-135M-Instruct}
requirements="$here/../cross-encoder/requirements.txt"
hash=$(cat "$here/build.py" "$here/build.sh" "$requirements" | sha256sum | cut -c1-16)
layers=${BIG_DECODER_LAYERS:-16}
python=$("$here/../venv.sh" "$requirements")
exec "$here/../cached-build.sh" "big-decoder-$hash-$layers" \
    "$python" "$here/build.py" "$smollm" "{}/big-decoder-1b" "$layers"
