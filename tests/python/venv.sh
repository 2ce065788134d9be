#!/bin/sh
# Prints the python of a private virtual environment holding tests/python/requirements.txt,
# made once (from PyPI) under $XDG_CACHE_HOME/steadytext, keyed by the requirements' hash.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
hash=$(sha256sum "$here/requirements.txt" | cut -c1-16)
venv="${XDG_CACHE_HOME:-$HOME/.cache}/steadytext/test-venv-$hash"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
    touch "$venv/.complete"
fi
echo "$venv/bin/python"
