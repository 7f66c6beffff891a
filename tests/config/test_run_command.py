"""``./run`` for real: the whole site starts, answers, and SIGTERM leaves nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
from django.conf import settings

RUN = Path(settings.BASE_DIR) / "run"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(DATA_DIR=str(data_dir), PORT=str(port), WEB_WORKERS="1")
    return env


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        return response.status


def test_run_starts_the_site_and_sigterm_stops_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    log = (tmp_path / "run.log").open("w")
    launcher = subprocess.Popen(
        [str(RUN)], env=run_env(data_dir, port), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 180
        status = None
        while time.monotonic() < deadline and launcher.poll() is None:
            try:
                status = get(f"http://127.0.0.1:{port}/")
                break
            except OSError:
                time.sleep(0.5)
        assert status == 200, (tmp_path / "run.log").read_text()[-3000:]
        assert get(f"http://127.0.0.1:{port}/admin/login/") == 200

        tree = psutil.Process(launcher.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "gunicorn" in names and "celery" in names and "redis-server" in names
        postmaster_pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        started = [*tree, psutil.Process(postmaster_pid)]

        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(60) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
        log.close()

    gone, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, f"left running: {[p.pid for p in alive]}"
    assert not processes_mentioning(str(data_dir))
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


def test_run_refuses_a_taken_port_and_says_which(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [str(RUN)],
            env=run_env(tmp_path / "data", port),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert f"port {port}" in result.stdout and "taken" in result.stdout
    assert not processes_mentioning(str(tmp_path / "data"))
