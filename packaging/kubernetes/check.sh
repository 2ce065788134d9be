#!/bin/sh
# Renders every kustomization here (base and overlays) with `kubectl kustomize` and validates the
# result against the Kubernetes 1.31 schemas, strictly (unknown fields are errors), with PyPI's
# kubernetes-validate in a private venv. Part of `make test`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v kubectl >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: kubectl is missing (as root: apt-get install kubernetes-client)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null
fi
python=$("$here/../../tools/venv.sh" "$here/requirements.txt")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for dir in "$here/base" "$here"/overlays/*; do
    name=$(basename "$dir")
    kubectl kustomize "$dir" > "$out/$name.yaml" 2> "$out/$name.err" || { cat "$out/$name.err" >&2; exit 1; }
    "$python" -m kubernetes_validate --strict --quiet -k 1.31.0 "$out/$name.yaml"
    echo "kubernetes: $name renders and validates ($(grep -c '^kind:' "$out/$name.yaml") resources)"
done
