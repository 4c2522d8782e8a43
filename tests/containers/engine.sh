# The Docker engine of `make test-containers`, sourced by run.sh: installed from the
# distribution's packages when missing, and a dockerd of our own with everything it keeps
# (data root, exec root, pidfile, socket) under $STATE, stopped by its PID.
#
# Needs: STATE (a directory under the repository's .data/) and engine_env called first.

# Compose v2 and buildx are plugins of the CLI. Debian ships them as packages from trixie
# on; on older releases the plugin binaries (static Go programs) are taken from trixie's.
PLUGIN_SUITE=trixie
ENGINE_START_TIMEOUT_S=60
ENGINE_STOP_TIMEOUT_S=60

# The client's view of the engine: this STATE's socket, plugins and the distribution's CLI.
engine_env() {
    export PATH="$STATE/bin:$PATH" DOCKER_CONFIG="$STATE/docker-config" \
        DOCKER_HOST="unix://$STATE/docker.sock"
}

engine_install() {
    local missing=()
    [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    command -v iptables-save >/dev/null || missing+=(iptables)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "engine: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    mkdir -p "$STATE/bin" "$STATE/docker-config/cli-plugins"
    ln -sf /usr/bin/docker "$STATE/bin/docker"
    local plugins="$DOCKER_CONFIG/cli-plugins"
    if [ ! -x "$plugins/docker-compose" ] || [ ! -x "$plugins/docker-buildx" ]; then
        _engine_fetch_plugins "$plugins"
    fi
}

# apt, pointed at the plugin suite through a sources list and state of its own, downloads
# the two packages; only their plugin binaries are kept.
_engine_fetch_plugins() {
    local plugins=$1 apt="$STATE/plugin-apt"
    echo "engine: fetching the compose and buildx plugins ($PLUGIN_SUITE packages)"
    rm -rf "$apt"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
        "http://deb.debian.org/debian $PLUGIN_SUITE main" >"$apt/sources.list"
    local options=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "APT::Sandbox::User=root")
    apt-get "${options[@]}" update -qq
    (cd "$apt/debs" && apt-get "${options[@]}" download -qq docker-compose docker-buildx)
    local deb
    for deb in "$apt"/debs/*.deb; do
        dpkg-deb -x "$deb" "$apt/root"
    done
    install -m 0755 "$apt/root/usr/libexec/docker/cli-plugins/docker-compose" \
        "$apt/root/usr/libexec/docker/cli-plugins/docker-buildx" "$plugins/"
    rm -rf "$apt"
}

_engine_pid() {
    local pid
    pid=$(cat "$STATE/dockerd.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/sbin/dockerd ] \
        && echo "$pid"
}

engine_start() {
    # A daemon left by a run that was killed outright (SIGKILL) is ours: stop it first.
    engine_stop
    mkdir -p "$STATE/data-root" "$STATE/exec-root"
    # What the daemon changes on the host, put back by engine_stop: its iptables rules
    # (when none of Docker's existed before), IP forwarding and its default bridge.
    iptables-save >"$STATE/iptables.before"
    cat /proc/sys/net/ipv4/ip_forward >"$STATE/ip_forward.before"
    ip link show docker0 >/dev/null 2>&1 || touch "$STATE/docker0.ours"
    echo "engine: starting dockerd (data under $STATE)"
    # The daemon's own containerd lives and dies with it; overlay2 on cgroupfs needs neither
    # systemd nor a storage driver of the host's.
    setsid /usr/sbin/dockerd \
        --data-root "$STATE/data-root" \
        --exec-root "$STATE/exec-root" \
        --pidfile "$STATE/dockerd.pid" \
        --host "$DOCKER_HOST" \
        --storage-driver "${CONTAINER_STORAGE_DRIVER:-overlay2}" \
        --exec-opt native.cgroupdriver=cgroupfs \
        --log-level warn \
        >"$STATE/dockerd.log" 2>&1 </dev/null &
    local deadline=$((SECONDS + ENGINE_START_TIMEOUT_S))
    until docker version >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ] || ! kill -0 $! 2>/dev/null; then
            echo "engine: dockerd did not start:" >&2
            tail -n 30 "$STATE/dockerd.log" >&2
            return 1
        fi
        sleep 0.5
    done
    docker version --format 'engine: dockerd {{.Server.Version}}, API {{.Server.APIVersion}}'
}

# Stops the daemon of this STATE, if one runs, and undoes its changes to the host. Containers
# still running are stopped by dockerd itself on SIGTERM; their shims are ended by PID after.
engine_stop() {
    local pid deadline
    if pid=$(_engine_pid); then
        echo "engine: stopping dockerd (pid $pid)"
        kill -TERM "$pid"
        deadline=$((SECONDS + ENGINE_STOP_TIMEOUT_S))
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$STATE/dockerd.pid"
    _engine_end_shims
    _engine_restore_host
}

_engine_end_shims() {
    local pid
    for pid in $(pgrep -f "containerd-shim.*$STATE/exec-root" || true); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    # Mounts of containers a killed daemon could not unmount.
    { grep -o " $STATE/[^ ]*" /proc/mounts || true; } | sort -r | while read -r mount; do
        umount -l "$mount" 2>/dev/null || true
    done
}

_engine_restore_host() {
    if [ -f "$STATE/iptables.before" ]; then
        if ! grep -q DOCKER "$STATE/iptables.before"; then
            iptables-save | grep -v -E 'DOCKER|docker0|br-[0-9a-f]{12}' | iptables-restore
        fi
        rm -f "$STATE/iptables.before"
    fi
    if [ -f "$STATE/ip_forward.before" ]; then
        cat "$STATE/ip_forward.before" >/proc/sys/net/ipv4/ip_forward
        rm -f "$STATE/ip_forward.before"
    fi
    if [ -f "$STATE/docker0.ours" ]; then
        ip link delete docker0 2>/dev/null || true
        rm -f "$STATE/docker0.ours"
    fi
}
