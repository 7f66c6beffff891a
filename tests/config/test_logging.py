"""Every log line carries its time; LOG_FORMAT=json makes each one a JSON object, in the web
server (gunicorn's lines and the site's), the Celery worker and beat; a request's lines carry
its id, which the response echoes."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from kernel.log_format import RequestIdFilter, formatter
from tests.run_site import free_port

ROOT = Path(settings.BASE_DIR)
LOG_LINE = "import django, logging; django.setup(); logging.getLogger('probe').warning('hello')"
# 2026-12-02T16:26:17.123+00:00
ISO_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


def python_logs(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LOG_LINE],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.dev", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line that is a JSON object, each checked for a parseable timestamp."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            datetime.fromisoformat(record["timestamp"])
            found.append(record)
    return found


def test_text_lines_start_with_an_iso_time_with_offset() -> None:
    result = python_logs(LOG_FORMAT="text")

    assert result.returncode == 0, result.stderr
    assert re.search(rf"^{ISO_TIME} WARNING probe: hello$", result.stderr, re.MULTILINE)


def test_json_lines_are_objects_with_a_timestamp() -> None:
    result = python_logs(LOG_FORMAT="json")

    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    records = json_lines(result.stderr)
    assert len(records) == len(lines)  # nothing else was written
    probe = [r for r in records if r["logger"] == "probe"]
    assert probe == [
        {
            "level": "WARNING",
            "logger": "probe",
            "message": "hello",
            "request_id": None,
            "timestamp": probe[0]["timestamp"],
        }
    ]


def test_an_unknown_log_format_is_refused() -> None:
    result = python_logs(LOG_FORMAT="xml")

    assert result.returncode != 0
    assert "LOG_FORMAT='xml': use one of text, json" in result.stderr


@pytest.mark.django_db
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_requests_lines_carry_its_id(log_format: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RequestIdFilter())
    logging.getLogger("django.request").addHandler(handler)
    try:
        # Django logs "Not Found" after the middleware has returned: still the request's.
        given = Client().get("/no-such-page", HTTP_X_REQUEST_ID="proxy-id.42")
        made = Client().get("/no-such-page", HTTP_X_REQUEST_ID="not an id; forged\nline")
    finally:
        logging.getLogger("django.request").removeHandler(handler)

    assert given["X-Request-ID"] == "proxy-id.42"
    assert re.fullmatch(r"[0-9a-f]{32}", made["X-Request-ID"])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    if log_format == "json":
        records = json_lines(stream.getvalue())
        assert [r["request_id"] for r in records] == ["proxy-id.42", made["X-Request-ID"]]
        assert all(r["message"] == "Not Found: /no-such-page" for r in records)
    else:
        assert all(re.match(rf"{ISO_TIME} WARNING django.request: Not Found", x) for x in lines)
    # The id is gone once the request finished: later lines carry none.
    after = logging.makeLogRecord({})
    RequestIdFilter().filter(after)
    assert after.request_id is None


class Process:
    """A server process started with LOG_FORMAT=json, its output in a file, stopped by SIGTERM."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                args, cwd=ROOT, env={**env, "LOG_FORMAT": "json"}, start_new_session=True,
                stdout=out, stderr=out,
            )  # fmt: skip

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + 120  # a hang detector, not a speed threshold
        while text not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {text!r} in:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> str:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        return self.log.read_text(errors="replace")


def no_plain_log_lines(text: str) -> None:
    """No line in a text format: gunicorn's "[2026-...] [pid] [INFO]", Celery's "[2026-...:
    INFO/MainProcess]", or ours."""
    plain = re.compile(rf"^(\[\d{{4}}-\d\d-\d\d|{ISO_TIME} )")
    assert not [line for line in text.splitlines() if plain.match(line)]


@pytest.mark.slow  # gunicorn, a Celery worker and beat in subprocesses
def test_web_worker_and_beat_write_json_lines(
    tmp_path: Path, redis_url: str, empty_database: str
) -> None:
    db = settings.DATABASES["default"]
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="config.settings.dev",
        # A database with no tables: these processes only need to start and log.
        DATABASE_URL=f"postgresql://{db['USER']}@/{empty_database}?host={db['HOST']}&port={db['PORT']}",
        CELERY_BROKER_URL=redis_url,
        WEB_WORKERS="1",
    )
    port = free_port()
    web = Process(
        [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "--bind",
         f"127.0.0.1:{port}", "config.wsgi"],
        env, tmp_path / "web.log",
    )  # fmt: skip
    worker = Process(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo", "-l", "INFO",
         "--queues=logging-test", f"--hostname=logging-test-{port}@%h"],
        env, tmp_path / "worker.log",
    )  # fmt: skip
    beat = Process(
        [sys.executable, "-m", "celery", "-A", "config", "beat", "-l", "INFO",
         f"--schedule={tmp_path / 'beat-schedule'}"],
        env, tmp_path / "beat.log",
    )  # fmt: skip
    try:
        web.wait_for("Booting worker")
        deadline = time.monotonic() + 120
        while True:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/no-such-page", headers={"Host": "localhost"}
            )
            try:
                urllib.request.urlopen(request, timeout=30)
            except urllib.error.HTTPError:
                break  # answered (404)
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, web.log.read_text()[-3000:]
                time.sleep(0.3)
        web.wait_for("GET /no-such-page")
        worker.wait_for(" ready.")
        beat.wait_for("beat: Starting")
    finally:
        outputs = {"web": web.stop(), "worker": worker.stop(), "beat": beat.stop()}

    web_records = json_lines(outputs["web"])
    loggers = {r["logger"] for r in web_records}
    assert {"gunicorn.error", "gunicorn.access", "django.request"} <= loggers
    not_found = [r for r in web_records if r["logger"] == "django.request"]
    assert not_found[0]["request_id"]  # a request's line carries its id
    assert any(r["message"].endswith(" ready.") for r in json_lines(outputs["worker"]))
    assert any(r["message"].startswith("beat: Starting") for r in json_lines(outputs["beat"]))
    for text in outputs.values():
        no_plain_log_lines(text)
