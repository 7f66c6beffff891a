#!/bin/sh
# Run once by the postgres image on a fresh volume (/docker-entrypoint-initdb.d): let the
# compose network's standbys (the replicas profile's postgres-replica) stream WAL with the
# superuser's password. The image's own pg_hba.conf allows replication from localhost only.
set -eu
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
