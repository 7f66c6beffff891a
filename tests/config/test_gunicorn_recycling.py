"""Gunicorn replaces its workers after WEB_MAX_REQUESTS requests (with jitter), so the memory a
request's peak took is given back: read from the environment, and seen happening in a real
gunicorn started with config/gunicorn.py."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from config import gunicorn
from tests.run_site import free_port

pytestmark = pytest.mark.slow  # starts gunicorn in a subprocess

# A WSGI app that answers with the pid of the worker that served the request.
PID_APP = """
import os

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Connection", "close")])
    return [str(os.getpid()).encode()]
"""


def test_worker_recycling_is_on_by_default_and_set_from_the_environment(monkeypatch) -> None:
    try:
        monkeypatch.delenv("WEB_MAX_REQUESTS", raising=False)
        monkeypatch.delenv("WEB_MAX_REQUESTS_JITTER", raising=False)
        defaults = importlib.reload(gunicorn)
        assert (defaults.max_requests, defaults.max_requests_jitter) == (1000, 100)
        monkeypatch.setenv("WEB_MAX_REQUESTS", "50")
        monkeypatch.setenv("WEB_MAX_REQUESTS_JITTER", "7")
        configured = importlib.reload(gunicorn)
        assert (configured.max_requests, configured.max_requests_jitter) == (50, 7)
    finally:
        monkeypatch.undo()
        importlib.reload(gunicorn)


def test_gunicorn_replaces_a_worker_after_max_requests(tmp_path: Path) -> None:
    (tmp_path / "pid_app.py").write_text(PID_APP)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(WEB_WORKERS="1", WEB_MAX_REQUESTS="3", WEB_MAX_REQUESTS_JITTER="0")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py",
            "--bind", f"127.0.0.1:{port}", "--pythonpath", str(tmp_path), "pid_app:app",
        ],
        cwd=settings.BASE_DIR, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        pids = [_get_pid(port) for _ in range(9)]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    # 9 requests, 3 per worker: three workers in turn, each pid for 3 requests in a row.
    assert len(set(pids)) == 3, pids
    assert pids == sorted(pids, key=pids.index), pids  # no pid comes back after it was replaced


def _get_pid(port: int) -> int:
    """The pid of the worker that answers, once gunicorn listens."""
    deadline = time.monotonic() + 60  # a hang detector, not a speed threshold
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
                return int(response.read())
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
