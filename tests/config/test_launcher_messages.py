"""What ``./run`` prints: a bad PORT is one clear line, and every start-up line says which part
of the site it comes from ("[run]" for the launcher, "<part> | " for what it runs)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.run_site import RUN, RunningSite, processes_of, run_env

pytestmark = pytest.mark.slow  # starts the launcher and its servers in subprocesses

PREFIXED = re.compile(r"^(\[run\] |(setup|worker|beat|web)\s*\| )")


def test_a_port_that_is_not_a_number_is_one_line_and_a_failure(tmp_path: Path) -> None:
    for port in ["abc", "99999", "0", "８０"]:
        env = {**run_env(tmp_path / "data", 8000), "PORT": port}
        result = subprocess.run([str(RUN)], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, port
        assert "Traceback" not in result.stdout + result.stderr, port
        assert result.stdout.strip().splitlines() == [
            f"[run] error: PORT={port!r} is not a port number (1-65535), e.g. PORT=8000"
        ]
    assert not (tmp_path / "data").exists()


def test_every_start_up_line_names_its_part_and_sigterm_leaves_nothing(tmp_path: Path) -> None:
    with RunningSite(tmp_path) as site:
        assert site.stop() == 0
    lines = [line for line in site.log().splitlines() if line.strip()]
    assert [line for line in lines if not PREFIXED.match(line)] == []
    assert not processes_of(site.data_dir)
