#!/bin/sh
# Entrypoint of compose's postgres-replica service: on an empty volume, clone the primary with
# pg_basebackup -R (a streaming standby: standby.signal and primary_conninfo written for it),
# through a physical replication slot so the primary keeps the WAL the standby has not replayed
# yet; then start PostgreSQL through the image's own entrypoint, which finds the data directory
# initialised and runs the server as the postgres user. Safe to run again: a volume that already
# holds a standby is started as it is.
set -eu

PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export PGDATA
# The account the server runs as (the image's postgres; tests give their own).
PG_OS_USER="${PG_OS_USER:-postgres}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until pg_isready -q -h "$PRIMARY_HOST" -p "${PRIMARY_PORT:-5432}" -U "$PGUSER" -d "$PGDATABASE"; do
        echo "postgres-replica: waiting for the primary at $PRIMARY_HOST"
        sleep 2
    done
    # The slot outlives this container: a replica removed for good must have it dropped
    # (SELECT pg_drop_replication_slot('<slot>') on the primary), or WAL piles up there.
    psql -v ON_ERROR_STOP=1 -h "$PRIMARY_HOST" -p "${PRIMARY_PORT:-5432}" -d "$PGDATABASE" -c \
        "SELECT pg_create_physical_replication_slot('$REPLICA_SLOT')
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '$REPLICA_SLOT')"
    mkdir -p "$PGDATA"
    chown "$PG_OS_USER:$PG_OS_USER" "$PGDATA"
    chmod 700 "$PGDATA"
    if ! gosu "$PG_OS_USER" pg_basebackup -h "$PRIMARY_HOST" -p "${PRIMARY_PORT:-5432}" -U "$PGUSER" \
        -D "$PGDATA" -R -X stream -S "$REPLICA_SLOT" --checkpoint=fast --progress; then
        echo "postgres-replica: pg_basebackup failed. If the primary said 'no pg_hba.conf entry" \
            "for replication connection', its volume predates the replicas profile: add" \
            "'host replication all all scram-sha-256' to its pg_hba.conf and reload it" \
            "(deploy/postgres/allow-replication.sh does this on a fresh volume)." >&2
        rm -rf "${PGDATA:?}"/*
        exit 1
    fi
fi

exec docker-entrypoint.sh "$@"
