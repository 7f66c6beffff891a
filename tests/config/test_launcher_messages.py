"""What ``./run`` prints: a bad PORT is one clear line, and every start-up line says which part
of the site it comes from ("[run]" for the launcher, "<part> | " for what it runs)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import psutil

from tests.config.test_run_command import RUN, free_port, processes_mentioning, run_env

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
    data_dir, log = tmp_path / "data", tmp_path / "run.log"
    with log.open("w") as out:
        launcher = subprocess.Popen(
            [str(RUN)], env=run_env(data_dir, free_port()), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "Site ready" not in log.read_text() and time.monotonic() < deadline:
            assert launcher.poll() is None, log.read_text()
            time.sleep(0.5)
        assert "Site ready" in log.read_text(), log.read_text()
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 0
    finally:
        if launcher.poll() is None:
            for process in psutil.Process(launcher.pid).children(recursive=True):
                process.kill()
            launcher.kill()
            launcher.wait()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert [line for line in lines if not PREFIXED.match(line)] == []
    assert not processes_mentioning(str(data_dir))
