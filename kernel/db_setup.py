"""What only a PostgreSQL superuser may do for the site: create the extensions its migrations need.

The site's own role need not be a superuser. ``CREATE EXTENSION vector`` needs one (pgvector is
not a trusted extension), so a DBA runs :func:`setup_sql` once in the site's database
(``python manage.py db_setup_sql`` prints it), and the migrations then find the extension and
skip creating it (:class:`RequiredExtension`). Without it, migrate stops with a message naming
that command instead of a traceback about permissions.
"""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.operations import CreateExtension
from django.core.management.base import CommandError
from django.db import DatabaseError, transaction

# Every extension a migration creates, in the order they are needed.
REQUIRED_EXTENSIONS: tuple[str, ...] = ("vector",)
SETUP_COMMAND = "python manage.py db_setup_sql"

# SQLSTATEs: insufficient_privilege; and the extension's files are not on the server:
# feature_not_supported ("is not available", PostgreSQL 18) or undefined_file ("could not open
# extension control file", before it).
_NO_PRIVILEGE = "42501"
_NOT_INSTALLED = ("0A000", "58P01")


def setup_sql(database: str = "") -> str:
    """The statements a superuser runs, connected to the site's database, before the first
    migrate as a role that is not a superuser. Safe to run again."""
    where = f' "{database}"' if database else ""
    lines = [
        f"-- Run once as a PostgreSQL superuser, connected to the site's database{where}",
        "-- (e.g. psql -U postgres -d <database>), before migrate as the site's own role.",
        *(f"CREATE EXTENSION IF NOT EXISTS {name};" for name in REQUIRED_EXTENSIONS),
    ]
    return "\n".join(lines) + "\n"


def extension_missing_message(name: str, database: str, sqlstate: str | None) -> str:
    if sqlstate in _NOT_INSTALLED:
        return (
            f'The PostgreSQL server has no "{name}" extension installed (pgvector >= 0.8 is '
            "needed): install it on the database server (e.g. the pgvector/pgvector image, or "
            "your distribution's postgresql-NN-pgvector package), then run migrate again."
        )
    return (
        f'Creating the PostgreSQL extension "{name}" needs a superuser, and the site\'s '
        f'database role is not one. Have a superuser run, in the database "{database}", the '
        f"statement that `{SETUP_COMMAND}` prints (CREATE EXTENSION IF NOT EXISTS {name};), "
        "then run migrate again."
    )


def _sqlstate(exc: BaseException) -> str | None:
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) or getattr(exc, "sqlstate", None)


class RequiredExtension(CreateExtension):
    """CreateExtension (which leaves an existing extension alone, so no privilege is needed
    then) that turns "permission denied" into what to do about it."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        connection = schema_editor.connection
        if connection.vendor != "postgresql":
            return
        try:
            # A savepoint, so the failed statement does not poison the migration's transaction
            # before the error below is raised.
            with transaction.atomic(using=connection.alias):
                super().database_forwards(app_label, schema_editor, from_state, to_state)
        except DatabaseError as exc:
            sqlstate = _sqlstate(exc)
            if sqlstate != _NO_PRIVILEGE and sqlstate not in _NOT_INSTALLED:
                raise
            database = connection.settings_dict.get("NAME") or ""
            raise CommandError(extension_missing_message(self.name, database, sqlstate)) from exc
