"""A worker whose Redis disappears says so in one line per event, never with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from config.devserver import embedded

pytestmark = pytest.mark.slow  # starts a Celery worker in a subprocess


def wait_for_text(log: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text()
        if text in content:
            return content
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not seen; worker log:\n{log.read_text()[-4000:]}")


@pytest.mark.django_db
def test_a_lost_broker_is_one_line_each_without_a_traceback(tmp_path: Path) -> None:
    redis = embedded.redis_start(tmp_path)
    log = tmp_path / "worker.log"
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="config.settings.test",
        CELERY_BROKER_URL=embedded.socket_url(embedded.redis_socket(tmp_path)),
        OMP_NUM_THREADS="1",
    )
    # With mingle and gossip, as ./run starts it: gossip's restart is what printed the traceback.
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "--quiet", "worker", "--pool=solo",
             "--loglevel=INFO", "--hostname=lost@%h"],
            cwd=settings.BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_text(log, " ready.", 120)
        redis.terminate()
        redis.wait(10)
        seen = wait_for_text(log, "Trying again in 4.00 seconds", 60)
    finally:
        # Killed, not stopped: a warm shutdown without a broker is another story (kombu's own).
        worker.kill()
        worker.wait()
        if redis.poll() is None:
            redis.kill()
            redis.wait()
    assert "Traceback" not in seen
    assert "CPendingDeprecationWarning" not in seen
    lost = [line for line in seen.splitlines() if "Cannot connect to redis" in line]
    assert lost and all("Trying again in" in line for line in lost), lost
