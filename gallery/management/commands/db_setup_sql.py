"""``manage.py db_setup_sql``: print what a PostgreSQL superuser runs once before the first
migrate, when the site connects as a role that is not a superuser (README, "Database role")."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from kernel.db_setup import setup_sql


class Command(BaseCommand):
    help = (
        "Print the SQL a PostgreSQL superuser runs once in the site's database (CREATE "
        "EXTENSION ...) so that migrate works as a role that is not a superuser. Pipe it to "
        "psql: manage.py db_setup_sql | psql -U postgres -d <database>"
    )
    # Prints only: no database connection, no system checks that might need one.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--database", default="default", help="Database alias (default).")

    def handle(self, *args: Any, database: str, **options: Any) -> None:
        name = str(settings.DATABASES[database].get("NAME") or "")
        self.stdout.write(setup_sql(name), ending="")
