"""A database that stops answering on a connection already open (its backend frozen, as on a
stalled disk or network) gives a 503 after DATABASE_STALL_SECONDS instead of a request that
never ends. Over real HTTP: the live server's connection is frozen with SIGSTOP right after it
opens, so only the watchdog can end the request's wait; that backend alone is stopped, and
always continued again."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import urllib.error
import urllib.request

import pytest
from django.db import OperationalError, connection
from django.db.backends.signals import connection_created
from django.db.utils import ConnectionHandler
from django.test import Client

from config.settings.base import database_from_url

pytestmark = pytest.mark.django_db(transaction=True)

STALL_SECONDS = 2.0
# Without the watchdog these requests never answer; the client gives up on them after this long.
# A hang detector, not a speed threshold.
HANG_SECONDS = 60


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=HANG_SECONDS) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


class Freezer:
    """Stops (SIGSTOP) the backend of every connection the live server opens, as soon as it is
    made; ``thaw`` stops doing so and continues (SIGCONT) every one of them."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        connection_created.connect(self.freeze)

    def freeze(self, sender, connection, **kwargs) -> None:
        if threading.current_thread() is threading.main_thread():
            return  # the test's own connection (and teardown's) stays live
        pid = connection.connection.info.backend_pid
        self.pids.append(pid)
        os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        connection_created.disconnect(self.freeze)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.fixture
def freezer():
    freezer = Freezer()
    try:
        yield freezer
    finally:
        freezer.thaw()


def test_a_frozen_database_connection_answers_503_then_the_site_recovers(
    live_server, settings, freezer, caplog
) -> None:
    settings.DATABASE_STALL_SECONDS = STALL_SECONDS
    caplog.set_level(logging.WARNING, logger="kernel.database_watchdog")

    status, kind, body = fetch(f"{live_server.url}/")
    assert status == 503 and kind.startswith("text/html"), body
    assert "database is not reachable" in body and "Traceback" not in body

    status, kind, body = fetch(f"{live_server.url}/api/search?q=two+dogs")
    assert status == 503 and kind == "application/json", body
    assert "database is not reachable" in json.loads(body)["error"]

    # One frozen backend per request, and the watchdog cut each (no other path can end a wait
    # on a stopped backend: connect_timeout only bounds opening a connection).
    assert len(freezer.pids) == 2
    assert len([r for r in caplog.records if "connection cut" in r.getMessage()]) == 2

    freezer.thaw()  # the database answers again: the next request opens a fresh connection
    status, _, _ = fetch(f"{live_server.url}/")
    assert status == 200


def test_requests_that_get_answers_are_never_cut(live_server, settings, caplog) -> None:
    settings.DATABASE_STALL_SECONDS = STALL_SECONDS
    caplog.set_level(logging.WARNING, logger="kernel.database_watchdog")
    for url in ("/", "/api/models", "/api/search?q=two+dogs"):
        status, _, _ = fetch(f"{live_server.url}{url}")
        assert status in (200, 409), url  # 409: no embeddings to search yet
    assert not [r for r in caplog.records if "connection cut" in r.getMessage()]


def test_a_frozen_connection_kept_from_an_earlier_request_is_replaced(settings, caplog) -> None:
    """A persistent connection (CONN_MAX_AGE) is health-checked with a ``SELECT 1`` that Django
    sends without an execute wrapper: frozen, it is cut just the same, and the request goes on
    with a new connection (here, to a server that answers; to a frozen one it is a 503 after
    DATABASE_CONNECT_TIMEOUT more)."""
    settings.DATABASE_STALL_SECONDS = STALL_SECONDS
    caplog.set_level(logging.WARNING, logger="kernel.database_watchdog")
    client = Client()
    assert client.get("/api/models").status_code == 200  # the connection is open now
    pid = connection.connection.info.backend_pid
    connection.health_check_done = False  # as at the start of the next request
    os.kill(pid, signal.SIGSTOP)
    # The hang detector: without the watchdog, the backend is continued after HANG_SECONDS and
    # the request ends on the old connection, which the assertions below refuse.
    thaw = threading.Timer(HANG_SECONDS, os.kill, (pid, signal.SIGCONT))
    thaw.start()
    try:
        response = client.get("/api/models")
    finally:
        thaw.cancel()
        os.kill(pid, signal.SIGCONT)
    assert response.status_code == 200
    assert connection.connection.info.backend_pid != pid
    assert len([r for r in caplog.records if "connection cut" in r.getMessage()]) == 1


def test_a_new_connection_to_a_silent_server_gives_up_after_the_connect_timeout(
    tmp_path, monkeypatch
) -> None:
    """The other half of the bound: opening a connection to a server that accepts but never
    answers (a frozen postmaster) fails after DATABASE_CONNECT_TIMEOUT, over a unix socket too,
    with the options every process uses."""
    monkeypatch.setenv("DATABASE_CONNECT_TIMEOUT", "2")  # libpq's smallest
    silent = socket.socket(socket.AF_UNIX)
    silent.bind(str(tmp_path / ".s.PGSQL.5432"))
    silent.listen()  # the kernel accepts into the backlog; nothing ever answers
    # Hang detector: closing the socket ends the wait with another error than a timeout.
    closer = threading.Timer(HANG_SECONDS, silent.close)
    closer.start()
    handler = ConnectionHandler(
        {"default": database_from_url(f"postgresql://u@/db?host={tmp_path}")}
    )
    try:
        with pytest.raises(OperationalError) as failed:
            handler["default"].ensure_connection()
    finally:
        closer.cancel()
        silent.close()
        handler.close_all()
    assert "timeout expired" in str(failed.value)
