"""A run of the tests fails when a test leaves a process running, and kills what it left: a
failed ./run test once left its redis-server and PostgreSQL running after pytest ended."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from django.conf import settings

pytestmark = pytest.mark.slow  # runs a pytest session in a subprocess

PROBE = """
import subprocess

def test_starts_a_daemon_and_forgets_it():
    # A new session, as the embedded servers use: killing the test's group would miss it.
    subprocess.Popen(["sleep", "600"], start_new_session=True)
"""


def test_a_run_that_leaves_a_process_fails_and_kills_it(tmp_path: Path, redis_url: str) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    # The same conftest, on this session's Redis (so it starts no second one on its socket).
    env = dict(os.environ, CELERY_BROKER_URL=redis_url)
    env.pop("IMAGESEARCH_TEST_RUN", None)
    root = Path(settings.BASE_DIR)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", str(probe),
         "--rootdir", str(root), "-c", str(root / "pyproject.toml")],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "1 passed" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    assert "still running at the end of the run" in result.stderr
    assert "sleep 600" in result.stderr
    sleepers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [])[:2] == ["sleep", "600"]
    ]
    assert not [p for p in sleepers if p.status() != psutil.STATUS_ZOMBIE]
