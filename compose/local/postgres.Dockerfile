# PostgreSQL 15 from Debian's packages (scripts/images makes BASE with them), with the part of the official image's
# entrypoint compose uses: POSTGRES_USER, POSTGRES_DB and POSTGRES_PASSWORD(_FILE) make the database on first start.
ARG BASE=batch-postgres-base:bookworm
FROM ${BASE}
COPY postgres-entrypoint /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
RUN install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres /run/postgresql
VOLUME /var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
