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
import subprocess
import sys
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


# Runs in a subprocess whose settings turn on Django's psycopg pool (DATABASE_POOL, one
# connection at most) against the test database, as a web process's would: the pool is made
# from settings at start-up and cannot be switched on in this process. Requests go over HTTP to
# the site's WSGI application in a server thread, so that each ends as a deployed one does
# (its connection goes back to the pool; Django's test client keeps it instead). Prints what
# each step saw, as JSON.
POOLED = """
import json, os, signal, sys, threading, urllib.error, urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server
import django
django.setup()
from django.core.wsgi import get_wsgi_application
from django.db import connection
from django.db.backends.signals import connection_created

HANG_SECONDS = float(sys.argv[1])
pids = []  # the backend of each connection a request took from the pool, in order
freeze_next = []

def taken(sender, connection, **kwargs):
    pid = connection.connection.info.backend_pid
    pids.append(pid)
    if freeze_next:
        freeze_next.pop()
        os.kill(pid, signal.SIGSTOP)

connection_created.connect(taken)

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

server = make_server("127.0.0.1", 0, get_wsgi_application(), handler_class=Quiet)
threading.Thread(target=server.serve_forever, daemon=True).start()
URL = f"http://127.0.0.1:{server.server_port}/api/models"

def get():
    # The client gives up after HANG_SECONDS: a hang detector, not a speed threshold.
    try:
        with urllib.request.urlopen(URL, timeout=HANG_SECONDS) as response:
            return response.status, response.read().decode()[:300]
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()[:300]

def frozen_for_at_most(pid):
    # Without the watchdog the backend is continued after HANG_SECONDS and the request ends
    # on it, which the test's assertions refuse.
    timer = threading.Timer(HANG_SECONDS, os.kill, (pid, signal.SIGCONT))
    timer.start()
    return timer

seen = {"pooled": connection.pool is not None}
seen["first"] = get()[0]
idle = pids[-1]

# 1. The pool's idle connection freezes between requests: the pool's check of it when the next
#    request takes it (the health check, which the pool runs) is cut, the pool drops it, and
#    the request goes on with a new connection.
os.kill(idle, signal.SIGSTOP)
timer = frozen_for_at_most(idle)
seen["after_idle_freeze"] = get()
timer.cancel()
os.kill(idle, signal.SIGCONT)
seen["idle_frozen"], seen["idle_then"] = idle, pids[-1]

# 2. The connection freezes in the middle of a request: a 503, and the pool does not hand the
#    cut connection to the next request.
freeze_next.append(True)
before = len(pids)
seen["during_freeze"] = get()
busy = pids[before]
os.kill(busy, signal.SIGCONT)
seen["after_thaw"] = get()[0]
seen["busy_frozen"], seen["busy_then"] = busy, pids[-1]
server.shutdown()
print(json.dumps(seen))
"""


def test_the_watchdog_cuts_stalled_calls_with_the_connection_pool_on(settings) -> None:
    """DATABASE_POOL=on: a connection frozen while it waits in the pool is cut when the pool
    checks it for the next request (which then gets a new one and answers 200), and one frozen
    during a request gives the 503 and is never handed out again."""
    db = connection.settings_dict
    url = f"postgresql://{db['USER']}@/{db['NAME']}?host={db['HOST']}&port={db['PORT'] or 5432}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.test", DATABASE_URL=url, DATABASE_POOL="on",
        DATABASE_POOL_MIN_SIZE="1", DATABASE_POOL_MAX_SIZE="1",
        DATABASE_STALL_SECONDS=str(STALL_SECONDS),
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", POOLED, str(HANG_SECONDS)],
        env=env, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=4 * HANG_SECONDS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["pooled"] and seen["first"] == 200

    assert seen["after_idle_freeze"][0] == 200, seen["after_idle_freeze"]
    assert seen["idle_then"] != seen["idle_frozen"]  # cut, dropped, replaced
    status, body = seen["during_freeze"]
    assert status == 503 and "database is not reachable" in body, body
    assert seen["after_thaw"] == 200
    assert seen["busy_then"] != seen["busy_frozen"]
    assert done.stderr.count("connection cut (DATABASE_STALL_SECONDS)") == 2, done.stderr[-4000:]
