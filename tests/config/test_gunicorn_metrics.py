"""/metrics under gunicorn with two worker processes reports the site's totals: each process
writes its request counts into PROMETHEUS_MULTIPROC_DIR (config/gunicorn.py), and a scrape,
whichever process answers it, sums them all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from tests.run_site import free_port

pytestmark = [pytest.mark.slow, pytest.mark.django_db]  # starts gunicorn in a subprocess

HEALTH_COUNT = re.compile(
    r'^django_http_responses_total_by_status_view_method_total\{[^}]*status="200"[^}]*'
    r'view="health"[^}]*\} (\S+)$',
    re.MULTILINE,
)


def get(port: int, path: str) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Host": "localhost", "Connection": "close"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_listening(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120  # a hang detector, not a speed threshold
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"gunicorn exited: {log.read_text()[-3000:]}")
        try:
            get(port, "/health/")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    pytest.fail(f"gunicorn did not answer: {log.read_text()[-3000:]}")


def served_pids(access_log: Path) -> set[str]:
    return set(re.findall(r"^<(\d+)> /health/$", access_log.read_text(), re.MULTILINE))


def test_two_gunicorn_workers_report_summed_request_counts(tmp_path: Path, redis_url: str) -> None:
    db = settings.DATABASES["default"]
    port = free_port()
    log, access_log = tmp_path / "gunicorn.log", tmp_path / "access.log"
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="config.settings.dev",
        DATABASE_URL=f"postgresql://{db['USER']}@/{db['NAME']}?host={db['HOST']}&port={db['PORT']}",
        CELERY_BROKER_URL=redis_url,  # /health/ asks the cache, the broker's Redis
        WEB_WORKERS="2",
        WEB_MAX_REQUESTS="0",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # config/gunicorn.py makes its own folder
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py",
                "--bind", f"127.0.0.1:{port}", "--access-logfile", str(access_log),
                "--access-logformat", "%(p)s %(U)s", "config.wsgi",
            ],
            cwd=settings.BASE_DIR, env=env, start_new_session=True, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        wait_listening(port, server, log)
        # Until both processes have served some (the kernel picks which accepts).
        for _ in range(400):
            status, _body = get(port, "/health/")
            assert status == 200, (_body, log.read_text()[-2000:])
            if len(served_pids(access_log)) == 2:
                break
        assert len(served_pids(access_log)) == 2, access_log.read_text()[-2000:]
        served = len(re.findall(r"^<\d+> /health/$", access_log.read_text(), re.MULTILINE))

        scrapes = [get(port, "/metrics") for _ in range(4)]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

    for status, body in scrapes:
        assert status == 200, body[:500]
        # Every scrape, whichever process answered it, counts both processes' requests.
        counts = [float(value) for value in HEALTH_COUNT.findall(body)]
        assert sum(counts) == served, (served, counts)
        assert "imagesearch_embeddings_stored" in body
