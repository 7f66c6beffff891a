"""The markers select what they claim: ``-m browser`` takes the tests that drive Chromium or a
live server (marked by the fixtures they ask for), ``-m slow`` the ones marked slow in their
files, and a developer's ``-m "not browser and not slow"`` neither."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = pytest.mark.slow  # three pytest collections in subprocesses

ROOT = Path(settings.BASE_DIR)
CHROMIUM = "tests/gallery/test_token_copy.py::test_create_copy_and_reload"  # page + live_server
LIVE_SERVER = "tests/search/test_api_docs_offline.py::test_api_docs_load_every_asset_from_this_site"
SLOW = "tests/config/test_run_command.py::test_run_refuses_a_taken_port_and_says_which"
FAST = "tests/test_permission_matrix.py::test_every_route_is_in_the_matrix"
FILES = sorted({test.split("::")[0] for test in (CHROMIUM, LIVE_SERVER, SLOW, FAST)})


def collected(selection: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly",
         "-m", selection, *FILES],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def test_the_markers_select_what_they_claim() -> None:
    runs = {s: collected(s) for s in ("browser", "slow", "not browser and not slow")}
    found = {}
    for selection, run in runs.items():
        output, _ = run.communicate(timeout=120)
        assert run.returncode == 0, output
        # pytest-playwright runs a browser test once per browser: "...::test[chromium]".
        found[selection] = {line.split("[")[0] for line in output.splitlines() if "::" in line}
    expected = {
        "browser": {CHROMIUM, LIVE_SERVER},
        "slow": {SLOW},
        "not browser and not slow": {FAST},
    }
    for selection, tests in expected.items():
        # Every known test is in its own selection and in no other.
        assert tests <= found[selection], (selection, found[selection])
        for other in expected.keys() - {selection}:
            assert not tests & found[other], (other, found[other])
