# Shell helpers of the end-to-end tests that boot systemd-nspawn machines (sourced).

# Installs the Debian packages of the commands it is given as COMMAND:PACKAGE that are missing.
install_missing() {
    local need="" tool
    for tool in "$@"; do
        command -v "${tool%%:*}" >/dev/null || need="$need ${tool#*:}"
    done
    [ -n "$need" ] || return 0
    printf '\n== installing%s\n' "$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
}

# Prints the pid of the systemd that the systemd-nspawn process $1 booted, once it runs; on
# failure shows the console log $2 and fails.
booted_init() {
    local nspawn=$1 console=$2 init=""
    for _ in $(seq 100); do
        init=$(pgrep -P "$nspawn" | head -1 || true)
        [ -n "$init" ] && [ "$(readlink /proc/"$init"/exe 2>/dev/null)" = /usr/lib/systemd/systemd ] && break
        init=""
        sleep 0.1
    done
    [ -n "$init" ] || { cat "$console" >&2; echo "error: the machine did not boot" >&2; return 1; }
    echo "$init"
}

# Waits until the systemd of pid $1 has finished booting (running or degraded; at most 120 s:
# `is-system-running --wait` alone returns early while the manager's bus is not up yet) and
# prints that state.
booted_state() {
    local init=$1 state=""
    for _ in $(seq 240); do
        state=$(timeout 10 nsenter -t "$init" -a systemctl is-system-running 2>/dev/null || true)
        case $state in running | degraded) break ;; esac
        sleep 0.5
    done
    echo "${state:-unknown}"
}

# The Debian 12 rootfs the machines boot: minbase with what a real install has for our tests
# (systemd as init, dbus and logind, pam_systemd for user managers, man). Cached under the
# folder $1; the folder's name carries the package list, so a changed list makes a new rootfs.
E2E_PACKAGES=systemd,systemd-sysv,dbus,libpam-systemd,ca-certificates,man-db
rootfs_path() {
    echo "$1/rootfs-bookworm-$(echo "$E2E_PACKAGES" | sha256sum | cut -c1-8)"
}

# Makes the rootfs of rootfs_path $1 unless it is there.
ensure_rootfs() {
    local base
    base=$(rootfs_path "$1")
    [ -x "$base/lib/systemd/systemd" ] && return 0
    mkdir -p "$1"
    rm -rf "$base.tmp"
    debootstrap --variant=minbase --include="$E2E_PACKAGES" bookworm "$base.tmp" http://deb.debian.org/debian
    mv "$base.tmp" "$base"
}
