"""``manage.py worker_alive``: the compose workers' healthcheck. Exit 0 when a worker on this
host has a fresh heartbeat (seen within WORKER_STALE_SECONDS), else 1 with why.

The heartbeat comes from the worker's own timer thread, so a worker busy with a long batch
(the solo pool answers no ``celery inspect ping`` meanwhile) stays healthy, while one whose
process hangs, lost its database, or never finished loading its models does not.
"""

from __future__ import annotations

import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from workers.selectors import workers_live


class Command(BaseCommand):
    help = "Exit 0 if a worker on this host has a fresh heartbeat, else 1 (a healthcheck)."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--hostname",
            default=socket.gethostname(),
            help="The host whose worker to look for (default: this one).",
        )

    def handle(self, *args: Any, hostname: str, **options: Any) -> None:
        names = list(workers_live().filter(hostname=hostname).values_list("name", flat=True))
        if not names:
            raise CommandError(f"no worker on {hostname} has a fresh heartbeat")
        self.stdout.write(f"alive: {', '.join(names)}")
