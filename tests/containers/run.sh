#!/usr/bin/env bash
# `make test-containers`: the images built from the repository's Dockerfiles and
# docker-compose.yml run on a real Docker engine of this machine, then checked
# (test_compose_stack.py, one line per check).
#
# Everything it starts is stopped by this script, on success, failure or interruption: the
# compose project (`down --volumes`), then dockerd by its PID (engine.sh). What it keeps for
# the next run lives under .data/containers/: the engine's data root (the stand-in base
# images and the build cache) and the CLI plugins.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
STATE="$REPO/.data/containers"
UV=${UV:-$(command -v uv || echo "$REPO/.data/tools/bin/uv")}
[ -x "$UV" ] || { echo "uv not found: run \`make test-containers\`" >&2; exit 2; }
export UV_PYTHON_DOWNLOADS=never
COMPOSE=(docker compose --env-file "$REPO/tests/containers/compose.env"
    -f "$REPO/docker-compose.yml" -f "$REPO/tests/containers/compose.test.yml"
    -f "$REPO/tests/containers/compose.keyed.yml")
mkdir -p "$STATE"
exec 9>"$STATE/lock"
flock --nonblock 9 || { echo "make test-containers is already running in $REPO" >&2; exit 1; }

# shellcheck source=engine.sh
source "$REPO/tests/containers/engine.sh"
# shellcheck source=standins.sh
source "$REPO/tests/containers/standins.sh"

child=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    if _engine_pid >/dev/null; then
        # GATEWAY_PORT and the key only shape the rendered file; the project is the same.
        GATEWAY_PORT=0 TEST_OPENAI_API_KEY=unused "${COMPOSE[@]}" down --volumes \
            --remove-orphans --timeout 10 >/dev/null 2>&1 || true
    fi
    engine_stop
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A step in the background, waited for, so that a signal reaches the traps at once.
step() {
    local name=$1 started=$SECONDS
    shift
    "$@" &
    child=$!
    wait "$child"
    child=""
    echo "== $name: $((SECONDS - started)) s"
}

engine_env
step "engine install" engine_install
step "engine start" engine_start
step "stand-in base images" standins_ensure
step "image build" env GATEWAY_PORT=0 TEST_OPENAI_API_KEY=unused "${COMPOSE[@]}" build --quiet
step "checks" env CONTAINER_TESTS=1 "$UV" run --frozen pytest tests/containers -v \
    -p no:cacheprovider --basetemp="$STATE/pytest" --timeout=900
