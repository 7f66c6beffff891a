"""``manage.py worker_alive``, the compose workers' healthcheck: a fresh heartbeat from this
host's worker, by the database's clock."""

from __future__ import annotations

import socket
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from workers.models import Worker

pytestmark = pytest.mark.django_db


def heartbeat(*, hostname: str, age: timedelta) -> Worker:
    return Worker.objects.create(
        name=f"celery@{hostname}", hostname=hostname, pid=4242, device="cpu", batch_size=32,
        started_at=timezone.now() - timedelta(hours=1), last_seen=timezone.now() - age,
    )  # fmt: skip


def test_a_fresh_heartbeat_on_this_host_is_healthy(settings) -> None:
    settings.WORKER_STALE_SECONDS = 90
    heartbeat(hostname=socket.gethostname(), age=timedelta(seconds=5))
    out = StringIO()

    call_command("worker_alive", stdout=out)

    assert f"celery@{socket.gethostname()}" in out.getvalue()


def test_a_stale_heartbeat_or_another_hosts_worker_is_not(settings) -> None:
    settings.WORKER_STALE_SECONDS = 90
    heartbeat(hostname=socket.gethostname(), age=timedelta(minutes=5))
    heartbeat(hostname="another-host", age=timedelta(seconds=5))

    with pytest.raises(CommandError, match="no worker on .* has a fresh heartbeat"):
        call_command("worker_alive")
    call_command("worker_alive", hostname="another-host", stdout=StringIO())
