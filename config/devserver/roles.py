"""A site database the way a DBA sets one up: a login role with a password that is not a
superuser, owning its own database, with the extensions a superuser created in it.

For tests and trials against the embedded PostgreSQL (which trusts local connections): each
function takes a superuser's connection URI. ``password_required`` makes the server check the
role's password, so a test proves the URL it hands out really carries one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

from kernel.db_setup import setup_sql


def app_database_create(
    admin_uri: str, *, role: str, password: str, database: str, extensions: bool = True
) -> None:
    """Create ``role`` (LOGIN, not a superuser) and ``database`` owned by it; with
    ``extensions``, run as the superuser the statements of ``manage.py db_setup_sql`` in it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_uri, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(role)
            )
        )
    if extensions:
        with psycopg.connect(_with_database(admin_uri, database), autocommit=True) as admin:
            admin.execute(setup_sql(database).encode())


def app_database_drop(admin_uri: str, *, role: str, database: str) -> None:
    """Drop what :func:`app_database_create` made (missing parts are fine)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_uri, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def role_url(admin_uri: str, *, role: str, password: str, database: str) -> str:
    """A ``postgresql://role:password@/database?host=...`` URL on the admin URI's server."""
    parts = urlsplit(admin_uri)
    auth = f"{quote(role, safe='')}:{quote(password, safe='')}"
    return f"postgresql://{auth}@{parts.netloc.rpartition('@')[2]}/{database}?{parts.query}"


@contextlib.contextmanager
def password_required(admin_uri: str, *, role: str) -> Iterator[None]:
    """Have the server ask ``role`` for its password (scram-sha-256), on the unix socket and on
    loopback TCP, while the block runs; the superuser's own trust lines are left as they were."""
    import psycopg

    lines = [
        f"local all {role} scram-sha-256\n",
        f"host all {role} 127.0.0.1/32 scram-sha-256\n",
        f"host all {role} ::1/128 scram-sha-256\n",
    ]
    with psycopg.connect(admin_uri, autocommit=True) as admin:
        row = admin.execute("SHOW hba_file").fetchone()
        assert row is not None
        hba_path = row[0]
        with open(hba_path) as f:
            original = f.read()
        # Written in place: the file keeps its owner (the server's own user).
        with open(hba_path, "w") as f:
            f.write("".join(lines) + original)
        admin.execute("SELECT pg_reload_conf()")
    try:
        _wait_until_password_asked(admin_uri, role)
        yield
    finally:
        with open(hba_path) as f:
            current = f.read()
        with open(hba_path, "w") as f:
            f.write(current.replace("".join(lines), "", 1))
        with psycopg.connect(admin_uri, autocommit=True) as admin:
            admin.execute("SELECT pg_reload_conf()")


def _wait_until_password_asked(admin_uri: str, role: str) -> None:
    """pg_reload_conf() only signals the postmaster: wait until a password-less connection as
    ``role`` is refused, i.e. the new rules are in force (at most about 10 s)."""
    import psycopg

    url = role_url(admin_uri, role=role, password="", database="postgres").replace(":@", "@")
    for _ in range(100):
        try:
            psycopg.connect(url, connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            if "password" in str(exc):
                return
            raise
        time.sleep(0.1)
    raise RuntimeError(f"the server did not start asking {role} for a password")


def _with_database(uri: str, database: str) -> str:
    parts = urlsplit(uri)
    return parts._replace(path=f"/{database}").geturl()
