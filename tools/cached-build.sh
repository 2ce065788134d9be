#!/bin/sh
# usage: tools/cached-build.sh NAME COMMAND [ARG...]
# Runs COMMAND once into $XDG_CACHE_HOME/steadytext/NAME/ (outside git) and prints that folder;
# an argument starting with {} has it replaced by the folder. NAME carries the hash of whatever
# the build depends on. Concurrent callers wait for one another (flock); an interrupted build
# (no .complete marker) is redone from scratch. The command's output goes to stderr.
set -eu
cache="${XDG_CACHE_HOME:-$HOME/.cache}/steadytext"
out="$cache/$1"
shift
for arg; do
    shift
    case "$arg" in "{}"*) arg="$out${arg#"{}"}" ;; esac
    set -- "$@" "$arg"
done
mkdir -p "$cache"
exec 9>"$out.lock"
flock 9
if [ ! -f "$out/.complete" ]; then
    rm -rf "$out"
    mkdir -p "$out"
    "$@" >&2
    touch "$out/.complete"
fi
echo "$out"
