#!/bin/sh
# usage: tools/venv.sh REQUIREMENTS.txt [EXTRA-NO-DEPS-PACKAGE...]
# Prints the python of a private virtual environment holding REQUIREMENTS.txt (and the extra
# packages, installed without their dependencies), made once from PyPI under
# $XDG_CACHE_HOME/steadytext, keyed by the requirements' hash. Concurrent callers wait for one
# another; an interrupted install is redone.
set -eu
requirements=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
shift
hash=$(cat "$requirements" | sha256sum | cut -c1-16)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/steadytext"
venv="$cache/venv-$hash"
mkdir -p "$cache"
exec 8>"$venv.lock"
flock 8
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
    if [ $# -gt 0 ]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$@" >&2
    fi
    touch "$venv/.complete"
fi
echo "$venv/bin/python"
