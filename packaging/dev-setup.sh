#!/bin/sh
# Installs what building and testing steadytext needs on a fresh Debian/Ubuntu machine:
# systemd's socket-activation helper, python3 + pip (to fetch the ONNX Runtime wheel), curl and
# python3-venv (HTTP tests), haproxy (the fleet test), and
# ONNX Runtime 1.31.1 itself (into .ort/). Safe to run again.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
missing=""
command -v systemd-socket-activate >/dev/null || missing="$missing systemd"
command -v python3 >/dev/null || missing="$missing python3"
python3 -m pip --version >/dev/null 2>&1 || missing="$missing python3-pip"
# The HTTP tests run curl and the `openai` package in a private venv (tools/venv.sh).
command -v curl >/dev/null || missing="$missing curl"
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing="$missing python3-venv"
# The fleet test runs the reference HAProxy configuration (packaging/haproxy/) in front of replicas.
command -v haproxy >/dev/null || missing="$missing haproxy"
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: please install:$missing (as root: apt-get install$missing)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi
"$here/packaging/fetch-onnxruntime.sh"
if [ ! -d "$here/../shared/models" ] && [ -z "${STEADYTEXT_MODEL_DIR:-}" ]; then
    echo "warning: ../shared/models is missing; set STEADYTEXT_MODEL_DIR to a folder of model folders" >&2
fi
