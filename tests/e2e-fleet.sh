#!/bin/bash
# Fleet test: three systemd-nspawn machines booted from the e2e rootfs with the .deb installed,
# each in a network namespace made here, serving HTTPS on steadytext-http.socket, behind HAProxy
# running the shipped packaging/haproxy/steadytext.cfg. tests/fleet_load.py sends the requests
# and drives the faults (kill -9 of a machine, systemctl stop of a daemon), both under load.
# Needs root, and what tests/e2e-systemd.sh leaves: target/deb and the cached rootfs.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
models=${STEADYTEXT_MODEL_DIR:-$here/../shared/models}
cache=${E2E_CACHE:-/var/cache/steadytext-e2e}
key=fleet-key-0123456789abcdef
tls_name=steadytext
net=10.231

. "$here/tests/nspawn.sh"
base=$(rootfs_path "$cache")
say() { printf '\n== %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "error: the fleet test needs root (it boots containers)" >&2; exit 1; }
deb=$(ls target/deb/steadytext_*_amd64.deb 2>/dev/null | head -1 || true)
[ -n "$deb" ] && [ -x "$base/lib/systemd/systemd" ] ||
    { echo "error: no .deb in target/deb or no rootfs in $base: run tests/e2e-systemd.sh first" >&2; exit 1; }
install_missing haproxy:haproxy openssl:openssl ip:iproute2 curl:curl pgrep:procps

work=$(mktemp -d /var/tmp/steadytext-fleet.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for n in 1 2 3; do ip netns del "stfleet$n" 2>/dev/null || true; ip link del "stfleet$n" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

say "one machine image: the package, the models, a certificate for '$tls_name', HTTPS on 0.0.0.0:5558"
image="$work/image"
cp -a "$base" "$image"
cp "$deb" "$image/root/steadytext.deb"
nspawn_run() { systemd-nspawn -q -D "$image" --register=no --keep-unit --pipe "$@"; }
nspawn_run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq /root/steadytext.deb > "$work/install.log" 2>&1 ||
    { cat "$work/install.log"; exit 1; }
cp -rL "$models"/SmolLM2-135M-Instruct "$models"/all-MiniLM-L6-v2 "$image/var/lib/steadytext/models/"
pki="$work/pki"
mkdir -p "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=steadytext fleet test CA" \
    -addext basicConstraints=critical,CA:TRUE -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$tls_name" \
    -keyout "$pki/key.pem" -out "$pki/req.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\n' "$tls_name" > "$pki/ext"
openssl x509 -req -in "$pki/req.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
    -extfile "$pki/ext" -out "$pki/cert.pem" 2>/dev/null
install -m 0600 "$pki/cert.pem" "$image/etc/steadytext/tls-cert.pem"
install -m 0600 "$pki/key.pem" "$image/etc/steadytext/tls-key.pem"
(umask 077 && echo "$key" > "$image/etc/steadytext/api-key")
mkdir -p "$image/etc/systemd/system/steadytext.service.d" "$image/etc/systemd/system/steadytext-http.socket.d"
cat > "$image/etc/systemd/system/steadytext.service.d/fleet.conf" <<EOF
[Service]
LoadCredential=api-key:/etc/steadytext/api-key
LoadCredential=tls-cert:/etc/steadytext/tls-cert.pem
LoadCredential=tls-key:/etc/steadytext/tls-key.pem
IPAddressAllow=localhost $net.0.0/16
EOF
printf '[Socket]\nListenStream=\nListenStream=0.0.0.0:5558\n' > "$image/etc/systemd/system/steadytext-http.socket.d/fleet.conf"
systemctl --root="$image" enable steadytext-http.socket >/dev/null 2>&1
# The machine name becomes the host name.
rm -f "$image/etc/hostname"

say "three machines, each in its own network namespace ($net.N.2), on one read-only image"
boot_started=$(date +%s.%N)
inits=()
for n in 1 2 3; do
    ip netns add "stfleet$n"
    ip link add "stfleet$n" type veth peer name host0 netns "stfleet$n"
    ip addr add "$net.$n.1/24" dev "stfleet$n"
    ip link set "stfleet$n" up
    ip -n "stfleet$n" addr add "$net.$n.2/24" dev host0
    ip -n "stfleet$n" link set host0 up
    ip -n "stfleet$n" link set lo up
    systemd-nspawn -D "$image" --volatile=overlay --boot --register=no --keep-unit -M "stfleet$n" \
        --network-namespace-path="/run/netns/stfleet$n" > "$work/console$n.log" 2>&1 &
    pids+=($!)
done
for n in 1 2 3; do
    init=$(booted_init "${pids[$((n - 1))]}" "$work/console$n.log")
    booted_state "$init" >/dev/null
    inits+=("$init")
done
echo "booted in $(python3 -c "import time; print(f'{time.time() - $boot_started:.1f}')") s"

say "HAProxy with the shipped configuration"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export STEADYTEXT_FRONT="127.0.0.1:$port" STEADYTEXT_CA_FILE="$pki/ca.pem" STEADYTEXT_TLS_NAME="$tls_name"
export STEADYTEXT_REPLICA_1="$net.1.2:5558" STEADYTEXT_REPLICA_2="$net.2.2:5558" STEADYTEXT_REPLICA_3="$net.3.2:5558"
haproxy -c -q -f packaging/haproxy/steadytext.cfg
haproxy -db -f packaging/haproxy/steadytext.cfg > "$work/haproxy.log" 2>&1 &
pids+=($!)

say "a reference daemon outside the fleet (this build, on the host)"
ref_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(umask 077 && echo "$key" > "$work/api-key")
mkdir -p "$work/ref-state"
STEADYTEXT_API_KEY_FILE="$work/api-key" STATE_DIRECTORY="$work/ref-state" STEADYTEXT_MODEL_DIR="$models" \
    ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$here/.ort/libonnxruntime.so} STEADYTEXT_CONFIG=/dev/null \
    ./target/release/steadytextd --allow-root --listen "http:127.0.0.1:$ref_port" > "$work/ref.log" 2>&1 &
pids+=($!)

# Every replica loads its models (the first connection to its socket starts it) and is ready.
ready() {
    for _ in $(seq 600); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "$@" || true)
        [ "$code" = 200 ] && return 0
        [ "$code" = 404 ] && { echo "error: $* answers 404: is target/deb older than /health/ready?" >&2; return 1; }
        sleep 0.1
    done
    echo "error: $* never became ready" >&2
    return 1
}
for n in 1 2 3; do
    ready --cacert "$pki/ca.pem" --resolve "$tls_name:5558:$net.$n.2" "https://$tls_name:5558/health/ready"
done
ready "http://127.0.0.1:$ref_port/health/ready"

say "requests through the balancer, then kill -9 of a machine and systemctl stop of a daemon under load"
rc=0
python3 tests/fleet_load.py --front "127.0.0.1:$port" --reference "127.0.0.1:$ref_port" --key "$key" \
    --ca "$pki/ca.pem" --tls-name "$tls_name" --figures "$here/target/fleet.json" \
    --machine "replica1=${inits[0]}=$net.1.2:5558" --machine "replica2=${inits[1]}=$net.2.2:5558" \
    --machine "replica3=${inits[2]}=$net.3.2:5558" || rc=$?
if [ "$rc" != 0 ]; then
    tail -40 "$work/haproxy.log"
    for n in 1 2 3; do
        echo "-- machine $n"
        timeout 20 nsenter -t "${inits[$((n - 1))]}" -a journalctl -u steadytext --no-pager 2>/dev/null | tail -15 || true
    done
fi
say "fleet: figures in target/fleet.json"
[ "$rc" = 0 ] && echo "fleet: all checks passed" || echo "fleet: FAILED"
exit "$rc"
