#!/bin/sh
# The official postgres image's contract, reduced to what docker-compose.yml uses: a first
# start creates the cluster in $PGDATA with POSTGRES_USER/POSTGRES_PASSWORD (password
# authentication over TCP) and the database POSTGRES_DB; later starts keep it.
set -eu
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    chown -R postgres:postgres /var/lib/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" >/tmp/pwfile
    initdb --username="$POSTGRES_USER" --pwfile=/tmp/pwfile --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --no-locale >/dev/null
    rm -f /tmp/pwfile
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        pg_ctl -w -o "-c listen_addresses='' -c unix_socket_directories=$PGHOST" start >/dev/null
        createdb --username="$POSTGRES_USER" "$POSTGRES_DB"
        pg_ctl -w stop >/dev/null
    fi
fi
exec "$@" -c listen_addresses='*' -c "unix_socket_directories=$PGHOST"
