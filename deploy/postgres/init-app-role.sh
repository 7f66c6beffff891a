#!/bin/sh
# docker-entrypoint-initdb.d script of the compose `postgres` service: runs once, when the
# service initialises an empty data volume, as the superuser POSTGRES_USER.
#
# Creates the site's own role (POSTGRES_APP_USER, LOGIN, not a superuser), hands it the
# database POSTGRES_DB, and creates there the extensions the migrations need, which only a
# superuser may (the statements of `python manage.py db_setup_sql`). The app then connects and
# migrates as that role. An existing volume is not touched: README, "Database role".
set -eu
: "${POSTGRES_APP_USER:?set POSTGRES_APP_USER}"
: "${POSTGRES_APP_PASSWORD:?set POSTGRES_APP_PASSWORD}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v app_user="$POSTGRES_APP_USER" -v app_password="$POSTGRES_APP_PASSWORD" \
    -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"app_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'app_password';
ALTER DATABASE :"db" OWNER TO :"app_user";
-- The database's owner owns its public schema's objects from here on (PostgreSQL 15+ gives
-- the schema to pg_database_owner).
CREATE EXTENSION IF NOT EXISTS vector;
SQL
