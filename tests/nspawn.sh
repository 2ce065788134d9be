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
